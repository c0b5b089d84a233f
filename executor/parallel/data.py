"""Data parallelism and ZeRO, mapped onto what torch offers (README: "ZeRO stages"):

- zero_stage 0, no tp/pp/cp: DistributedDataParallel.
- zero_stage 0 with tp, pp or cp: an explicit all-reduce of every gradient over dp x cp after
  backward. DDP cannot wrap DTensor (tensor-parallel) modules, and on pipeline stages it is only
  right for 1F1B (probed on torch 2.13 / gloo, DESIGN.md), so this is written by hand.
- zero_stage 1 and 2: FSDP2 fully_shard with reshard_after_forward=False: weights stay gathered
  from forward to backward, gradients are reduce-scattered, optimizer state is sharded. FSDP2 has
  no optimizer-only sharding, so ZeRO-1 runs as ZeRO-2.
- grad_sync parameter_server: executor/parallel/ps.py (servers on ranks 0..S-1 hold the shards
  and the optimizer state; workers push gradients and pull weights).
- zero_stage 3: FSDP2 fully_shard with reshard_after_forward=True (weights re-gathered for
  backward).
- Routed experts (executor/parallel/expert.py) reduce over the edp group, not dp x cp: with ZeRO
  each layer's experts are their own FSDP2 unit over the edp mesh (divide factor dp*cp); without,
  expert parallelism (ep > 1) uses the explicit all-reduce path, since DDP would average the
  experts over dp, where ranks hold different ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from executor.transformer import Transformer
from planner.plan import Plan


def mode(plan: Plan) -> str:
    """'none', 'ddp', 'allreduce', 'fsdp' or 'ps' (parameter server)."""
    if plan.grad_sync == "parameter_server":
        return "ps"
    if plan.dp * plan.cp == 1:
        return "none"
    if plan.zero_stage >= 1:
        return "fsdp"
    plain = plan.tp == 1 and plan.pp == 1 and plan.cp == 1 and plan.ep * plan.etp == 1
    return "ddp" if plain else "allreduce"


def apply_fsdp(parts: list[Transformer], dp_cp_mesh: DeviceMesh, plan: Plan,
               edp_mesh: DeviceMesh | None = None) -> None:
    """fully_shard every block, then each part (embedding, norm, head stay in the root unit).
    `dp_cp_mesh`: the dp x cp mesh, or the 2-D (dp_rep, dp_shard x cp) mesh of hybrid sharding
    (fully_shard replicates over its first dimension and shards over the second: HSDP).
    `edp_mesh` (MoE models): each layer's routed experts first, as a unit over that mesh whose
    gradients are divided by dp*cp (executor/parallel/expert.py says why)."""
    reshard = plan.zero_stage >= 3
    for part in parts:
        for block in part.layers.values():
            if edp_mesh is not None and hasattr(block.mlp, "experts"):
                fully_shard(block.mlp.experts, mesh=edp_mesh, reshard_after_forward=reshard)
                block.mlp.experts.set_gradient_divide_factor(float(plan.dp * plan.cp))
            fully_shard(block, mesh=dp_cp_mesh, reshard_after_forward=reshard)
        fully_shard(part, mesh=dp_cp_mesh, reshard_after_forward=reshard)


def wrap_ddp(model: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    return DistributedDataParallel(model, process_group=group)


def all_reduce_grads(params: list[nn.Parameter], group: dist.ProcessGroup) -> None:
    """Average gradients over `group` (the hand-written zero_stage 0 path): one all-reduce of
    all gradients flattened into a single buffer, as DDP's buckets do."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat.div_(dist.get_world_size(group))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_grads(pairs: list[tuple[nn.Parameter, dist.ProcessGroup]]) -> None:
    """Sum the gradient of each parameter over its group (tied embedding and head on the first
    and last pipeline stages: each stage holds its own copy of the shared matrix)."""
    for p, group in pairs:
        if p.grad is not None:
            g = p.grad._local_tensor if isinstance(p.grad, DTensor) else p.grad
            dist.all_reduce(g, group=group)


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds."""
    return t._local_tensor if isinstance(t, DTensor) else t
