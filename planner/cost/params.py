"""Parameter counts: whole model (checked against published counts) and per rank under tp/pp
(and ep / etp for mixture-of-experts blocks).

GPT family (mlp=gelu): biases on every linear, LayerNorm (weight + bias), learned position
embeddings. Llama family (mlp=swiglu): no biases, RMSNorm (weight only), rotary positions.

A mixture-of-experts block (planner/moe.py) is a dense part (attention, norms, router, shared
experts: split over tp, replicated over dp x cp like a dense block) and an expert part (routed
experts: num_experts / ep per rank, each split over etp, replicated over edp).
"""

from __future__ import annotations

import numpy as np

from planner.moe import (attention_matrices, attention_norm_params, expert_params, ffn_is_moe,
                         mlp_mats, moe_layer_count, router_params, shared_params)
from planner.transformer import TransformerSpec


def attention_params(spec: TransformerSpec) -> int:
    """Weights of the attention block's matrices (and MLA's latent norms)."""
    return sum(i * o for i, o, _ in attention_matrices(spec)) + attention_norm_params(spec)


def attention_params_per_rank(spec: TransformerSpec, tp: np.ndarray) -> np.ndarray:
    """Attention weights on one tp rank (MLA's down-projections and latent norms are whole)."""
    split = sum(i * o for i, o, cut in attention_matrices(spec) if cut)
    whole = sum(i * o for i, o, cut in attention_matrices(spec) if not cut)
    return split / tp + whole + attention_norm_params(spec)


def layer_matmul_params(spec: TransformerSpec) -> int:
    """Weights of the matrices in one dense block (attention, MLP)."""
    return attention_params(spec) + mlp_mats(spec) * spec.hidden_size * spec.ffn_hidden_size


def layer_split_vector_params(spec: TransformerSpec) -> int:
    """Vectors split by tp (biases of column-parallel QKV and MLP-up)."""
    if not spec.is_gpt_family:
        return 0
    return (spec.q_dim + 2 * spec.kv_dim) + spec.ffn_hidden_size


def layer_replicated_params(spec: TransformerSpec) -> int:
    """Vectors every tp rank holds whole (norms, row-parallel biases)."""
    h = spec.hidden_size
    if spec.is_gpt_family:
        return 2 * 2 * h + 2 * h  # two LayerNorms (weight+bias), out-proj and MLP-down biases
    return 2 * h  # two RMSNorm weights


def layer_params(spec: TransformerSpec) -> int:
    """All parameters of one dense block."""
    return layer_matmul_params(spec) + layer_split_vector_params(spec) + layer_replicated_params(spec)


def moe_layer_dense_params(spec: TransformerSpec) -> int:
    """The non-expert parameters of one MoE block: attention, norms, router, shared experts."""
    return (attention_params(spec) + layer_replicated_params(spec) + router_params(spec)
            + shared_params(spec))


def moe_layer_params(spec: TransformerSpec) -> int:
    """All parameters of one MoE block."""
    return moe_layer_dense_params(spec) + spec.moe.num_experts * expert_params(spec)


def mtp_params(spec: TransformerSpec) -> int:
    """One multi-token-prediction module (DeepSeek-V3, section 2.2): two RMSNorms, an h x 2h
    projection and one block like the model's last (embedding and head shared)."""
    last = spec.num_layers - 1
    block = moe_layer_params(spec) if ffn_is_moe(spec, last) else layer_params(spec)
    h = spec.hidden_size
    return 2 * h + 2 * h * h + block + h


def embedding_params(spec: TransformerSpec) -> int:
    """Token embedding (+ learned positions for the GPT family)."""
    pos = spec.seq_len * spec.hidden_size if spec.is_gpt_family else 0
    return spec.vocab_size * spec.hidden_size + pos


def head_params(spec: TransformerSpec) -> int:
    """Final norm + LM head (the head shares the embedding matrix when tied)."""
    norm = 2 * spec.hidden_size if spec.is_gpt_family else spec.hidden_size
    return norm + (0 if spec.tied_embeddings else spec.vocab_size * spec.hidden_size)


def total_params(spec: TransformerSpec) -> int:
    """N: every parameter once (tied matrices counted once; multi-token-prediction modules
    included, which DeepSeek-V3's published 671B leaves out: it states 685B with them)."""
    n_moe = moe_layer_count(spec)
    blocks = (spec.num_layers - n_moe) * layer_params(spec)
    if n_moe:
        blocks += n_moe * moe_layer_params(spec)
    return (blocks + spec.mtp_layers * mtp_params(spec) + embedding_params(spec)
            + head_params(spec))


def active_params(spec: TransformerSpec) -> int:
    """Parameters one token runs through: the dense blocks, and in MoE blocks the dense part
    plus top_k routed experts (embedding and head included, multi-token prediction not)."""
    n_moe = moe_layer_count(spec)
    blocks = (spec.num_layers - n_moe) * layer_params(spec)
    if n_moe:
        blocks += n_moe * (moe_layer_dense_params(spec) + spec.moe.top_k * expert_params(spec))
    return blocks + embedding_params(spec) + head_params(spec)


def padded_vocab(spec: TransformerSpec, tp: np.ndarray) -> np.ndarray:
    """Vocabulary padded to a multiple of 128 * tp, as Megatron-LM does for vocab-parallel
    embeddings (--make-vocab-size-divisible-by 128)."""
    mult = 128 * tp
    return -(-spec.vocab_size // mult) * mult


def layer_params_per_rank(spec: TransformerSpec, tp: np.ndarray) -> np.ndarray:
    """Parameters of one dense block on one tp rank (MLA's whole down-projections included)."""
    mlp = mlp_mats(spec) * spec.hidden_size * spec.ffn_hidden_size
    return (attention_params_per_rank(spec, tp) + (mlp + layer_split_vector_params(spec)) / tp
            + layer_replicated_params(spec))


def moe_layer_dense_params_per_rank(spec: TransformerSpec, tp: np.ndarray) -> np.ndarray:
    """The non-expert parameters of one MoE block on one tp rank (the router whole; shared
    experts split over tp, as Megatron-Core's SharedExpertMLP)."""
    return (attention_params_per_rank(spec, tp) + shared_params(spec) / tp
            + layer_replicated_params(spec) + router_params(spec))


def moe_layer_expert_params_per_rank(spec: TransformerSpec, ep: np.ndarray,
                                     etp: np.ndarray) -> np.ndarray:
    """Routed-expert parameters of one MoE block on one rank: num_experts / ep experts, each
    split over etp."""
    return spec.moe.num_experts / ep * expert_params(spec) / etp


def stage_params_per_rank(spec: TransformerSpec, tp: np.ndarray, layers: np.ndarray,
                          first: np.ndarray | bool, last: np.ndarray | bool,
                          moe_layers: np.ndarray | float = 0.0) -> np.ndarray:
    """Parameters on one rank holding `layers` blocks; `first`/`last` say whether it holds the
    embedding / the head (both for pp=1). With pp > 1 and tied embeddings the last stage keeps its
    own copy of the matrix as LM head (Megatron-LM). Learned position embeddings are split over
    tp like the token table, as the executor does (executor/parallel/vocab.py); Megatron-LM
    keeps them whole on every tp rank, a difference of seq_len x h (0.01% of GPT-3 175B).
    `moe_layers` of the `layers` are MoE blocks: only their dense part counts here (the routed
    experts are `stage_expert_params_per_rank`)."""
    h = spec.hidden_size
    emb = padded_vocab(spec, tp) * h / tp
    pos = spec.seq_len * h / tp if spec.is_gpt_family else 0
    norm = 2 * h if spec.is_gpt_family else h
    first, last = np.asarray(first), np.asarray(last)
    head = np.where(first & spec.tied_embeddings, 0.0, emb)
    blocks = (layers - moe_layers) * layer_params_per_rank(spec, tp)
    if spec.moe is not None:
        blocks = blocks + moe_layers * moe_layer_dense_params_per_rank(spec, tp)
    return blocks + np.where(first, emb + pos, 0.0) + np.where(last, norm + head, 0.0)


def stage_expert_params_per_rank(spec: TransformerSpec, ep: np.ndarray, etp: np.ndarray,
                                 moe_layers: np.ndarray | float) -> np.ndarray:
    """Routed-expert parameters on one rank holding `moe_layers` MoE blocks (0 for dense)."""
    if spec.moe is None:
        return np.zeros(np.shape(np.asarray(ep * moe_layers, dtype=float)))
    return moe_layers * moe_layer_expert_params_per_rank(spec, ep, etp)


def layer_tensor_count(spec: TransformerSpec) -> int:
    """Parameter tensors of one block as the executor builds it (separate q, k, v, o)."""
    weights = 4 + (3 if spec.mlp == "swiglu" else 2)
    biases = weights if spec.is_gpt_family else 0
    norms = 2 * (2 if spec.is_gpt_family else 1)
    return weights + biases + norms


def stage_tensor_count(spec: TransformerSpec, layers: np.ndarray, first: np.ndarray | bool,
                       last: np.ndarray | bool) -> np.ndarray:
    """Parameter tensors on one rank of a stage (embedding, positions, final norm, head)."""
    first, last = np.asarray(first), np.asarray(last)
    emb = 2 if spec.is_gpt_family else 1
    tail = (2 if spec.is_gpt_family else 1) + np.where(first & spec.tied_embeddings, 0, 1)
    return layers * layer_tensor_count(spec) + np.where(first, emb, 0) \
        + np.where(last, tail, 0)
