"""DeepSpeed ZeRO-3's weight gathers, module by module (the `deepspeed` stack's zero_impl).

DeepSpeed's stage-3 coordinator of 2021 (deepspeedai/DeepSpeed v0.3.13, 2021-03-16,
deepspeed/runtime/zero/stage3.py, PartitionedParameterCoordinator) gathers a module's weights in
its pre-forward (pre-backward) hook, `fetch_sub_module`, and then waits for every gather in
flight and for the device (`_synchronize_communication`: comm_stream.synchronize() and
torch.cuda.synchronize()). The host runs ahead of the GPU, so it reaches module i+1's hook
right after launching module i's kernels: module i+1's gather runs beside module i's compute and
nothing more, and the next module starts when both are done. A block of modules 0..k-1 thus takes

    sum_i pair(gather_{i+1}, compute_i),   pair(c, t) = t + overlapped(c, t)

(overlapped: efficiency.py, the collective's slowdown of the compute it runs beside), not one
overlap of the block's gathers with its whole compute: a big gather behind a small GEMM (the
MLP's up-projection behind the attention output projection) stays exposed even when the block's
compute would cover all its gathers.

After the recomputed forward of full recompute, a module's weights stay gathered for its
backward when the parameters the trace uses in between (the later modules' recomputed forward
and backward) number fewer than `stack.zero3_max_reuse_distance_params` (`_keep_for_later`,
stage3_max_reuse_distance): the block's last module always, others by size. Gradients are
reduce-scattered on a reduction stream, one bucket behind (reduce_ipg_grads), so each module's
reduce-scatter shares the link with the next gather, and the device-wide synchronise waits for it.

Modules are Megatron's (the model code the DeepSpeed runs used, Megatron-DeepSpeed): one fused
QKV linear and the output projection (MLA: each of its matrices), the MLP's first (gate and up
fused) and second linear. Norms and biases are not gathered: DeepSpeed keeps parameters under
stage3_param_persistence_threshold (1e5 elements) whole on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from planner.cost.efficiency import overlapped
from planner.hardware import GPU, Stack
from planner.moe import MLAAttention, attention_matrices
from planner.transformer import TransformerSpec


def module_params(spec: TransformerSpec, tp: np.ndarray) -> list[np.ndarray]:
    """Parameters per tp rank of each weight-holding module of a dense block, in forward order."""
    tp = np.asarray(tp, dtype=float)
    mats = attention_matrices(spec)

    def per_rank(i: int, o: int, cut: bool) -> np.ndarray:
        return i * o / np.where(cut, tp, 1.0)
    if isinstance(spec.attention, MLAAttention):
        attn = [per_rank(*m) for m in mats]
    else:  # Megatron's fused query_key_value, then the output projection
        attn = [sum(per_rank(*m) for m in mats[:3]), per_rank(*mats[3])]
    h, f = spec.hidden_size, spec.ffn_hidden_size
    up = 2 * f if spec.mlp == "swiglu" else f
    return attn + [h * up / tp, f * h / tp]


def _segments(window: np.ndarray, core: np.ndarray, shares: list[np.ndarray],
              at: int) -> list[np.ndarray]:
    """Split a block's compute `window` over its modules: the attention core (`core`, no
    weights) with module `at`, the rest by parameter share (a linear's FLOPs per token are its
    parameters)."""
    rest = np.maximum(window - core, 0.0)
    return [rest * s + (core if i == at else 0.0) for i, s in enumerate(shares)]


def _chain(gpu: GPU, computes: list[np.ndarray], comms: list[np.ndarray]) -> np.ndarray:
    """Time of a cyclic chain: compute k beside comms k (what is issued once it is launched)."""
    return sum(c + overlapped(gpu, m, c) for c, m in zip(computes, comms))


def zero3_block_times(gpu: GPU, stack: Stack, params: list[np.ndarray], n_attention: int,
                      gather: Callable[[np.ndarray], np.ndarray],
                      scatter: Callable[[np.ndarray], np.ndarray], fwd: np.ndarray,
                      attn_fwd: np.ndarray, bwd: np.ndarray, attn_bwd: np.ndarray,
                      full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds the block's gathers and reduce-scatters add to its compute.
    `params`: module_params, of which the first `n_attention` are the attention block's (the
    last its output projection); `gather` / `scatter`: seconds of one module's all-gather and
    reduce-scatter from its parameter count (one collective per module: DeepSpeed gathers and
    reduce-scatters parameter by parameter); `fwd` / `bwd`: the block's forward and backward
    windows (the backward's without the recomputed forward, which `full` plans run again as
    `fwd`)."""
    total = sum(params)
    shares = [p / total for p in params]
    g = [gather(p) for p in params]
    r = [scatter(p) for p in params]
    k = len(params)
    # The attention core runs between the last query / key / value linear and the output
    # projection (Megatron's ParallelAttention, between query_key_value and dense): forward
    # after the former's compute, backward after the projection's, before the former's hook.
    proj = n_attention - 1
    f_seg = _segments(fwd, attn_fwd, shares, proj - 1)
    b_seg = _segments(bwd, attn_bwd, shares, proj)
    # Forward: module i's compute beside module i+1's gather (the last beside the next block's
    # first).
    t_f = _chain(gpu, f_seg, [g[(i + 1) % k] for i in range(k)])
    # Backward without recompute: every weight was released after the forward; module j's
    # backward runs beside module j-1's gather and module j+1's reduce-scatter.
    rev = list(range(k - 1, -1, -1))
    t_plain = _chain(gpu, [b_seg[j] for j in rev],
                     [g[(j - 1) % k] + r[(j + 1) % k] for j in rev])
    # Full recompute: forward modules 0..k-1 again, then the backward k-1..0; a module's weights
    # kept from its recomputed forward to its backward need no second gather.
    limit = stack.zero3_max_reuse_distance_params
    kept = [np.zeros_like(total, dtype=bool) if limit is None
            else 2 * sum(params[i + 1:], np.zeros_like(total)) < limit for i in range(k)]
    computes = f_seg + [b_seg[j] for j in rev]
    needs = g + [np.where(kept[j], 0.0, g[j]) for j in rev]
    scatters = [np.zeros_like(total)] * k + [r[j] for j in rev]
    n = len(computes)
    comms = [needs[(i + 1) % n] + scatters[(i - 1) % n] for i in range(n)]
    t_full = _chain(gpu, computes, comms)
    dp_f = t_f - fwd
    dp_b = np.where(full, t_full - fwd - bwd, t_plain - bwd)
    return np.maximum(dp_f, 0.0), np.maximum(dp_b, 0.0)
