"""What fp8 training changes in memory, where the stack's fp8 kernels say so (Transformer Engine):
the fp8 copies of the weights kept between micro-batches, and GEMM inputs saved for backward in
fp8 instead of 16 bits.

Transformer Engine's modules, given `is_first_microbatch` (Megatron-Core passes it under gradient
accumulation and pipelining), cast each weight to fp8 once per step and cache it with its
transpose for the later micro-batches' forward and data-gradient GEMMs (NVIDIA
TransformerEngine, te.pytorch.Linear docs, `is_first_microbatch`: "caching of FP8 versions of
weights"), and keep the fp8-cast input of each GEMM for its weight-gradient GEMM.
"""

from __future__ import annotations

import numpy as np

from planner.cost.compute import Shapes
from planner.cost.params import layer_params_per_rank, moe_layer_dense_params_per_rank
from planner.plan_arrays import PlanArrays, R_FULL
from planner.stack import Stack
from planner.transformer import TransformerSpec


def fp8_saved_input_savings(spec: TransformerSpec, sh: Shapes, stack: Stack,
                            P: PlanArrays) -> np.ndarray:
    """Bytes of one block's saved activations per micro-batch that fp8 plans keep in 1 byte
    instead of the activations' width: the four GEMM inputs (the attention and MLP norms'
    outputs, whole per rank unless sequence parallelism splits them, and the out-projection's
    and the down-projection's inputs, split over tp). 0 under full recompute (only the block
    input is kept) and where the stack saves 16-bit inputs."""
    sp_div = np.where(sh.sp, sh.tp, 1)
    per_token = 2 * spec.hidden_size / sp_div + (spec.q_dim + spec.ffn_hidden_size) / sh.tp
    return _saved_in_fp8(spec, sh, stack, P, per_token)


def fp8_mlp_input_savings(spec: TransformerSpec, sh: Shapes, stack: Stack,
                          P: PlanArrays) -> np.ndarray:
    """The part of fp8_saved_input_savings that is the dense MLP's down-projection input (an MoE
    block has no such GEMM)."""
    return _saved_in_fp8(spec, sh, stack, P, spec.ffn_hidden_size / sh.tp)


def _saved_in_fp8(spec: TransformerSpec, sh: Shapes, stack: Stack, P: PlanArrays,
                  per_token: np.ndarray | float) -> np.ndarray:
    """Bytes saved by keeping `per_token` activation elements per token of a micro-batch in 1 byte
    instead of the activations' width, in fp8 plans of stacks that do, unless fully recomputed."""
    if not stack.fp8_saves_gemm_inputs:
        return np.zeros(len(P))
    saved = (sh.act_bytes - 1.0) * sh.mbs * spec.seq_len / sh.cp * per_token
    return np.where(sh.fp8 & (P.recompute != R_FULL), saved, 0.0)


def fp8_weight_cache_bytes(spec: TransformerSpec, sh: Shapes, stack: Stack, P: PlanArrays,
                           layers: np.ndarray, moe_layers: np.ndarray | float) -> np.ndarray:
    """Bytes of the fp8 weight copies a rank holding `layers` blocks (`moe_layers` of them MoE:
    their dense part; routed experts not counted) keeps through the step in fp8 plans
    (stack.fp8_weight_cache_bytes_per_param per block weight element). Not under ZeRO-3:
    its weights exist whole only one unit at a time, so there is nothing to cache."""
    dense = (layers - moe_layers) * layer_params_per_rank(spec, sh.tp)
    if spec.moe is not None:
        dense = dense + moe_layers * moe_layer_dense_params_per_rank(spec, sh.tp)
    cached = sh.fp8 & (P.zero < 3)
    return np.where(cached, stack.fp8_weight_cache_bytes_per_param * dense, 0.0)
