"""ZeRO through PyTorch FSDP2 (the executor's; torchtitan's): what it communicates per step.

Units: one per block, plus the root (embedding, final norm, head). Weights are gathered per unit
before its first forward of a schedule; stage 3 frees them after each forward and gathers again
for each micro-batch's backward; where the sync is deferred (torch.distributed.pipelining, the
executor, stack.fsdp_defer_grad_sync) gradients are reduce-scattered per unit once per pipeline
schedule (plan.pipeline_passes of them a step), after its last micro-batch, and a unit's weights
stay gathered from its backward to the schedule's end; otherwise every backward
reduce-scatters (torchtitan's accumulation without a pipeline; Megatron-FSDP at stages 2-3,
stack.sharded_grads_reduce_each_backward). Where the stack overlaps communication
with compute (stack.grad_overlap), each unit's gather hides behind the previous unit's compute
and the reduce-scatters behind the last backward; otherwise every call is exposed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from planner.cost.comms import Link
from planner.cost.compute import Shapes
from planner.cost.efficiency import overlapped
from planner.cost.params import (layer_params_per_rank, moe_layer_dense_params_per_rank,
                                 stage_params_per_rank)
from planner.cost.stage_blocks import stage_blocks
from planner.cost.widths import gathered_block_bytes, grad_bytes, weight_bytes
from planner.hardware import Cluster
from planner.moe import moe_layer_count
from planner.plan_arrays import PlanArrays
from planner.stack import Stack
from planner.transformer import TransformerSpec


def zero_reduce(P: PlanArrays, links: Mapping[str, Link], nbytes: np.ndarray) -> np.ndarray:
    """ZeRO's gradient reduction of an `nbytes` buffer: reduce-scatter in the shard group
    (zshard), then, with hybrid sharding, each rank's 1 / (dp_shard * cp) shard all-reduced
    with the ranks holding the same shard in the other replicas (PyTorch FSDP2 HSDP:
    reduce-scatter then all-reduce over the replicate mesh dimension; Megatron-Core's
    distributed-optimizer instances likewise; zrep has one rank without it)."""
    return (links["zshard"].reduce_scatter(nbytes)
            + links["zrep"].all_reduce(nbytes / (P.dp_shard * P.cp)))


def fsdp2_block_params(spec: TransformerSpec, sh: Shapes, layers: np.ndarray | float | None = None,
                       moe: np.ndarray | float | None = None) -> np.ndarray:
    """Parameters of one block's FSDP unit, averaged over `layers` blocks of which `moe` are MoE
    blocks (default: the whole model's): a dense block whole, an MoE block's dense part
    (attention, norms, router, shared experts; its routed experts are a unit of their own over
    edp, dp_sync.py)."""
    dense = layer_params_per_rank(spec, sh.tp)
    if spec.moe is None:
        return dense
    if layers is None:
        layers, moe = spec.num_layers, moe_layer_count(spec)
    return ((layers - moe) * dense + moe * moe_layer_dense_params_per_rank(spec, sh.tp)
            ) / np.maximum(layers, 1)


def fsdp2_unit_comms(spec: TransformerSpec, stack: Stack, P: PlanArrays, sh: Shapes,
                     links: Mapping[str, Link]) -> dict[str, np.ndarray]:
    """The first pipeline rank's units: its blocks, and each block's and the root's gather (of
    the weights) and gradient reduction (of the gradients at their reduced width: reduce-scatter
    in the shard group, and with hybrid sharding the shard's all-reduce across replicas). Reads
    the layout (tp, pp, dp, cp, dp_shard; the links), vpp and precision only."""
    sb = stage_blocks(spec, P)
    layers, moe = sb["first_layers"], sb["first_moe"]
    block = fsdp2_block_params(spec, sh, layers, moe)
    root = stage_params_per_rank(spec, sh.tp, layers, True, P.pp == 1, moe) - layers * block
    wb, gb = weight_bytes(P), grad_bytes(P, stack)
    shard = links["zshard"]
    return {"layers": layers, "ag_block": shard.all_gather(block * gathered_block_bytes(P, stack)),
            "rs_block": zero_reduce(P, links, block * gb), "ag_root": shard.all_gather(root * wb),
            "rs_root": zero_reduce(P, links, root * gb)}


def fsdp2_overlaps(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                   link: Link, block: Mapping[str, tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exposed seconds of a block's gather prefetched behind one block's forward, that forward's
    and that backward's seconds: the windows the unit's collectives hide behind; stacks that
    overlap). `link`: the ZeRO shard group's (zshard). `block`: the block's seconds by
    category, (forward, backward incl. recompute), as step_time._per_layer gives them with its
    exposed host time. The gather runs on its own stream and link through all of them: the
    compute and the recomputed forward, the exposed TP and CP collectives (other links) and
    the host gaps, so the whole block is its window (as DeepSpeed's, step_time._per_layer)."""
    ag_block = link.all_gather(fsdp2_block_params(spec, sh)
                               * gathered_block_bytes(P, cluster.stack))
    zero = np.zeros(len(P))
    win_f = sum((f for f, _ in block.values()), zero)
    win_b = sum((b for _, b in block.values()), zero)
    return overlapped(cluster.gpu, ag_block, win_f), win_f, win_b


def reduces_each_backward(stack: Stack, P: PlanArrays) -> np.ndarray:
    """Plans whose sharded gradients are reduce-scattered by every backward, whatever the
    stack's deferral (stack.sharded_grads_reduce_each_backward at zero_stage >= 2:
    Megatron-FSDP)."""
    return np.asarray(stack.sharded_grads_reduce_each_backward) & (P.zero >= 2)


def deferred_grad_sync(stack: Stack, P: PlanArrays) -> np.ndarray:
    """Plans whose FSDP2 reduce-scatter waits for the last micro-batch (stack.fsdp_defer_grad_sync;
    pipeline-parallel plans too, torch.distributed.pipelining defers it), unless the stack
    reduces sharded gradients every backward."""
    defer = np.asarray(stack.fsdp_defer_grad_sync) | (P.pp > 1)
    return defer & ~reduces_each_backward(stack, P)


def sync_points(stack: Stack, P: PlanArrays) -> np.ndarray:
    """Times per step FSDP2 reduce-scatters every unit's gradients: once per micro-batch, or
    deferred to the last backward of each pipeline schedule (plan.pipeline_passes of them:
    torch.distributed.pipelining's PipelineStage.backward_maybe_with_nosync syncs on each
    schedule's last backward, and reshards)."""
    return np.where(deferred_grad_sync(stack, P), P.passes, P.micro_batches)


def fsdp2_calls(stack: Stack, P: PlanArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward gathers, gathers, reduce-scatters) of one FSDP2 unit per step. Deferred: one
    forward gather per schedule (the weights stay gathered after the first backward), stage 3
    one more per backward, one reduce-scatter per schedule. Not deferred: each micro-batch
    gathers for its forward (and stage 3 again for its backward) and reduce-scatters after its
    backward."""
    syncs = sync_points(stack, P)
    # Megatron-FSDP's stage 2 (optim_grads) never shards the weights: gathered once a step,
    # after the update, however often the gradients are reduced.
    fwd = np.where(reduces_each_backward(stack, P) & (P.zero == 2), 1, syncs)
    return fwd, fwd + np.where(P.zero >= 3, P.micro_batches, 0), syncs


def fsdp2_exposed(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                  links: Mapping[str, Link] | None, window: np.ndarray,
                  unit: dict[str, np.ndarray] | None = None,
                  overlaps: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Seconds of FSDP2 communication per step not hidden behind compute (zero_stage >= 1).
    `unit`: fsdp2_unit_comms of these plans, if known (then `links` is not read); `overlaps`:
    fsdp2_overlaps of these plans (needed where the stack overlaps)."""
    u = fsdp2_unit_comms(spec, cluster.stack, P, sh, links) if unit is None else unit
    layers, ag_block, rs_block = u["layers"], u["ag_block"], u["rs_block"]
    ag_root, rs_root = u["ag_root"], u["rs_root"]
    m, z3 = P.micro_batches, P.zero >= 3
    defer = deferred_grad_sync(cluster.stack, P)
    fwd_gathers, gathers, scatters = fsdp2_calls(cluster.stack, P)
    ends = np.where(defer, P.passes, 1)  # backwards whose reduce-scatters end a schedule
    calls = (gathers + scatters) * (layers + 1)
    # Calibrated; 0 on GPU presets: per call, and per unit once a step (its sharded update).
    framework = (calls * cluster.stack.fsdp_unit_overhead_s
                 + (layers + 1) * cluster.stack.fsdp_unit_step_overhead_s)
    if not cluster.stack.grad_overlap:
        # The root (embedding, norm, head) is not resharded after forward: gathered once per
        # forward gather, as in the overlapped path below.
        return (gathers * layers * ag_block + fwd_gathers * ag_root
                + scatters * (layers * rs_block + rs_root) + framework)
    gpu = cluster.gpu
    assert overlaps is not None, "FSDP2 with overlap needs the blocks' overlaps (_block_terms)"
    ov_f, win_f, win_b = overlaps
    first = fwd_gathers * (ag_root + layers * ov_f)  # prefetched behind each forward
    # Every micro-batch's backward but the last: stage 3 gathers each block again, and without
    # deferral each block's reduce-scatter runs too; both on their streams behind the same
    # backward, so hidden together (one overlap, not two over the same compute). The root's
    # reduce-scatter then runs beside the next micro-batch's first block.
    behind_b = np.where(z3, ag_block, 0.0) + np.where(defer, 0.0, rs_block)
    root_rs = np.where(defer, 0.0, overlapped(gpu, rs_root, win_f))
    again = (m - ends) * (layers * overlapped(gpu, behind_b, win_b) + root_rs)
    # The last micro-batch's backward (of each schedule, when deferred): its reduce-scatters
    # (and stage 3's gathers).
    last = layers * rs_block + rs_root + np.where(z3, layers * ag_block, 0.0)
    tail = rs_block  # the last unit's reduce-scatter has nothing left to hide behind
    return first + again + ends * np.maximum(tail, overlapped(gpu, last, window)) + framework
