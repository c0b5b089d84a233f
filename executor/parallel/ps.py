"""Parameter server over torch.distributed with colocated servers (Plan.grad_sync
"parameter_server", Li et al. 2014): data-parallel ranks 0..S-1 of the dp group are also the
servers. The model's parameters, flattened in order, are cut into S contiguous shards; server s
holds the fp32 shard s and the AdamW state for it, nothing else. Each step, after backward:

1. push: every worker reduces each gradient shard to the shard's server (dist.reduce, SUM), and
   the server divides by the number of workers (the mean DDP takes);
2. clip: the servers' squared shard norms are summed over the group (one scalar all-reduce), so
   the global norm and clip coefficient are torch's clip_grad_norm_ exactly;
3. update: each server runs AdamW on its shard (AdamW is elementwise, so one flat tensor gives
   the same update as the per-parameter optimizer);
4. pull: each server broadcasts its updated shard, and every worker copies it into its weights.

Only colocated servers, zero_stage 0 and tp = pp = cp = 1 (planner/validity.py says why);
dedicated server nodes are a cost-model option only."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from planner.plan import Plan


def check_plan(plan: Plan) -> None:
    """Refuse what the executor does not run, in one line."""
    if plan.ps_placement == "dedicated":
        raise ValueError("the executor runs grad_sync parameter_server only with ps_placement "
                         "colocated (dedicated servers would need ranks beyond dp*tp*pp*cp)")
    if plan.precision == "fp16":
        raise ValueError("grad_sync parameter_server does not support fp16 loss scaling")


class ParameterServerOptimizer:
    """Stands in for the optimizer: `step` does push, clip, server-side AdamW and pull."""

    def __init__(self, params: list[nn.Parameter], group: dist.ProcessGroup, servers: int,
                 max_grad_norm: float, make_adam) -> None:
        self.params = list(params)
        self.group = group
        self.ranks = dist.get_process_group_ranks(group)
        self.workers = len(self.ranks)
        self.me = self.ranks.index(dist.get_rank())
        self.servers = min(servers, self.workers)
        self.max_grad_norm = max_grad_norm
        total = sum(p.numel() for p in self.params)
        edges = torch.linspace(0, total, self.servers + 1).round().long().tolist()
        self.bounds = list(zip(edges[:-1], edges[1:]))
        self.shard: nn.Parameter | None = None
        self.adam: torch.optim.Optimizer | None = None
        if self.me < self.servers:  # this rank is server `self.me`
            lo, hi = self.bounds[self.me]
            self.shard = nn.Parameter(self._flat_weights()[lo:hi].detach().float().clone())
            self.adam = make_adam([self.shard])

    @property
    def state(self) -> dict:
        """The server shard's AdamW state (empty on pure workers): what optimizer_bytes counts."""
        return self.adam.state if self.adam is not None else {}

    @property
    def param_groups(self) -> list[dict]:
        return self.adam.param_groups if self.adam is not None else []

    def state_dict(self) -> dict:
        return self.adam.state_dict() if self.adam is not None else {}

    def load_state_dict(self, sd: dict) -> None:
        if self.adam is not None:
            self.adam.load_state_dict(sd)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _flat_weights(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _flat_grads(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          .float() for p in self.params])

    def step(self) -> None:
        grads = self._flat_grads()
        for s, (lo, hi) in enumerate(self.bounds):  # 1. push
            dist.reduce(grads[lo:hi], dst=self.ranks[s], op=dist.ReduceOp.SUM, group=self.group)
        sq = torch.zeros((), dtype=torch.float32)
        mine = None
        if self.shard is not None:
            lo, hi = self.bounds[self.me]
            mine = grads[lo:hi] / self.workers
            sq = mine.pow(2).sum()
        if self.max_grad_norm > 0:  # 2. clip, as clip_grad_norm_ (executor/parallel/grad_norm.py)
            dist.all_reduce(sq, group=self.group)
            coef = min(1.0, self.max_grad_norm / (float(sq.sqrt()) + 1e-6))
            if mine is not None and coef < 1.0:
                mine = mine * coef
        if self.shard is not None:  # 3. update on the server
            self.shard.grad = mine
            self.adam.step()
        flat = torch.empty_like(grads)
        for s, (lo, hi) in enumerate(self.bounds):  # 4. pull
            if s == self.me:
                flat[lo:hi].copy_(self.shard.detach())
            dist.broadcast(flat[lo:hi], src=self.ranks[s], group=self.group)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
