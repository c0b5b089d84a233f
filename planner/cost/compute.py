"""Compute time of one transformer block (and of the embedding / LM head) for one micro-batch on
one GPU: GEMMs at size-dependent efficiency, the attention core (fused or not), and the
memory-bound element-wise kernels, each timed separately (Calculon-style per-operator model,
Isaev et al., SC'23).

Shapes per GPU: tp splits heads and the MLP width, cp splits the sequence (tokens per rank
T = b s / cp), sequence parallelism splits the element-wise work of norms and residuals by tp.
Backward GEMMs are two GEMMs (input grad, weight grad) of the forward's FLOPs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from planner.cost.efficiency import gemm_time, memory_time, transfer_time
from planner.cost.params import padded_vocab
from planner.hardware import GPU
from planner.moe import MLAAttention, attention_matrices, mean_attended, qk_width, v_width
from planner.transformer import TransformerSpec

if TYPE_CHECKING:
    from planner.plan_arrays import PlanArrays
    from planner.stack import Stack


@dataclass(frozen=True)
class Shapes:
    """Per-plan arrays the compute model needs."""

    tp: np.ndarray
    cp: np.ndarray
    mbs: np.ndarray
    sp: np.ndarray
    peak: np.ndarray       # FLOP/s of the plan's precision
    attn_peak: np.ndarray  # FLOP/s for attention (bf16/fp16 path even in fp8 plans)
    fp8: np.ndarray
    act_bytes: np.ndarray  # bytes per activation element (2, or 4 for fp32)
    gemm_bytes: np.ndarray  # bytes per GEMM input element (1 for fp8)
    cast_bytes: np.ndarray | float = 0.0  # HBM bytes per operand element cast to fp8 (0: none)
    attn_eff: float | None = None  # the stack's attention kernel on this GPU (None: profile's)
    ep: np.ndarray | float = 1.0   # expert parallel (MoE blocks, planner/cost/moe_cost.py)
    etp: np.ndarray | float = 1.0  # expert tensor parallel
    stack: "Stack | None" = dataclasses.field(default=None, repr=False, compare=False)
    """The stack these shapes run under, for its whole-call byte counts (wgrad accumulation,
    the passes around the attention kernel); None: none of them."""

    plans: "PlanArrays | None" = dataclasses.field(default=None, repr=False, compare=False)
    """The PlanArrays these shapes are of (None: unknown): its groups give `distinct`
    without sorting the float columns."""

    @property
    def wgrad_bytes(self) -> float | None:
        """Bytes per weight-gradient element a weight-gradient GEMM moves where it accumulates
        into the gradient buffer (stack.wgrad_accumulates_in_gemm: the buffer read and written
        at its width, fp32 where gradients are reduced in fp32); None: written once."""
        if self.stack is None or not self.stack.wgrad_accumulates_in_gemm:
            return None
        return 2.0 * (4.0 if self.stack.grad_reduce_fp32 else 2.0)

    @cached_property
    def distinct(self) -> "tuple[Shapes, np.ndarray] | None":
        """(the distinct plans' Shapes, each plan's row in it), found once per Shapes: block,
        head and embedding times are computed on those (planner/cost/shape_cache.py). None
        where sharing saves little (more than half the rows distinct) or the codes overflow."""
        n = len(np.asarray(self.tp))
        if self.plans is not None:
            # Every per-plan field is a function of these plan fields (planner/cost/step_time
            # shapes; sequence parallelism of sp and tp).
            rep, inverse = self.plans.groups("tp", "cp", "mbs", "sp", "precision", "ep", "etp")
            if len(rep) > n // 2:
                return None
            return dataclasses.replace(self, plans=None, **{
                f: np.broadcast_to(np.asarray(getattr(self, f)), (n,))[rep]
                for f in PER_PLAN_FIELDS}), inverse
        # One integer code per plan from each field's own codes (1-D uniques are fast sorts).
        code = np.zeros(n, dtype=np.int64)
        cols, span = [], 1
        for f in PER_PLAN_FIELDS:
            col = np.broadcast_to(np.asarray(getattr(self, f), dtype=float), (n,))
            values, idx = np.unique(col, return_inverse=True)
            span *= len(values)
            if span > 2**62:  # the codes would overflow: no sharing to be had anyway
                return None
            code = code * len(values) + idx.reshape(-1)
            cols.append(col)
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        if len(first) > n // 2:
            return None
        small = dataclasses.replace(self, **{
            f: (cols[i][first] > 0.5 if f in ("sp", "fp8") else cols[i][first])
            for i, f in enumerate(PER_PLAN_FIELDS)})
        return small, inverse.reshape(-1)


# The per-plan fields of Shapes (cast_bytes, attn_eff and stack are one value for the whole
# call).
PER_PLAN_FIELDS = ("tp", "cp", "mbs", "sp", "peak", "attn_peak", "fp8", "act_bytes", "gemm_bytes",
                   "ep", "etp")


@dataclass(frozen=True)
class LayerTimes:
    """Seconds per block per micro-batch on one GPU."""

    fwd: np.ndarray
    bwd: np.ndarray
    attn_fwd: np.ndarray   # attention core only (what selective recompute redoes)
    attn_bwd: np.ndarray
    gemm_fwd: np.ndarray   # the four linear layers' forward (fp8 casts included)


def _gemms(gpu: GPU, sh: Shapes, m, k, n) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) time of one linear layer: y = x W with x (m x k), W (k x n)."""
    fwd = gemm_time(gpu, sh.peak, sh.fp8, m, k, n, sh.gemm_bytes)
    bwd = (gemm_time(gpu, sh.peak, sh.fp8, m, n, k, sh.gemm_bytes)      # input grad
           + gemm_time(gpu, sh.peak, sh.fp8, k, m, n, sh.gemm_bytes,      # weight grad
                       out_bytes=sh.wgrad_bytes))
    # fp8 plans quantize the operands first (amax, scale, cast: stack.fp8_cast_bytes_per_element
    # per element): activation and weight forward, the output gradient backward (Transformer
    # Engine keeps the forward casts' transposes for the backward GEMMs; Micikevicius et al.
    # 2022, 'FP8 formats for deep learning', section 4).
    cast = np.where(sh.fp8, sh.cast_bytes, 0.0)
    return (fwd + transfer_time(gpu, cast * (m * k + k * n)),
            bwd + transfer_time(gpu, cast * m * n))


def _attention(spec: TransformerSpec, gpu: GPU, sh: Shapes, flash: bool,
               tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attention core (scores, softmax, weighted sum) forward and backward."""
    s, d = spec.seq_len, spec.d_head
    heads = spec.num_attention_heads / sh.tp
    if flash:
        # FlashAttention skips the masked upper triangle (half the score FLOPs) and its backward
        # runs 5 matmuls to the forward's 2 (Dao 2023, FlashAttention-2, section 3.1.2).
        # Sliding-window layers run only their band (planner/moe.py mean_attended).
        done = (0.5 * 2.0 * tokens * s * (qk_width(spec) + v_width(spec)) * heads
                * mean_attended(spec))
        eff = gpu.attention_efficiency if sh.attn_eff is None else sh.attn_eff
        fwd = done / (sh.attn_peak * eff * gpu.sustained_clock_fraction
                      ) + gpu.kernel_overhead_s
        extra_f, extra_b = _attention_wrapper(spec, gpu, sh, tokens)
        return fwd + extra_f, 2.5 * fwd + extra_b
    # Unfused (Megatron-LM 2021): batched GEMMs for Q K^T and P V over b*heads, and the s x s
    # scores through HBM for scale+mask+softmax (+ dropout for the GPT family: 2+2 bytes r/w, 1
    # byte mask).
    batch = sh.mbs * heads
    q = s / sh.cp
    qk = gemm_time(gpu, sh.attn_peak, False, q, d, s, sh.act_bytes, batch)
    pv = gemm_time(gpu, sh.attn_peak, False, q, s, d, sh.act_bytes, batch)
    elems = batch * q * s
    drop = 1.0 if spec.is_gpt_family else 0.0
    soft_f = memory_time(gpu, elems * 2 * sh.act_bytes) + drop * memory_time(
        gpu, elems * (2 * sh.act_bytes + 1))
    soft_b = memory_time(gpu, elems * 3 * sh.act_bytes) + drop * memory_time(
        gpu, elems * (2 * sh.act_bytes + 1))
    return qk + pv + soft_f, 2 * (qk + pv) + soft_b


def _attention_wrapper(spec: TransformerSpec, gpu: GPU, sh: Shapes,
                       tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Work around a fused attention kernel: layout copies of q, k, v and the output (four
    kernels each way) and sinks applied to the output outside the kernel (a multiply and a
    cast forward; their gradients backward), as the stack does them."""
    st = sh.stack
    if st is None:
        return 0.0, 0.0

    def passes(elems, nbytes: float, kernels: int):
        """`kernels` element-wise kernels moving `nbytes` per element in all (none if 0)."""
        return memory_time(gpu, elems * nbytes / kernels, kernels) if nbytes else 0.0

    io = tokens * (2 * spec.q_dim + 2 * spec.kv_dim) / sh.tp
    fwd = bwd = passes(io, st.attention_layout_copy_bytes, 4)
    if isinstance(spec.attention, MLAAttention):
        # MLA: queries and keys assembled from their no-rope and rotary parts (one read, one
        # write), and the rotary query part rotated outside a fused kernel where the stack does.
        mla, heads = spec.attention, tokens * spec.num_attention_heads / sh.tp
        qk = heads * 2 * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        rope = heads * mla.qk_rope_head_dim
        fwd = fwd + passes(qk, st.mla_assembly_bytes, 2) + passes(rope, st.mla_rope_fwd_bytes, 3)
        bwd = bwd + passes(qk, st.mla_assembly_bytes, 2) + passes(rope, st.mla_rope_bwd_bytes, 3)
    if getattr(spec.attention, "sinks", False):
        out = tokens * spec.q_dim / sh.tp
        fwd = fwd + passes(out, st.attention_sink_fwd_bytes, 2)
        bwd = bwd + passes(out, st.attention_sink_bwd_bytes, 4)
    return fwd, bwd


def _elementwise(spec: TransformerSpec, gpu: GPU, sh: Shapes, tokens: np.ndarray,
                 traffic: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Norms, residual adds (+ bias-dropout for GPT), and the MLP activation."""
    e = sh.act_bytes * traffic
    th = tokens * spec.hidden_size / np.where(sh.sp, sh.tp, 1)
    tf = tokens * spec.ffn_hidden_size / sh.tp
    mask = 1.0 if spec.is_gpt_family else 0.0
    norm_f, norm_b = memory_time(gpu, th * 2 * e, 2), memory_time(gpu, th * 3 * e, 2)
    res_f, res_b = memory_time(gpu, th * (3 * e + mask), 2), memory_time(gpu, th * (2 * e + mask), 2)
    if spec.mlp == "swiglu":
        act_f, act_b = memory_time(gpu, tf * 3 * e), memory_time(gpu, tf * 5 * e)
    else:
        act_f, act_b = memory_time(gpu, tf * 2 * e), memory_time(gpu, tf * 3 * e)
    return norm_f + res_f + act_f, norm_b + res_b + act_b


def _attention_gemms(spec: TransformerSpec, gpu: GPU, sh: Shapes,
                     tokens: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The attention block's linear layers: fused QKV (column-parallel) and the output
    projection (row-parallel) for MHA / GQA; MLA's matrices one by one (planner/moe.py), the
    replicated down-projections whole on every tp rank."""
    mats, t = attention_matrices(spec), sh.tp
    if not isinstance(spec.attention, MLAAttention):
        h = spec.hidden_size
        return [_gemms(gpu, sh, tokens, h, (spec.q_dim + 2 * spec.kv_dim) / t),
                _gemms(gpu, sh, tokens, spec.q_dim / t, h)]
    out = [_gemms(gpu, sh, tokens, i, o / t if cut else o) for i, o, cut in mats[:-1]]
    i, o, _ = mats[-1]
    return out + [_gemms(gpu, sh, tokens, i / t, o)]


def mlp_times(spec: TransformerSpec, gpu: GPU, sh: Shapes,
              traffic: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, backward, forward GEMMs) of the dense MLP of one block: its two GEMMs and its
    activation kernel (what an MoE block replaces)."""
    h, f, t = spec.hidden_size, spec.ffn_hidden_size, sh.tp
    tokens = sh.mbs * spec.seq_len / sh.cp
    up = 2 * f if spec.mlp == "swiglu" else f
    a, b = _gemms(gpu, sh, tokens, h, up / t), _gemms(gpu, sh, tokens, f / t, h)
    e, tf = sh.act_bytes * traffic, tokens * f / t
    if spec.mlp == "swiglu":
        act_f, act_b = memory_time(gpu, tf * 3 * e), memory_time(gpu, tf * 5 * e)
    else:
        act_f, act_b = memory_time(gpu, tf * 2 * e), memory_time(gpu, tf * 3 * e)
    return a[0] + b[0] + act_f, a[1] + b[1] + act_b, a[0] + b[0]


def layer_times(spec: TransformerSpec, gpu: GPU, sh: Shapes, flash: bool,
                elementwise_traffic: float = 1.0) -> LayerTimes:
    """One dense block, one micro-batch, one GPU. `elementwise_traffic` scales the element-wise
    kernels' bytes (the stack's elementwise_traffic)."""
    h, f, t = spec.hidden_size, spec.ffn_hidden_size, sh.tp
    tokens = sh.mbs * spec.seq_len / sh.cp
    up = 2 * f if spec.mlp == "swiglu" else f
    parts = _attention_gemms(spec, gpu, sh, tokens) + [
        _gemms(gpu, sh, tokens, h, up / t), _gemms(gpu, sh, tokens, f / t, h),
        _elementwise(spec, gpu, sh, tokens, elementwise_traffic)]
    attn_f, attn_b = _attention(spec, gpu, sh, flash, tokens)
    fwd = sum(p[0] for p in parts) + attn_f
    bwd = sum(p[1] for p in parts) + attn_b
    return LayerTimes(fwd=fwd, bwd=bwd, attn_fwd=attn_f, attn_bwd=attn_b,
                      gemm_fwd=sum(p[0] for p in parts[:-1]))


def head_times(spec: TransformerSpec, gpu: GPU, sh: Shapes,
               softmax_bytes: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Final norm, LM head GEMM and vocab-parallel cross-entropy (softmax over the logits at
    `softmax_bytes`, stack.loss_softmax_bytes: per logit read 2 + write s + read s bytes
    forward, read s + write 2 backward; s = 4 for an fp32 softmax)."""
    tokens = sh.mbs * spec.seq_len / sh.cp
    v = padded_vocab(spec, sh.tp) / sh.tp
    g_f, g_b = _gemms(gpu, sh, tokens, spec.hidden_size, v)
    th = tokens * spec.hidden_size / np.where(sh.sp, sh.tp, 1)
    ce_f = memory_time(gpu, tokens * v * (sh.act_bytes + 2 * softmax_bytes))
    ce_b = memory_time(gpu, tokens * v * (softmax_bytes + sh.act_bytes))
    return (g_f + ce_f + memory_time(gpu, th * 2 * sh.act_bytes),
            g_b + ce_b + memory_time(gpu, th * 3 * sh.act_bytes))


def embedding_times(spec: TransformerSpec, gpu: GPU, sh: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """Embedding lookup (gather) forward; fp32 scatter-add of its gradient backward."""
    th = sh.mbs * spec.seq_len / sh.cp * spec.hidden_size
    return memory_time(gpu, th * 2 * sh.act_bytes), memory_time(gpu, th * (sh.act_bytes + 8))
