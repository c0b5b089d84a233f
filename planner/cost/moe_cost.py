"""The mixture-of-experts FFN of one block on one GPU, per micro-batch: the router, the token
dispatch and combine, the grouped expert GEMMs, the shared experts, and what they store for
backward. An MoE block is a dense block with its MLP replaced by this (planner/cost/step_time).

Layout (Megatron-Core parallel folding; planner/expert_layout.py): the T = b s / cp tokens of a
rank are split over tp, so each rank routes T_r = T / tp distinct tokens (Megatron-Core's MoE
layer takes the sequence-parallel shard; without sequence parallelism its dispatcher splits the
duplicated tokens over tp the same way). Each token goes to top_k experts; with balanced routing
every rank of an ep group receives T_r k tokens (its etp group gathers them: T_r k etp rows of
width f / etp), spread over its E / ep local experts. `imbalance` (spec moe.load_imbalance)
scales the most loaded rank's share, which is the critical path (Fedus et al. 2021, section
2.2: the slowest expert sets the step).

Dispatch and combine are all-to-alls over the ep group, forward and backward (Lepikhin et al.
2021, GShard, section 3.2); with etp > 1 the dispatched tokens are all-gathered over etp and the
outputs reduce-scattered back (Megatron-Core MoEAlltoAllTokenDispatcher). Grouped expert GEMMs
run at the efficiency of their per-expert row count (a few hundred rows reach much less of the
peak than a dense MLP's thousands: the GEMM curve of the GPU profile, one call per expert).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from planner.cost.comms import Link
from planner.cost.compute import Shapes, mlp_times
from planner.cost.efficiency import gemm_time, memory_time, overlapped, transfer_time
from planner.cost.shape_cache import by_shape
from planner.hardware import GPU, Cluster
from planner.plan_arrays import R_FULL, PlanArrays
from planner.stack import ExpertBiasBytes
from planner.transformer import TransformerSpec


@dataclass(frozen=True)
class MoETimes:
    """Seconds of one MoE FFN per micro-batch on one GPU."""

    fwd: np.ndarray       # compute: router, permutation, experts, shared experts
    bwd: np.ndarray
    ep_fwd: np.ndarray    # dispatch + combine (and etp gather / scatter), exposed
    ep_bwd: np.ndarray


def routed_rows(spec: TransformerSpec, sh: Shapes) -> np.ndarray:
    """Token-expert rows one rank's experts process per micro-batch (balanced): T_r k etp."""
    tokens = sh.mbs * spec.seq_len / sh.cp / sh.tp
    return tokens * spec.moe.top_k * sh.etp


def _expert_gemms(gpu: GPU, sh: Shapes, rows: np.ndarray, h: int, f: np.ndarray, mats: int,
                  experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) of `experts` grouped MLPs of `rows` rows each (input grad and weight
    grad backward, as the dense GEMMs)."""
    up = (mats - 1) * f  # gate + up fused (swiglu), or up alone
    fwd = (gemm_time(gpu, sh.peak, sh.fp8, rows, h, up, sh.gemm_bytes, experts)
           + gemm_time(gpu, sh.peak, sh.fp8, rows, f, h, sh.gemm_bytes, experts))
    bwd = (gemm_time(gpu, sh.peak, sh.fp8, rows, up, h, sh.gemm_bytes, experts)
           + gemm_time(gpu, sh.peak, sh.fp8, h, rows, up, sh.gemm_bytes, experts,
                       out_bytes=sh.wgrad_bytes)
           + gemm_time(gpu, sh.peak, sh.fp8, rows, h, f, sh.gemm_bytes, experts)
           + gemm_time(gpu, sh.peak, sh.fp8, f, rows, h, sh.gemm_bytes, experts,
                       out_bytes=sh.wgrad_bytes))
    cast = np.where(sh.fp8, sh.cast_bytes, 0.0)
    fwd = fwd + transfer_time(gpu, cast * experts * (rows * h + h * up + rows * f + f * h))
    bwd = bwd + transfer_time(gpu, cast * experts * rows * (up + h))
    return fwd, bwd


def blocks_hit(spec: TransformerSpec, blocks: np.ndarray) -> np.ndarray:
    """Expected number of the `blocks` equal groups of experts (ranks, or domains) a token's
    top_k experts fall in. Learned routing (k experts as if drawn without replacement): a
    block of B = E / blocks experts is missed with probability C(E - B, k) / C(E, k).
    Round-robin routing (k consecutive experts): a window of k over blocks of B touches
    1 + (k - 1) / B of them on average."""
    m = spec.moe
    E, k = float(m.num_experts), float(m.top_k)
    if m.routing == "round_robin":
        return np.minimum(blocks, 1.0 + (k - 1.0) * blocks / E)
    # Plans share a handful of group sizes: the log-binomials once per distinct size.
    sizes, inv = np.unique(np.asarray(blocks, dtype=float), return_inverse=True)

    def log_choose(a: float, b: float) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(max(a - b, 0) + 1)
    miss = np.array([math.exp(log_choose(E - E / d, k) - log_choose(E, k)) if E - E / d >= k
                     else 0.0 for d in sizes])
    return (sizes * (1.0 - miss))[inv.reshape(np.shape(blocks))]


def dedup_scales(spec: TransformerSpec, link: Link) -> tuple[np.ndarray, np.ndarray]:
    """(remote, local) bytes a deduplicating dispatcher (DeepEP) sends, over what an
    all-to-all of every top_k copy sends (k (D-1)/D copies leave the domain, k (r-1)/n stay
    in it for a group of n ranks, r per domain, D domains). DeepEP sends a token once to
    each remote domain holding any of its experts (then forwards it over NVLink) and once to
    each local rank holding any (DeepEP README, 'normal kernels': num_tokens_per_rank /
    is_token_in_rank layouts)."""
    n = link.n
    per = n if link.ranks_per_domain is None else np.minimum(link.ranks_per_domain, n)
    domains = np.maximum(1.0, np.ceil(n / np.maximum(per, 1.0)))
    k = float(spec.moe.top_k)
    remote = np.where(domains > 1, blocks_hit(spec, domains) * (domains - 1) / domains
                      / np.maximum(k * (domains - 1) / domains, 1e-30), 1.0)
    local = blocks_hit(spec, n) / k  # ranks hit over copies; the domain's share is alike
    return np.minimum(1.0, remote), np.minimum(1.0, local)


def _expert_bias(spec: TransformerSpec, gpu: GPU, rows: np.ndarray, up: np.ndarray,
                 bias: ExpertBiasBytes | None) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of adding the experts' biases in element-wise kernels of
    their own (stack.expert_bias_bytes; zero where the spec has none or the GEMM epilogue adds
    them). Each projection's add is counted as two kernels: the per-expert adds and the copy
    that joins their outputs."""
    if not spec.moe.expert_bias or bias is None:
        return np.zeros_like(rows), np.zeros_like(rows)
    h = spec.hidden_size
    fwd = (memory_time(gpu, rows * up * bias.up_fwd_bytes / 2, 2)
           + memory_time(gpu, rows * h * bias.down_fwd_bytes / 2, 2))
    bwd = (memory_time(gpu, rows * up * bias.up_bwd_bytes / 2, 2)
           + memory_time(gpu, rows * h * bias.down_bwd_bytes / 2, 2))
    return fwd, bwd


def moe_ffn_times(spec: TransformerSpec, gpu: GPU, sh: Shapes, links: dict[str, Link],
                  traffic: float = 1.0, dispatcher: str = "alltoall",
                  kernel_efficiency: float | None = None,
                  bias_bytes: ExpertBiasBytes | None = None) -> MoETimes:
    """The MoE FFN of one block (see module docstring)."""
    m, h = spec.moe, spec.hidden_size
    mats = 3 if spec.mlp == "swiglu" else 2
    e = sh.act_bytes
    imb = m.load_imbalance
    tokens = sh.mbs * spec.seq_len / sh.cp
    t_r = tokens / sh.tp
    local = m.num_experts / sh.ep
    rows = routed_rows(spec, sh) * imb
    f_e = m.expert_ffn_hidden_size / sh.etp
    exp_f, exp_b = _expert_gemms(gpu, sh, rows / local, h, f_e, mats, local)
    bias_f, bias_b = _expert_bias(spec, gpu, rows, (mats - 1) * f_e, bias_bytes)
    exp_f, exp_b = exp_f + bias_f, exp_b + bias_b
    # Activation of the routed experts: swiglu reads gate and up, writes the product.
    act = rows * f_e * e * traffic
    act_f = memory_time(gpu, act * (3 if mats == 3 else 2))
    act_b = memory_time(gpu, act * (5 if mats == 3 else 3))
    # Router: an h x E GEMM on T_r tokens, softmax / sigmoid and top-k over E in fp32.
    r_f = gemm_time(gpu, sh.attn_peak, False, t_r, h, m.num_experts, e)
    r_b = 2 * gemm_time(gpu, sh.attn_peak, False, t_r, m.num_experts, h, e)
    score = memory_time(gpu, t_r * m.num_experts * 4.0 * 3)
    # Permute before dispatch and unpermute + weighted combine after: each row read and
    # written once per pass (forward), and again for the gradients (backward).
    perm = memory_time(gpu, rows * h * e * 2 * traffic, 2)
    fwd, bwd = exp_f + act_f + r_f + score + perm, exp_b + act_b + r_b + score + perm
    if m.num_shared_experts:
        fs = m.num_shared_experts * m.shared_width / sh.tp
        sh_f, sh_b = _expert_gemms(gpu, sh, tokens, h, fs, mats, 1.0)
        s_act = tokens * fs * e * traffic
        fwd = fwd + sh_f + memory_time(gpu, s_act * 3)
        bwd = bwd + sh_b + memory_time(gpu, s_act * 5)
    # Dispatch and combine: each rank sends T_r k rows of h (the busiest rank imb times that);
    # the counts exchange first (one small all-to-all).
    msg = t_r * m.top_k * h * e * imb
    remote, local = dedup_scales(spec, links["ep"]) if dispatcher == "deepep" else (1.0, 1.0)
    a2a = (2 * links["ep"].all_to_all(msg, remote, local, kernel_efficiency)
           + links["ep"].all_to_all(4.0 * links["ep"].n, kernel_efficiency=kernel_efficiency))
    etp = links["etp"].all_gather(msg * sh.etp) + links["etp"].reduce_scatter(msg * sh.etp)
    return MoETimes(fwd=fwd, bwd=bwd, ep_fwd=a2a + etp, ep_bwd=a2a + etp)


def moe_activation_bytes(spec: TransformerSpec, sh: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """(stored, transient) bytes of one MoE FFN per micro-batch beyond the block input: router
    scores (fp32), the permuted expert inputs, the experts' gate / up / product, the expert
    outputs kept for the combine's weight gradient, the shared experts' like a dense MLP; and
    the all-to-all send and receive buffers alive during dispatch. Stored bytes take the
    balanced share: which rank is the most loaded changes from block to block, so over a
    stage's blocks a rank holds the mean (load_imbalance sets the critical path of time, and
    the transient buffers of the one block dispatching)."""
    m, h, e = spec.moe, spec.hidden_size, sh.act_bytes
    tokens = sh.mbs * spec.seq_len / sh.cp
    rows = routed_rows(spec, sh)
    mats = 3 if spec.mlp == "swiglu" else 2
    f_e = m.expert_ffn_hidden_size / sh.etp
    stored = (tokens / sh.tp * m.num_experts * 4.0 * 2 + rows * h * e * 2
              + mats * rows * f_e * e)
    if m.num_shared_experts:
        stored = stored + mats * tokens * m.num_shared_experts * m.shared_width / sh.tp * e
    transient = 2.0 * rows * m.load_imbalance * h * e
    return stored, transient


def per_moe_layer(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                  links: dict[str, Link], dense: dict[str, tuple[np.ndarray, np.ndarray]]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An MoE block: the dense block with its MLP replaced by the MoE FFN
    (planner/cost/moe_cost.py); full recompute runs the FFN's forward and its dispatch again."""
    traffic = cluster.stack.elementwise_traffic
    mf, mb, _ = by_shape(lambda s: mlp_times(spec, cluster.gpu, s, traffic), sh)
    mo = moe_ffn_times(spec, cluster.gpu, sh, links, traffic, cluster.stack.ep_dispatcher,
                       cluster.stack.ep_link_efficiency, cluster.stack.expert_bias_bytes)
    full = P.recompute == R_FULL
    cf, cb = dense["compute"]
    fwd = cf - mf + mo.fwd
    bwd = cb - mb - np.where(full, mf, 0.0) + mo.bwd + np.where(full, mo.fwd, 0.0)
    ep_b = mo.ep_bwd + np.where(full, mo.ep_fwd, 0.0)
    if cluster.stack.ep_comm_overlap:
        # Dispatch / combine of one micro-batch hidden behind another's compute (Megatron-Core
        # overlap_moe_expert_parallel_comm; DeepSeek-V3 DualPipe, arXiv 2412.19437 section
        # 3.2.1): only what the block's compute cannot cover is exposed.
        ep_f, ep_b = overlapped(cluster.gpu, mo.ep_fwd, fwd), overlapped(cluster.gpu, ep_b, bwd)
    else:
        ep_f = mo.ep_fwd
    return {**dense, "compute": (fwd, bwd), "ep": (ep_f, ep_b)}
