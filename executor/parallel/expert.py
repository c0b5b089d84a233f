"""Expert parallelism for the MoE FFN (executor/moe.py), Megatron-Core style under parallel
folding (Liu et al. 2025, arXiv 2504.14960): the experts of a pipeline stage fold over its
tp x cp x dp ranks as etp x ep x edp (planner/expert_layout.py gives the groups; executor/mesh.py
builds them from it).

- Placement: ep rank r (its rank in the ep group) holds experts [r E/ep, (r+1) E/ep), names kept.
- Dispatch (Lepikhin et al. 2020, GShard; Megatron-Core's MoEAlltoAllTokenDispatcher): each rank
  sorts its (token, slot) pairs by expert, exchanges per-expert counts with one
  all_to_all_single, sends the rows with a second (uneven split sizes), runs its experts on what
  it received, and returns the outputs with the reverse all-to-all. `_AllToAll`'s backward is the
  reverse exchange, so gradients travel back the way the tokens came.
- Tokens under tensor parallelism: every tp rank holds the same tokens (the MoE input is made
  replicated, all-gathered first under sequence parallelism: executor/parallel/tensor.py). So that
  each token is routed once, as Megatron-Core's dispatcher does, each tp rank takes its 1/tp of the
  tokens (`split_tokens`: forward split, backward all-gather, Megatron's
  scatter_to_tensor_model_parallel_region) before dispatch and the tp group all-gathers the
  combined outputs after (`gather_tokens`: forward all-gather, backward split). The router and the
  shared experts run on all tokens (replicated and tensor-parallel respectively), so their
  gradients are the same on every tp rank.
- Gradients of expert weights: each token's contribution arrives once, from the rank that routed
  it, so an expert's gradient is the sum over the edp group (the ranks holding that expert)
  divided by dp*cp (the loss is the mean over dp x cp replicas): `reduce_expert_grads`, or, with
  ZeRO, FSDP2 over the edp mesh with that divide factor (executor/parallel/data.py).
- etp > 1: each expert's MLP is split over the etp group (`ExpertDispatcher`, `_shard_expert`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from executor.parallel.grad_norm import clip_grad_norm_, scale_grads_to
from planner.plan import Plan


def check_expert_plan(plan: Plan, num_experts: int, width: int) -> None:
    """Refuse what cannot be split: experts over ep, an expert's inner width over etp."""
    if num_experts % plan.ep:
        raise ValueError(f"num_experts {num_experts} is not divisible by ep={plan.ep}")
    if width % plan.etp:
        raise ValueError(f"moe.expert_ffn_hidden_size {width} is not divisible by "
                         f"etp={plan.etp}")


def token_chunk(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's 1/n of the rows of `t` (n = group size), no autograd bookkeeping."""
    n = dist.get_world_size(group)
    if t.shape[0] % n:
        raise ValueError(f"{t.shape[0]} tokens do not split over the {n} tensor-parallel ranks")
    rows = t.shape[0] // n
    return t.narrow(0, dist.get_rank(group) * rows, rows)


def _all_gather_rows(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    out = t.new_empty((t.shape[0] * dist.get_world_size(group),) + tuple(t.shape[1:]))
    dist.all_gather_into_tensor(out, t.contiguous(), group=group)
    return out


class _Split(torch.autograd.Function):
    """Forward: this rank's rows of a tensor replicated over `group`; backward: all-gather."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return token_chunk(t, group).clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_gather_rows(grad, ctx.group), None


class _Gather(torch.autograd.Function):
    """Forward: all-gather the rows of `group`; backward: this rank's rows (the gradient of a
    replicated tensor is the same on every rank)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _all_gather_rows(t, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return token_chunk(grad, ctx.group).contiguous(), None


def split_tokens(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """This tp rank's share of replicated tokens (backward: all-gather)."""
    return _Split.apply(t, group)


def gather_tokens(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Every tp rank's share back into the replicated whole (backward: split)."""
    return _Gather.apply(t, group)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits along dim 0; backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        out = grad.new_empty((sum(in_splits),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return out, None, None, None


class ExpertDispatcher:
    """Runs rows sorted by global expert id on the ranks that hold the experts: over the ep
    group (all-to-all), then, with etp > 1, over the etp group, whose ranks each hold 1/etp of
    every expert's MLP (Megatron-Core under parallel folding: the rows an etp group received are
    all-gathered, each rank computes its partial output, the partials are reduce-scattered)."""

    def __init__(self, num_experts: int, ep_group: dist.ProcessGroup | None,
                 etp_group: dist.ProcessGroup | None):
        self.ep_group, self.etp_group = ep_group, etp_group
        self.ep = dist.get_world_size(ep_group) if ep_group is not None else 1
        self.etp = dist.get_world_size(etp_group) if etp_group is not None else 1
        self.local = num_experts // self.ep

    def __call__(self, xs: torch.Tensor, counts: torch.Tensor, experts: nn.Module) -> torch.Tensor:
        """xs: rows sorted by expert, counts (E,) per expert; returns the outputs in xs's order."""
        ep, local, etp = self.ep, self.local, self.etp
        rows, per = xs, counts.view(1, -1)  # one source: this rank (ep = 1)
        if ep > 1:
            recv = torch.empty_like(counts)
            dist.all_to_all_single(recv, counts, group=self.ep_group)  # [s, j]: s's rows for j
            sent = counts.view(ep, local).sum(1).tolist()
            per = recv.view(ep, local)
            got = per.sum(1).tolist()
            rows = _AllToAll.apply(xs, got, sent, self.ep_group)  # source-major
        if etp > 1:  # all-gather-v: every etp rank's rows, as one all-to-all of copies
            mine = rows.shape[0]
            every = per.new_empty((etp * per.shape[0], local))  # sources: (etp rank, ep src)
            dist.all_gather_into_tensor(every, per.contiguous(), group=self.etp_group)
            theirs = every.view(etp, -1).sum(1).tolist()
            per = every
            rows = _AllToAll.apply(rows.repeat(etp, 1), theirs, [mine] * etp, self.etp_group)
        # Regroup source-major rows expert-major (expert j: from source 0, 1, ...), run, undo.
        n_src = per.shape[0]
        seg = torch.arange(local).repeat(n_src) * n_src + torch.arange(n_src).repeat_interleave(
            local)
        perm = torch.argsort(seg.repeat_interleave(per.reshape(-1).cpu()), stable=True)
        perm = perm.to(xs.device)
        out = experts(rows.index_select(0, perm), per.sum(0).tolist())
        back = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(),
                                                                     device=perm.device))
        out = out.index_select(0, back)
        if etp > 1:  # reduce-scatter-v: each rank's rows' partial outputs back to it, summed
            out = _AllToAll.apply(out, [mine] * etp, theirs, self.etp_group)
            out = out.view(etp, mine, -1).sum(0)
        if ep > 1:
            out = _AllToAll.apply(out, sent, got, self.ep_group)
        return out


def _shard_expert(expert: nn.Module, rank: int, size: int) -> None:
    """Keep this etp rank's 1/size of an expert's inner width: rows of w1 (and w3), columns of
    w2 (column- then row-parallel, Shoeybi et al. 2019; the partial outputs sum to the whole)."""
    for lin, dim in ((expert.w1, 0), (expert.w3, 0), (expert.w2, 1)):
        if lin is not None:
            w = lin.weight.detach()
            width = w.shape[dim] // size
            lin.weight = nn.Parameter(w.narrow(dim, rank * width, width).clone())


def apply_expert_parallel(layers: list[nn.Module], plan: Plan,
                          groups: dict[str, dist.ProcessGroup],
                          tp_group: dist.ProcessGroup | None,
                          cp_group: dist.ProcessGroup | None) -> None:
    """Keep this rank's experts (and, with etp > 1, its slice of each) in each MoE layer
    (executor/moe.py `MoE`) and give the layers their groups: the ep all-to-all, the etp split,
    the tp token split, the cp group of the balancing loss."""
    for layer in layers:
        check_expert_plan(plan, layer.num_experts, layer.experts["0"].w1.out_features)
        if plan.ep > 1:
            r, local = dist.get_rank(groups["ep"]), layer.num_experts // plan.ep
            keep = {str(i) for i in range(r * local, (r + 1) * local)}
            for name in list(layer.experts.keys()):
                if name not in keep:
                    del layer.experts[name]
        if plan.etp > 1:
            for expert in layer.experts.values():
                _shard_expert(expert, dist.get_rank(groups["etp"]), plan.etp)
        if plan.ep * plan.etp > 1:
            layer.dispatcher = ExpertDispatcher(layer.num_experts,
                                                groups["ep"] if plan.ep > 1 else None,
                                                groups["etp"] if plan.etp > 1 else None)
        layer.token_group = tp_group if plan.tp > 1 else None
        layer.seq_group = cp_group if plan.cp > 1 else None


def etp_shard_dims(layers: list[nn.Module]) -> dict[int, int]:
    """id of each etp-sliced expert weight -> the dimension it is sliced along."""
    out: dict[int, int] = {}
    for layer in layers:
        for expert in layer.experts.values():
            for lin, dim in ((expert.w1, 0), (expert.w3, 0), (expert.w2, 1)):
                if lin is not None:
                    out[id(lin.weight)] = dim
    return out


def expert_parameters(layers: list[nn.Module]) -> list[nn.Parameter]:
    """The routed experts' parameters of MoE `layers` (each once)."""
    seen, out = set(), []
    for layer in layers:
        for p in layer.experts.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def reduce_expert_grads(params: list[nn.Parameter], edp_group: dist.ProcessGroup,
                        replicas: int) -> None:
    """Sum expert gradients over the edp group, divide by the dp*cp replica count, in one
    flattened all-reduce (the hand-written, non-ZeRO path)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or (dist.get_world_size(edp_group) == 1 and replicas == 1):
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    if dist.get_world_size(edp_group) > 1:
        dist.all_reduce(flat, group=edp_group)
    flat.div_(replicas)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def clip_grad_norm_moe_(params: list[nn.Parameter], experts: list[nn.Parameter],
                        max_norm: float, pp_group: dist.ProcessGroup | None, skip: set[int],
                        groups: dict[str, dist.ProcessGroup], sharded: bool) -> float:
    """Global-norm clipping with routed experts: the dense part as clip_grad_norm_ counts it
    (experts left out), plus the experts' squared norm summed over their shards (edp, under
    ZeRO), the etp ranks (slices of each expert), the ep ranks (different experts) and the
    pipeline stages; one coefficient for all.
    `sharded`: expert gradients are FSDP shards over edp (the same on every rank)."""
    ids = {id(p) for p in experts}
    dense = clip_grad_norm_(params, math.inf, pp_group, skip | ids)  # norm only: coef = 1
    grads = [p.grad for p in experts if p.grad is not None]
    sq = torch.zeros((), device=grads[0].device if grads else None)
    for g in grads:
        sq = sq + (g._local_tensor if isinstance(g, DTensor) else g).float().pow(2).sum()
    for kind, needed in (("edp", sharded), ("etp", True), ("ep", True)):
        if needed and dist.get_world_size(groups[kind]) > 1:
            dist.all_reduce(sq, group=groups[kind])
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(sq, group=pp_group)
    return scale_grads_to(params, math.sqrt(dense ** 2 + float(sq)), max_norm)
