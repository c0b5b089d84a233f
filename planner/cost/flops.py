"""FLOP counts (matrix multiplies only, 2 FLOPs per multiply-add), per operator and per step.

Per layer, forward, for B sequences of s tokens (Narayanan et al. 2021, SC'21, section 5.1 /
Appendix; Korthikanti et al. 2022, Appendix A), generalized to grouped-query attention
(kv width g*d) and gated MLPs:
    QKV projection      2 B s h (h + 2 g d)
    attention scores    2 B s^2 h          (Q K^T; counted in full, as the papers do)
    attention over V    2 B s^2 h
    output projection   2 B s h^2
    MLP                 2 B s h f x (2 for gelu, 3 for swiglu)
LM head: 2 B s h V. Backward is twice the forward. With f = 4h, g d = h this gives the papers'
24 B s h^2 + 4 B s^2 h per layer, and model FLOPs per step
    72 B L s h^2 (1 + s/(6h) + V/(12 h L))       (Korthikanti eq. 7)
Full recompute adds one forward of every layer (Narayanan eq. 3: 96 B s L h^2 (...)).

The attention projections are the matrices of planner/moe.py attention_matrices (MHA / GQA with
any head_dim, or MLA); sliding-window layers attend to their window only (moe.mean_attended).
A mixture-of-experts block replaces the MLP by the router (h x E), top_k routed experts and the
shared experts per token (Fedus et al. 2021; DeepSeek-V3, arXiv 2412.19437, section 2.1.2);
multi-token-prediction modules add a block, an h x 2h projection and a head each (section 2.2).
"""

from __future__ import annotations

import numpy as np

from planner.moe import (attention_matrices, expert_params, mean_attended, moe_layer_count,
                         qk_width, router_params, shared_params, v_width)
from planner.transformer import TransformerSpec


def qkv_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """Query, key and value projections (with MLA's latent down/up projections), forward."""
    return 2.0 * tokens * sum(i * o for i, o, _ in attention_matrices(spec)[:-1])


def attention_core_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """Q K^T and softmax(.) V, forward, counted without the causal half (papers' convention):
    2 s a (qk width + v width) per token, times the attended share on windowed layers."""
    a = spec.num_attention_heads
    return (2.0 * tokens * spec.seq_len * a * (qk_width(spec) + v_width(spec))
            * mean_attended(spec))


def out_proj_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """Attention output projection, forward."""
    i, o, _ = attention_matrices(spec)[-1]
    return 2.0 * tokens * i * o


def mlp_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """MLP, forward (gelu: up + down; swiglu: gate + up + down)."""
    mats = 3 if spec.mlp == "swiglu" else 2
    return 2.0 * mats * tokens * spec.hidden_size * spec.ffn_hidden_size


def moe_ffn_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """An MoE block's FFN, forward: router, top_k routed experts and the shared experts."""
    m = spec.moe
    return 2.0 * tokens * (router_params(spec) + m.top_k * expert_params(spec)
                           + shared_params(spec))


def layer_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """One dense block, forward."""
    return (qkv_flops(spec, tokens) + attention_core_flops(spec, tokens)
            + out_proj_flops(spec, tokens) + mlp_flops(spec, tokens))


def moe_layer_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """One MoE block, forward."""
    return layer_flops(spec, tokens) - mlp_flops(spec, tokens) + moe_ffn_flops(spec, tokens)


def blocks_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """Every block of the model (dense and MoE) plus the multi-token-prediction modules
    (block, h x 2h projection and the shared head each), forward."""
    n_moe = moe_layer_count(spec)
    out = (spec.num_layers - n_moe) * layer_flops(spec, tokens)
    if n_moe:
        out = out + n_moe * moe_layer_flops(spec, tokens)
    if spec.mtp_layers:
        last = moe_layer_flops(spec, tokens) if spec.moe else layer_flops(spec, tokens)
        h = spec.hidden_size
        out = out + spec.mtp_layers * (last + 2.0 * tokens * 2 * h * h + head_flops(spec, tokens))
    return out


def head_flops(spec: TransformerSpec, tokens: np.ndarray) -> np.ndarray:
    """LM head (logits), forward."""
    return 2.0 * tokens * spec.hidden_size * spec.vocab_size


def model_flops_per_step(spec: TransformerSpec, global_batch: np.ndarray) -> np.ndarray:
    """Model FLOPs of one optimizer step: forward + backward (3x forward), recompute excluded."""
    tokens = np.asarray(global_batch, dtype=float) * spec.seq_len
    return 3.0 * (blocks_flops(spec, tokens) + head_flops(spec, tokens))


def hardware_flops_per_step(spec: TransformerSpec, global_batch: np.ndarray,
                            recompute: np.ndarray) -> np.ndarray:
    """FLOPs actually executed: model FLOPs plus recomputed forwards (recompute code 1 =
    selective: attention core; 2 = full: the whole block)."""
    tokens = np.asarray(global_batch, dtype=float) * spec.seq_len
    extra = np.where(recompute == 2, blocks_flops(spec, tokens) / spec.num_layers,
                     np.where(recompute == 1, attention_core_flops(spec, tokens), 0.0))
    return model_flops_per_step(spec, global_batch) + spec.num_layers * extra


def six_n_flops_per_token(n_params: float) -> float:
    """The 6N rule of thumb (Kaplan et al. 2020): training FLOPs per token for N parameters."""
    return 6.0 * n_params
