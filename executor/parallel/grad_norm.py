"""Global gradient-norm clipping over a mix of DTensor (tensor-parallel, FSDP) and plain
gradients, across pipeline stages. Written by hand: torch.nn.utils.clip_grad_norm_ fails on a
mix of DTensor meshes and plain tensors (DESIGN.md) and does not know about pipeline stages.
Same formula as torch's: coef = max_norm / (total_norm + 1e-6), capped at 1."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


# A norm over a 2-D (dp x tp) gradient takes two all-reduces; DTensor warns about it on every
# parameter. Correct and cheap at the sizes it happens, so keep the log readable.
logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float,
                    pp_group: dist.ProcessGroup | None, skip: set[int]) -> float:
    """Clip in place; returns the total norm. `skip`: ids of parameters that duplicate another
    stage's (tied head), counted once. Plain gradients must already be identical across the
    data-parallel group (they are, after DDP or the explicit all-reduce)."""
    sq = torch.zeros(())
    grads = [p.grad for p in params if p.grad is not None and id(p) not in skip]
    for g in grads:
        n = torch.linalg.vector_norm(g)
        if isinstance(n, DTensor):
            n = n.full_tensor()  # reduces over the gradient's mesh (shards counted once)
        sq = sq + n.float() ** 2
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(sq, group=pp_group)
    total = float(sq.sqrt())
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return total
