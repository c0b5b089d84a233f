"""Bytes saved for backward by this project's executor (executor/transformer.py): plain PyTorch
ops, no fused kernels, so more tensors stay alive than the Megatron-LM count in memory.py.

Counted tensor by tensor from the executor's autograd graph (torch 2.13, CPU; the CPU
scaled-dot-product kernel is a flash kernel: it saves q, k, v, the output and an fp32
log-sum-exp per query row, never the s x s scores). tests/test_eager_activations.py checks
these sums against autograd's saved-tensor hooks byte for byte. Per block and micro-batch:

- norm (twice): RMSNorm as composed ops saves its input, the fp32-sized 1/rms per token and
  x / rms; LayerNorm saves its input, mean and 1/std. Under sequence parallelism these are
  sequence-sharded; the norm's output that the next linear layer saves is whole (the
  all-gathered input; DTensor keeps it, where Megatron-LM gathers it again in backward).
- attention: q, and k and v repeated to every query head (grouped-query attention repeats before
  the kernel), the output, the log-sum-exp; context parallelism gathers k and v over the whole
  sequence and passes an fp32 causal mask (s/cp x s).
- MLP: GELU saves the up-projection output and the GELU output; SwiGLU saves both
  projections, silu of the gate and the product.

The rotary cos/sin tables are module buffers (allocated once whatever the batch), not counted
here. Selective recompute checkpoints the attention core: q, k, v (before the repeat and the gather)
stay, and the core's output is saved by the output projection. Full recompute keeps the
block input only.
"""

from __future__ import annotations

import numpy as np

from planner.cost.compute import Shapes
from planner.cost.params import padded_vocab
from planner.plan_arrays import R_FULL, R_SELECTIVE
from planner.transformer import TransformerSpec

FP32 = 4     # statistics (1/rms, mean, 1/std, log-sum-exp) and the CP mask are fp32 here
INDEX = 8    # token ids and targets are int64


def _norm(spec: TransformerSpec, sh: Shapes, tokens: np.ndarray) -> np.ndarray:
    """One norm and the linear-layer input it feeds."""
    e, h = sh.act_bytes, spec.hidden_size
    sp = np.where(sh.sp, sh.tp, 1)
    if spec.is_gpt_family:  # input; mean and 1/std
        own = tokens * (h * e + 2 * FP32)
    else:                    # input, 1/rms, x / rms
        own = tokens * (2 * h * e + FP32)
    return own / sp + tokens * h * e


def eager_block_bytes(spec: TransformerSpec, sh: Shapes,
                      recompute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stored, full): bytes one block saves per micro-batch on one rank under `recompute`,
    and with no recompute (the working set a full-recompute block rebuilds in backward)."""
    e, t, cp = sh.act_bytes, sh.tp, sh.cp
    h, kv, f = spec.hidden_size, spec.kv_dim, spec.ffn_hidden_size
    s = spec.seq_len
    tokens = sh.mbs * s / cp
    norms = 2 * _norm(spec, sh, tokens)
    heads = spec.num_attention_heads / t
    mask = np.where(cp > 1, (s / cp) * s * FP32, 0.0)
    core = (tokens * e * (h + 2 * h * cp + h) / t      # q, k, v repeated and gathered, output
            + tokens * heads * FP32 + mask)             # log-sum-exp, causal mask
    kept = tokens * e * (h + 2 * kv + h) / t            # selective: q, k, v, output
    mlp = tokens * e * f * (4 if spec.mlp == "swiglu" else 2) / t
    full = norms + core + mlp
    stored = np.where(recompute == R_SELECTIVE, norms + kept + mlp, full)
    block_input = tokens * h * e / np.where(sh.sp, t, 1)
    return np.where(recompute == R_FULL, block_input, stored), full


def eager_first_bytes(spec: TransformerSpec, sh: Shapes) -> np.ndarray:
    """Embedding per micro-batch on the first stage: the token ids."""
    return sh.mbs * spec.seq_len / sh.cp * INDEX


def eager_last_bytes(spec: TransformerSpec, sh: Shapes) -> np.ndarray:
    """Head per micro-batch on the last stage: final norm, log-softmax over this rank's vocab
    shard (the loss's dtype is the logits'), the targets (which the vocab-parallel loss of
    tensor parallelism does not keep)."""
    tokens = sh.mbs * spec.seq_len / sh.cp
    vocab = padded_vocab(spec, sh.tp) / sh.tp
    targets = np.where(sh.tp > 1, 0.0, INDEX)
    return _norm(spec, sh, tokens) + tokens * (vocab * sh.act_bytes + targets)
