"""The step's data-parallel part: gradient reduction and ZeRO's parameter gathers (what is not
hidden behind the backward), and the optimizer epilogue.

Split in two for the search: `sync_terms` is everything that reads only the layout, virtual
stages, ZeRO stage, precision and gradient-sync fields (the collectives' times, the optimizer),
computed once per distinct combination of them (planner/cost/shape_cache.py on_groups);
`dp_exposed` hides them behind each plan's own backward and forward windows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from planner.cost.comms import Link
from planner.cost.compute import Shapes
from planner.cost.efficiency import memory_time, overlapped
from planner.cost.grad_sync import grad_all_reduce
from planner.cost.params import (stage_expert_params_per_rank, stage_params_per_rank,
                                 stage_tensor_count)
from planner.cost.stage_blocks import stage_blocks
from planner.cost.widths import grad_bytes, optimizer_traffic_bytes, weight_bytes
from planner.cost.zero import fsdp2_calls, fsdp2_exposed, fsdp2_unit_comms, zero_reduce
from planner.hardware import Cluster
from planner.plan_arrays import G_PS, PlanArrays
from planner.stages import heaviest_middle
from planner.transformer import TransformerSpec

# What sync_terms reads ("layout": tp, cp, pp, dp, order, ep, etp).
SYNC_FIELDS = ("layout", "vpp", "zero", "precision", "grad_sync", "ps_servers", "ps_placement")


def stage_params(spec: TransformerSpec, P: PlanArrays,
                 sh: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """Parameters of the most loaded pipeline rank (first, heaviest middle or last): (the
    dense part, tp-split and replicated over dp x cp; the routed experts, split over ep x etp
    and replicated over edp: zeros for a dense spec)."""
    one, blocks = P.pp == 1, stage_blocks(spec, P)
    flags = {"first": (True, one), "last": (one, True), "mid": (False, False)}
    dense, experts = [], []
    for r, (first, last) in flags.items():
        n, k = blocks[f"{r}_layers"], blocks[f"{r}_moe"]
        dense.append(stage_params_per_rank(spec, sh.tp, n, first, last, k))
        experts.append(stage_expert_params_per_rank(spec, sh.ep, sh.etp, k))
    has_mid = heaviest_middle(P.pp) > 0
    return tuple(np.maximum(np.maximum(a, b), np.where(has_mid, c, 0.0))
                 for a, b, c in (dense, experts))


def optimizer(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
              links: Mapping[str, Link], stage: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The step's epilogue. Adam, memory-bound: the bytes widths.optimizer_traffic_bytes gives
    per parameter (the updated weight and both moments read and written, the gradient read
    twice, a 16-bit copy written beside an fp32 master; by stack.optimizer_state); plus a fixed
    cost per parameter tensor, and the small collectives every step
    makes: the global gradient norm (over tp, dp x cp when sharded, and pp) and the loss
    reported as the global-batch mean (over pp and dp x cp). `stage`: stage_params."""
    # A parameter server's shard owner runs Adam on 1/S of the model (planner/cost/grad_sync.py).
    shards = np.where(P.zero >= 1, P.dp_shard * P.cp, np.where(P.grad_sync == G_PS,
                                                                np.maximum(P.ps_servers, 1), 1))
    params, expert_params = stage
    params = params / shards
    if spec.moe is not None:  # expert state shards over edp under ZeRO (distributed optimizer)
        params = params + expert_params / np.where(P.zero >= 1, P.edp, 1)
    per_param = optimizer_traffic_bytes(P, cluster.stack)
    tensors = stage_tensor_count(spec, stage_blocks(spec, P)["first_layers"], True, P.pp == 1)
    scalar = 4.0
    # The gradient norm of sharded state sums over the shard group (the replicas hold the same
    # shards after their all-reduce).
    sharded = (P.zero >= 1) & (P.dp_shard * P.cp > 1)
    small = (links["tp"].all_reduce(scalar) + np.where(sharded, links["zshard"].all_reduce(
        scalar), 0.0) + 2 * links["pp"].all_reduce(scalar) + links["dpcp"].all_reduce(scalar))
    return (memory_time(cluster.gpu, params * per_param)
            + tensors * cluster.stack.optimizer_tensor_overhead_s + small)


def sync_terms(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
               links: Mapping[str, Link]) -> dict[str, np.ndarray]:
    """The collectives of the gradient sync and ZeRO gathers, and the optimizer's seconds: what
    dp_exposed and the step read that no micro-batch, schedule or recompute field changes."""
    params, expert_params = stage = stage_params(spec, P, sh)
    link, sw = links["dpcp"], cluster.stack
    gb, wb = grad_bytes(P, sw), weight_bytes(P)
    g = params * gb
    out = {"optimizer": optimizer(spec, cluster, P, sh, links, stage)}
    reduce = np.where(P.zero == 0, grad_all_reduce(cluster, P, link, g), zero_reduce(P, links, g))
    gather = links["zshard"].all_gather(params * wb)  # ZeRO's group: dp x cp, or its hybrid part
    if spec.moe is not None:
        # Routed experts' gradients are reduced over edp, the ranks holding the same experts
        # (Megatron-Core's expert data-parallel group), in the same backward window.
        ge, we = expert_params * gb, expert_params * wb
        edp = links["edp"]
        reduce = reduce + np.where(P.zero == 0, edp.all_reduce(ge), edp.reduce_scatter(ge))
        gather = gather + edp.all_gather(we)
        if sw.zero_impl == "fsdp2":
            out["edp_gather"], out["edp_scatter"] = edp.all_gather(we), edp.reduce_scatter(ge)
    out["reduce"], out["gather"] = reduce, gather
    out["tail"] = reduce * np.minimum(1.0, sw.grad_bucket_bytes / g)  # the last bucket
    # Megatron overlap_param_gather: the updated shards are gathered bucket by bucket behind
    # the next step's forward; the first bucket is exposed (Megatron-Core
    # DistributedDataParallelConfig.overlap_param_gather; NeMo communication_overlap docs).
    out["gather_first"] = gather * np.minimum(1.0, sw.grad_bucket_bytes / (params * wb))
    if sw.zero_impl == "fsdp2":
        out.update({f"unit.{k}": v for k, v in fsdp2_unit_comms(spec, sw, P, sh, links).items()})
    return out


def dp_exposed(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
               window: np.ndarray, fwd_window: np.ndarray, sync: dict[str, np.ndarray],
               overlaps: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Gradient reduction (and ZeRO-1/2 parameter all-gather) not hidden behind backward;
    `sync`: sync_terms; `overlaps`: zero.fsdp2_overlaps (needed by FSDP2 stacks that
    overlap)."""
    sw = cluster.stack
    if sw.zero_impl == "fsdp2":
        unit = {k[5:]: v for k, v in sync.items() if k.startswith("unit.")}
        fsdp = fsdp2_exposed(spec, cluster, P, sh, None, window, unit, overlaps)
    else:
        fsdp = np.zeros(len(P))
    reduce = sync["reduce"]
    if sw.grad_overlap:
        exposed = np.maximum(sync["tail"], overlapped(cluster.gpu, reduce, window))
    else:
        exposed = reduce
    # Stage 2 reduces every micro-batch, otherwise once a step: Megatron-LM and DeepSpeed run
    # one pipeline schedule per step, and this executor all-reduces its zero_stage 0 gradients
    # after the last pipeline pass (executor/train.py). FSDP2's sync per pass is
    # zero.fsdp2_exposed's.
    exposed = np.where(P.zero == 2, P.micro_batches * exposed, exposed)
    gather = sync["gather"]
    if sw.param_gather_overlap:
        gather = np.maximum(sync["gather_first"], overlapped(cluster.gpu, gather, fwd_window))
    gather = np.where((P.zero == 1) | (P.zero == 2), gather, 0.0)
    deepspeed = np.where(P.zero < 3, exposed + gather, 0.0)
    ddp = exposed + sw.dp_step_overhead_s
    if spec.moe is not None and sw.zero_impl == "fsdp2":
        # FSDP2 shards expert weights over edp (torchtitan / AutoModel: the expert mesh's
        # dp_shard_mod_ep): gathered before the forward (and each backward at stage 3) and
        # reduce-scattered, as often as the dense units (zero.fsdp2_exposed), behind the
        # stage's compute where the stack overlaps.
        _, gathers, scatters = fsdp2_calls(sw, P)
        comm = gathers * sync["edp_gather"] + scatters * sync["edp_scatter"]
        hidden = (P.micro_batches * (window + fwd_window) if sw.grad_overlap
                  else np.zeros(len(P)))
        fsdp = fsdp + overlapped(cluster.gpu, comm, hidden)
    out = np.where(P.zero == 0, ddp, np.where(sw.zero_impl == "fsdp2", fsdp, deepspeed))
    return np.where((P.dp * P.cp > 1) | (P.edp > 1), out, 0.0)
