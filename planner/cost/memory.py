"""Bytes per GPU: weights, gradients, optimizer state (ZeRO), activations per schedule, buffers.

Model state per parameter follows the ZeRO paper (Rajbhandari et al. 2020, section 3.1): mixed
precision keeps 2-byte weights, 2-byte gradients and 12 bytes of Adam state (fp32 master, m, v);
fp32 training keeps 4 + 4 + 8. Stacks that accumulate and reduce bf16 gradients in fp32
(Megatron-LM, torchtitan: stack.grad_reduce_fp32) keep 4-byte gradients. PyTorch-native
stacks hold the resident parameter as the master instead (stack.optimizer_state: fp32
parameters, 4 + 4 + 8; or a bf16 model under torch.optim, 2 + 2 + 4). ZeRO stage 1 shards
the optimizer state over the data-parallel ranks (dp x cp), stage 2 also the gradients, stage 3
also the weights.

Activations per block per micro-batch (planner/cost/block_activations.py) follow Korthikanti
et al. 2022 (section 4, eqs. 1-5): s b h (34 + 5 a s / h) bytes for a GPT block in 16-bit, of
which s b h (10 + ...) stays whole on every tensor-parallel rank unless sequence parallelism
splits it; full recompute keeps only the block input (2 s b h).
"""

from __future__ import annotations

import numpy as np

from planner.cost.block_activations import layer_activation_bytes, op_policy_kept
from planner.cost.compute import Shapes
from planner.cost.eager_activations import (eager_block_bytes, eager_first_bytes,
                                            eager_last_bytes)
from planner.cost.fp8_memory import (fp8_mlp_input_savings, fp8_saved_input_savings,
                                     fp8_weight_cache_bytes)
from planner.cost.moe_cost import moe_activation_bytes
from planner.cost.params import (moe_layer_expert_params_per_rank,
                                 padded_vocab, stage_expert_params_per_rank,
                                 stage_params_per_rank)
from planner.cost.widths import gathered_block_bytes, grad_bytes, state_bytes, weight_bytes
from planner.cost.zero import deferred_grad_sync, fsdp2_block_params
from planner.hardware import Cluster
from planner.plan_arrays import R_FULL, R_SELECTIVE, S_GPIPE, S_INTERLEAVED, PlanArrays
from planner.stages import (heaviest_middle, interleaved_peak_bytes, rank_layers,
                            rank_moe_layers)
from planner.transformer import TransformerSpec


def zero3_gather_unit(spec: TransformerSpec, cluster: Cluster, sh: Shapes) -> np.ndarray:
    """Parameters gathered at once per rank under ZeRO-3: a whole block's unit (FSDP2; an MoE
    block's dense part, its experts being their own unit) or the largest weight matrix
    (DeepSpeed's per-tensor gathers)."""
    if cluster.stack.zero_impl == "fsdp2":
        return fsdp2_block_params(spec, sh)
    h, f = spec.hidden_size, spec.ffn_hidden_size
    largest = max(h * (h + 2 * spec.kv_dim), h * f * (2 if spec.mlp == "swiglu" else 1))
    return largest / sh.tp


def _in_flight(P: PlanArrays, stage: np.ndarray) -> np.ndarray:
    """Micro-batches' worth of the stage's blocks held at the schedule's peak (GPipe, 1F1B; the
    interleaved schedule is walked chunk by chunk instead: planner.stages.interleaved_peak_bytes,
    for an even split Megatron-LM's warm-up 2(pp - s - 1) + (v - 1) pp chunks, plus one, each
    1/v of the stage; Narayanan et al. 2021, section 2.2.1)."""
    m = P.pass_micro_batches  # one pipeline schedule's: passes run one after another
    return np.where(P.schedule == S_GPIPE, m, np.minimum(m, P.pp - stage))


def _saved(spec: TransformerSpec, P: PlanArrays, stage: np.ndarray, layers: np.ndarray,
           block: np.ndarray, first: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Bytes saved at the peak from `block` bytes per block, `first` per in-flight forward of
    the first chunk (0 off the first stage) and `head` per micro-batch past the loss (0 off the
    last stage): GPipe holds every micro-batch's head, 1F1B one; interleaved plans walked."""
    n_act = _in_flight(P, stage)
    heads = np.where(P.schedule == S_GPIPE, P.pass_micro_batches, 1)
    saved = n_act * (layers * block + first) + heads * head
    inter = P.schedule == S_INTERLEAVED
    if inter.any():
        def at(a):
            return np.broadcast_to(np.asarray(a, dtype=float), inter.shape)[inter]
        saved = np.array(np.broadcast_to(saved, inter.shape), dtype=float)
        saved[inter] = interleaved_peak_bytes(
            spec.num_layers, P.pp[inter], P.vpp[inter],
            np.broadcast_to(stage, inter.shape)[inter], P.pass_micro_batches[inter], at(block),
            at(first), at(head))
    return saved


def model_state_bytes(P: PlanArrays, params: np.ndarray, impl: str,
                      shard_over: np.ndarray | None = None,
                      widths: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                      ) -> dict[str, np.ndarray]:
    """Weights, gradients and optimizer bytes at rest for `params` parameters on one rank,
    ZeRO-sharded over `shard_over` ranks (default the ZeRO shard group, dp_shard x cp: dp x cp
    without hybrid sharding; edp for routed experts). `widths`: (weight, gradient, optimizer)
    bytes per parameter (widths.state_bytes; default the ZeRO paper's: gradients at the
    weights' width, 12 bytes of fp32 master and moments, 8 for fp32 plans)."""
    if widths is None:
        w = weight_bytes(P)
        widths = (w, w, np.where(P.precision == 3, 8, 12))
    w, g, o = widths
    dpc = P.dp_shard * P.cp if shard_over is None else shard_over
    if impl == "fsdp2":  # every ZeRO stage keeps all three sharded between steps
        shard = np.where(P.zero >= 1, dpc, 1)
        return {"weights_bytes": params * w / shard, "gradients_bytes": params * g / shard,
                "optimizer_bytes": params * o / shard}
    return {"weights_bytes": params * w / np.where(P.zero >= 3, dpc, 1),
            "gradients_bytes": params * g / np.where(P.zero >= 2, dpc, 1),
            "optimizer_bytes": params * o / np.where(P.zero >= 1, dpc, 1)}


def zero_buffers(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                 params: np.ndarray, blocks: np.ndarray | None = None) -> np.ndarray:
    """Unsharded copies ZeRO holds during the step, beyond the sharded state at rest. `blocks`:
    the part of `params` in the stage's blocks (default all of it)."""
    wb, gb = weight_bytes(P), grad_bytes(P, cluster.stack)
    unit = zero3_gather_unit(spec, cluster, sh)
    active = (P.zero >= 1) & (P.dp_shard * P.cp > 1)
    if cluster.stack.zero_impl == "fsdp2":
        # Gradients accumulate unsharded until the last micro-batch where the reduce-scatter is
        # deferred (pipelining, the executor); otherwise, or with one micro-batch, one block's
        # at a time. Deferred, the weights also stay gathered after each backward
        # (set_reshard_after_backward(False)).
        kept = _accumulates_unsharded(cluster, P)
        grads = np.where(kept, params, unit) * gb
        blocks = params if blocks is None else blocks
        # Gathered blocks at their gathered width (fp8 with an fp8 all-gather), the rest 16-bit.
        whole = blocks * gathered_block_bytes(P, cluster.stack) + (params - blocks) * wb
        # Stage 3: two units in flight (one prefetched), or the whole stage while deferred;
        # stage 1-2: all kept gathered.
        z3 = np.where(kept, whole, 2 * unit * gathered_block_bytes(P, cluster.stack))
        weights = np.where(P.zero >= 3, z3, whole)
        return np.where(active, weights + grads, 0.0)
    return np.where(active & (P.zero >= 3), 2 * unit * wb, 0.0)


def _accumulates_unsharded(cluster: Cluster, P: PlanArrays) -> np.ndarray:
    """FSDP2 keeps the stage's unsharded gradients between micro-batches (zero.deferred_grad_sync
    with more than one micro-batch, or a pipeline)."""
    return ((P.micro_batches > 1) | (P.pp > 1)) & deferred_grad_sync(cluster.stack, P)


def block_terms(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                flash: bool) -> dict[str, np.ndarray]:
    """The pieces of `stage_activations` no pipeline stage changes (per block or micro-batch),
    so a caller charging several stages computes them once."""
    e, tokens = sh.act_bytes, sh.mbs * spec.seq_len / sh.cp
    t = {"e": e,
         "logits": tokens * padded_vocab(spec, sh.tp) / sh.tp,
         "moe_delta": _moe_delta(spec, cluster, sh, P)}
    if cluster.stack.activation_layout == "eager":
        t["stored"], t["full"] = eager_block_bytes(spec, sh, P.recompute)
        t["first"], t["last"] = eager_first_bytes(spec, sh), eager_last_bytes(spec, sh)
    else:
        stored, full = layer_activation_bytes(spec, sh, P.recompute, flash,
                                              cluster.stack.selective_recompute)
        fp8 = fp8_saved_input_savings(spec, sh, cluster.stack, P)
        t["stored"], t["full"] = stored - fp8, full - fp8
        t["th"] = tokens * spec.hidden_size / np.where(sh.sp, sh.tp, 1)
    if spec.moe is not None:
        t["moe_transient"] = moe_activation_bytes(spec, sh)[1]
    return t


def stage_activations(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                      flash: bool, stage: np.ndarray, layers: np.ndarray, first, last,
                      moe_layers: np.ndarray | float = 0.0,
                      terms: dict[str, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(saved, transient): bytes saved for backward at the schedule's peak, and the largest
    short-lived working set on top of them: one block rebuilt by recompute in backward, or the
    logits before the loss turns them into the (saved) log-softmax. `terms`: block_terms."""
    t = block_terms(spec, cluster, P, sh, flash) if terms is None else terms
    e, logits, stored, full = t["e"], t["logits"], t["stored"], t["full"]
    # The MoE blocks' extra, spread over the stage's blocks (chunks hold them alike).
    block = stored + moe_layers * t["moe_delta"] / np.maximum(layers, 1)
    if cluster.stack.activation_layout == "eager":
        f_bytes = np.where(first, t["first"], 0.0)
        h_bytes = np.where(last, t["last"], 0.0)
    else:
        th = t["th"]
        f_bytes = np.where(np.asarray(first) & spec.is_gpt_family, th, 0.0)  # mask
        # the loss's saved softmax (fp32 in Megatron-LM's vocab-parallel loss:
        # stack.loss_softmax_bytes) and the final norm's input
        h_bytes = np.where(last, logits * cluster.stack.loss_softmax_bytes + th * e, 0.0)
    saved = _saved(spec, P, stage, layers, block, f_bytes, h_bytes)
    transient = np.maximum(full - stored, np.where(last, logits * e, 0.0))
    if spec.moe is not None:  # all-to-all send / receive buffers of the block in flight
        transient = np.maximum(transient, np.where(moe_layers > 0, t["moe_transient"], 0.0))
    return saved, transient


def _moe_delta(spec: TransformerSpec, cluster: Cluster, sh: Shapes,
               P: PlanArrays) -> np.ndarray:
    """What an MoE block saves beyond a dense block: its FFN's activations
    (planner/cost/moe_cost.py) in place of what the dense block keeps of its MLP (under
    torchtitan's op-level selective policy, the up-projection's and the down-projection's
    outputs; with fp8-saved inputs, the down-projection's input at 1 byte); nothing under full
    recompute."""
    if spec.moe is None:
        return np.zeros(len(P))
    tokens = sh.mbs * spec.seq_len / sh.cp
    e, f = sh.act_bytes, spec.ffn_hidden_size
    mlp = (3 if spec.mlp == "swiglu" else 2) * e * tokens * f / sh.tp
    if cluster.stack.selective_recompute == "ops_half_matmuls":
        mlp = np.where(P.recompute == R_SELECTIVE, e * tokens * op_policy_kept(spec, sh)[1], mlp)
    mlp = mlp - fp8_mlp_input_savings(spec, sh, cluster.stack, P)
    return np.where(P.recompute == R_FULL, 0.0, moe_activation_bytes(spec, sh)[0] - mlp)


def stage_state(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                layers: np.ndarray, k: np.ndarray, first, last
                ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(weights, gradients and optimizer bytes, buffers, the routed experts' share of the
    first) of a rank holding `layers` blocks of which `k` MoE: what stage_memory adds to the
    activations. Reads no schedule, recompute or sequence-parallel field."""
    params = stage_params_per_rank(spec, sh.tp, layers, first, last, k)
    rest = state_bytes(P, cluster.stack)
    state = model_state_bytes(P, params, cluster.stack.zero_impl, widths=rest)
    experts = stage_expert_params_per_rank(spec, sh.ep, sh.etp, k)
    estate = model_state_bytes(P, experts, cluster.stack.zero_impl, P.edp, widths=rest)
    state = {key: v + estate[key] for key, v in state.items()}
    e, tokens = sh.act_bytes, sh.mbs * spec.seq_len / sh.cp
    blocks = stage_params_per_rank(spec, sh.tp, layers, False, False, k)
    bufs = (zero_buffers(spec, cluster, P, sh, params, blocks)
            + np.where((P.dp * P.cp > 1) & (P.zero == 0), 2.0 * cluster.stack.grad_bucket_bytes,
                       0.0)
            + np.where(P.pp > 1, 2 * e * tokens * spec.hidden_size / sh.tp, 0.0)  # p2p buffers
            + fp8_weight_cache_bytes(spec, sh, cluster.stack, P, layers, k))
    if spec.moe is not None:
        bufs = bufs + _expert_zero_buffers(spec, cluster, P, sh, experts)
    return state, bufs, estate


def stage_memory(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                 flash: bool, stage: np.ndarray, first, last) -> dict[str, np.ndarray]:
    """Bytes by component on one rank of pipeline stage `stage` (holding the embedding if
    `first`, the head if `last`), plus `peak_bytes`."""
    layers = rank_layers(spec.num_layers, P.pp, P.vpp, stage)
    k = rank_moe_layers(spec, P.pp, P.vpp, stage)
    state, bufs, estate = stage_state(spec, cluster, P, sh, layers, k, first, last)
    act, transient = stage_activations(spec, cluster, P, sh, flash, stage, layers, first, last,
                                       k)
    comp = {**state, "activations_bytes": act, "transient_bytes": transient, "buffers_bytes": bufs,
            "framework_bytes": np.full(len(P), float(cluster.stack.framework_memory_bytes))}
    comp["peak_bytes"] = sum(comp.values())
    if spec.moe is not None:  # the routed experts' share of the totals above, shown apart
        comp.update({f"experts.{key}": v for key, v in estate.items()})
        per = k * np.where(P.recompute == R_FULL, 0.0, moe_activation_bytes(spec, sh)[0])
        comp["experts.activations_bytes"] = _saved(spec, P, stage, layers,
                                                   per / np.maximum(layers, 1), 0.0, 0.0)
    return comp


def _expert_zero_buffers(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                         experts: np.ndarray) -> np.ndarray:
    """FSDP2's unsharded expert copies during the step (as zero_buffers for the dense part):
    one MoE block's experts gathered at a time under stage 3 (two in flight with prefetch),
    all of them kept gathered under stages 1-2, and the unsharded gradients of the step."""
    if cluster.stack.zero_impl != "fsdp2":
        return np.zeros(len(P))
    wb, gb = weight_bytes(P), grad_bytes(P, cluster.stack)
    unit = moe_layer_expert_params_per_rank(spec, sh.ep, sh.etp)
    active = (P.zero >= 1) & (P.edp > 1)
    grads = np.where(_accumulates_unsharded(cluster, P), experts, unit) * gb
    weights = np.where(P.zero >= 3, 2 * unit, experts) * wb
    return np.where(active, weights + grads, 0.0)


def memory_by_stage(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                    flash: bool) -> dict[str, dict[str, np.ndarray]]:
    """First, heaviest middle (planner.stages.heaviest_middle) and last pipeline rank. With
    pp = 1 all three are the one rank; with pp <= 2 there is no middle rank and `middle` repeats
    the first."""
    one = P.pp == 1
    zeros = np.zeros(len(P))
    first = stage_memory(spec, cluster, P, sh, flash, zeros, True, one)
    mid = heaviest_middle(P.pp)
    has_mid = mid > 0
    middle = stage_memory(spec, cluster, P, sh, flash, np.where(has_mid, mid, 0), False, False)
    middle = {k: np.where(has_mid, v, first[k]) for k, v in middle.items()}
    return {"first": first, "middle": middle,
            "last": stage_memory(spec, cluster, P, sh, flash, P.pp - 1, one, True)}


def memory_breakdown(spec: TransformerSpec, cluster: Cluster, P: PlanArrays,
                     sh: Shapes, flash: bool) -> dict[str, np.ndarray]:
    """Per-GPU bytes by component on the most loaded pipeline rank (first, any middle one, or
    last), plus `peak_bytes`: what `fits` and the search compare with the GPU's memory."""
    stages = memory_by_stage(spec, cluster, P, sh, flash)
    first, middle, last = stages["first"], stages["middle"], stages["last"]
    peaks = np.stack([first["peak_bytes"], middle["peak_bytes"], last["peak_bytes"]])
    pick = np.argmax(peaks, axis=0)
    return {k: np.choose(pick, [first[k], middle[k], last[k]]) for k in first}
