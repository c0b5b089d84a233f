"""Parameter counts: whole model (checked against published counts) and per rank under tp/pp.

GPT family (mlp=gelu): biases on every linear, LayerNorm (weight + bias), learned position
embeddings. Llama family (mlp=swiglu): no biases, RMSNorm (weight only), rotary positions.
"""

from __future__ import annotations

import numpy as np

from planner.transformer import TransformerSpec


def _mlp_mats(spec: TransformerSpec) -> int:
    return 3 if spec.mlp == "swiglu" else 2


def layer_matmul_params(spec: TransformerSpec) -> int:
    """Weights of the matrices in one block (QKV, output projection, MLP)."""
    h, kv, f = spec.hidden_size, spec.kv_dim, spec.ffn_hidden_size
    return h * (h + 2 * kv) + h * h + _mlp_mats(spec) * h * f


def layer_split_vector_params(spec: TransformerSpec) -> int:
    """Vectors split by tp (biases of column-parallel QKV and MLP-up)."""
    if not spec.is_gpt_family:
        return 0
    return (spec.hidden_size + 2 * spec.kv_dim) + spec.ffn_hidden_size


def layer_replicated_params(spec: TransformerSpec) -> int:
    """Vectors every tp rank holds whole (norms, row-parallel biases)."""
    h = spec.hidden_size
    if spec.is_gpt_family:
        return 2 * 2 * h + 2 * h  # two LayerNorms (weight+bias), out-proj and MLP-down biases
    return 2 * h  # two RMSNorm weights


def layer_params(spec: TransformerSpec) -> int:
    """All parameters of one block."""
    return layer_matmul_params(spec) + layer_split_vector_params(spec) + layer_replicated_params(spec)


def embedding_params(spec: TransformerSpec) -> int:
    """Token embedding (+ learned positions for the GPT family)."""
    pos = spec.seq_len * spec.hidden_size if spec.is_gpt_family else 0
    return spec.vocab_size * spec.hidden_size + pos


def head_params(spec: TransformerSpec) -> int:
    """Final norm + LM head (the head shares the embedding matrix when tied)."""
    norm = 2 * spec.hidden_size if spec.is_gpt_family else spec.hidden_size
    return norm + (0 if spec.tied_embeddings else spec.vocab_size * spec.hidden_size)


def total_params(spec: TransformerSpec) -> int:
    """N: every parameter once (tied matrices counted once)."""
    return spec.num_layers * layer_params(spec) + embedding_params(spec) + head_params(spec)


def padded_vocab(spec: TransformerSpec, tp: np.ndarray) -> np.ndarray:
    """Vocabulary padded to a multiple of 128 * tp, as Megatron-LM does for vocab-parallel
    embeddings (--make-vocab-size-divisible-by 128)."""
    mult = 128 * tp
    return -(-spec.vocab_size // mult) * mult


def layer_params_per_rank(spec: TransformerSpec, tp: np.ndarray) -> np.ndarray:
    """Parameters of one block on one tp rank."""
    return ((layer_matmul_params(spec) + layer_split_vector_params(spec)) / tp
            + layer_replicated_params(spec))


def stage_params_per_rank(spec: TransformerSpec, tp: np.ndarray, layers: np.ndarray,
                          first: np.ndarray | bool, last: np.ndarray | bool) -> np.ndarray:
    """Parameters on one rank holding `layers` blocks; `first`/`last` say whether it holds the
    embedding / the head (both for pp=1). With pp > 1 and tied embeddings the last stage keeps its
    own copy of the matrix as LM head (Megatron-LM). Learned position embeddings are split over
    tp like the token table, as the executor does (executor/parallel/vocab.py); Megatron-LM
    keeps them whole on every tp rank, a difference of seq_len x h (0.01% of GPT-3 175B)."""
    h = spec.hidden_size
    emb = padded_vocab(spec, tp) * h / tp
    pos = spec.seq_len * h / tp if spec.is_gpt_family else 0
    norm = 2 * h if spec.is_gpt_family else h
    first, last = np.asarray(first), np.asarray(last)
    head = np.where(first & spec.tied_embeddings, 0.0, emb)
    return (layers * layer_params_per_rank(spec, tp)
            + np.where(first, emb + pos, 0.0) + np.where(last, norm + head, 0.0))


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
