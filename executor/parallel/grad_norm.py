"""Global gradient-norm clipping over a mix of DTensor (tensor-parallel, FSDP) and plain
gradients, across pipeline stages. Written by hand: torch.nn.utils.clip_grad_norm_ fails on a
mix of DTensor meshes and plain tensors (DESIGN.md) and does not know about pipeline stages.
Same formula as torch's: coef = max_norm / (total_norm + 1e-6), capped at 1."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float,
                    pp_group: dist.ProcessGroup | None, skip: set[int]) -> float:
    """Clip in place; returns the total norm. `skip`: ids of parameters that duplicate another
    stage's (tied head), counted once. Plain gradients must already be identical across the
    data-parallel group (they are, after DDP or the explicit all-reduce).

    Squared norms are summed locally per (mesh, placements) and reduced once per sharded mesh
    dimension: a few collectives per step, not one per parameter."""
    grads = [p.grad for p in params if p.grad is not None]
    plain = torch.zeros((), device=grads[0].device if grads else None)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        g = p.grad
        if g is None or id(p) in skip:
            continue
        if isinstance(g, DTensor):
            groups.setdefault((g.device_mesh, tuple(g.placements)), []).append(g._local_tensor)
        else:
            plain = plain + g.float().pow(2).sum()
    sq = plain
    for (mesh, placements), locals_ in groups.items():
        part = torch.stack([t.float().pow(2).sum() for t in locals_]).sum()
        for dim, placement in enumerate(placements):
            if placement.is_shard():  # shards on this mesh dimension add up
                dist.all_reduce(part, group=mesh.get_group(dim))
        sq = sq + part
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(sq, group=pp_group)
    return scale_grads_to(params, float(sq.sqrt()), max_norm)


def scale_grads_to(params: list[nn.Parameter], total: float, max_norm: float) -> float:
    """Scale every gradient by min(1, max_norm / (total + 1e-6)), torch's clip coefficient;
    returns `total`."""
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return total
