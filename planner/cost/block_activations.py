"""Activations one transformer block saves for backward, per micro-batch, for fused kernels
(Korthikanti et al. 2022, section 4, eqs. 1-5, written out per tensor so GQA, SwiGLU, no
dropout and fused attention follow from the same accounting), and what torchtitan's op-level
selective checkpointing keeps instead. planner/cost/memory.py multiplies them by the blocks and
micro-batches in flight."""

from __future__ import annotations

import numpy as np

from planner.cost.compute import Shapes
from planner.plan_arrays import R_FULL, R_SELECTIVE
from planner.transformer import TransformerSpec


def layer_activation_bytes(spec: TransformerSpec, sh: Shapes, recompute: np.ndarray,
                           flash: bool, selective: str = "attention_core"
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(stored, full): bytes one block saves for backward for one micro-batch on one GPU under
    the plan's recompute mode, and without recompute. `selective`: what selective recompute
    redoes (stack.selective_recompute)."""
    e, t = sh.act_bytes, sh.tp
    tokens = sh.mbs * spec.seq_len / sh.cp
    h, kv, f = spec.hidden_size, spec.kv_dim, spec.ffn_hidden_size
    sp_div = np.where(sh.sp, t, 1)
    masks = 2.0 if spec.is_gpt_family else 0.0  # 1-byte dropout masks after attention and MLP
    # Norm inputs (2), QKV input, MLP input, dropout masks: whole on each rank without SP.
    unsplit = tokens * h * (4 * e + masks) / sp_div
    # Q, K, V, out-proj input; MLP: gelu input + output, or swiglu gate, up and product.
    mlp = (3 if spec.mlp == "swiglu" else 2) * e * tokens * f
    split = (e * tokens * (2 * spec.q_dim + 2 * kv) + mlp) / t
    heads = spec.num_attention_heads / t
    if flash:
        core = 4.0 * sh.mbs * heads * spec.seq_len / sh.cp  # fp32 log-sum-exp per query row
    else:
        per_score = 2 * e + 1 if spec.is_gpt_family else e  # softmax out (+ dropout mask, out)
        core = per_score * sh.mbs * heads * (spec.seq_len / sh.cp) * spec.seq_len
    full = unsplit + split + core
    block_input = e * tokens * h / sp_div
    if selective == "ops_half_matmuls":
        attention, mlp = op_policy_kept(spec, sh)
        sel = block_input + sh.act_bytes * tokens * (attention + mlp) + core
    else:
        sel = unsplit + split
    stored = np.where(recompute == R_SELECTIVE, sel, full)
    return np.where(recompute == R_FULL, block_input, stored), full


def op_policy_kept(spec: TransformerSpec, sh: Shapes) -> tuple[np.ndarray, np.ndarray]:
    """Elements per token torchtitan's op-level selective checkpointing keeps of one block
    beyond its input, (attention's, the MLP's): the attention kernel's output, and the output of
    every second matmul in forward order (its policy counts aten.mm calls per checkpointed block
    and saves the odd ones; torchtitan distributed/activation_checkpoint.py _apply_op_sac).
    Column-parallel outputs are split over tp; a row-parallel matmul's output is a partial sum,
    whole on every rank. With sequence parallelism the policy also keeps each reduce-scatter's
    output (the out- and down-projections', 1/tp of the hidden size each)."""
    t, h, f = sh.tp, spec.hidden_size, spec.ffn_hidden_size
    col = 1.0 / t
    # (width, split) of each matmul output: q, k, v, out-projection, then the MLP's; the four
    # attention matmuls come first, so the MLP's kept ones are its own first, third, ...
    mlp = [(f, col), (f, col), (h, 1.0)] if spec.mlp == "swiglu" else [(f, col), (h, 1.0)]
    mms = [(spec.q_dim, col), (spec.kv_dim, col), (spec.kv_dim, col), (h, 1.0)]
    scattered = np.where(sh.sp & (t > 1), h / t, 0.0)  # one reduce-scatter each
    attention = spec.q_dim * col + sum(w * s for w, s in mms[0::2]) + scattered
    return attention, sum(w * s for w, s in mlp[0::2]) + scattered
