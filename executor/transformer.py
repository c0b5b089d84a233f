"""The decoder-only transformer built from a planner `TransformerSpec`, with the same family
conventions as the planner's cost model (planner/transformer.py): `gelu` = GPT (biases,
LayerNorm, learned positions), `swiglu` = Llama (no biases, RMSNorm, rotary positions).

Written so the parallel wrappers can work on it unchanged: layers live in a ModuleDict keyed by
their global index (pipeline stages delete the others and keep the names), the embedding, final
norm and head can be None on stages that do not hold them, and the attention module reshapes by
the local head count (tensor parallelism shards the projections). Dropout is 0 so every run is
deterministic. Blocks that planner.moe.ffn_is_moe marks get the mixture-of-experts FFN of
executor/moe.py in place of the dense MLP (same attribute, `mlp`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from executor.moe import MoE
from planner.moe import ffn_is_moe
from planner.transformer import TransformerSpec

INIT_STD = 0.02  # GPT-2 / Megatron-LM default normal init


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), weight only, as in Llama."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, base: float = 10000.0) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """cos and sin tables (max_len x head_dim/2) for rotary embeddings (Su et al. 2021)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (b, s, heads, d); rotate pairs (even, odd) by the position's angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        h, kv, bias = spec.hidden_size, spec.kv_dim, spec.is_gpt_family
        self.head_dim = spec.d_head
        self.rope = not spec.is_gpt_family
        self.wq = nn.Linear(h, h, bias=bias)
        self.wk = nn.Linear(h, kv, bias=bias)
        self.wv = nn.Linear(h, kv, bias=bias)
        self.wo = nn.Linear(h, h, bias=bias)
        self.selective_recompute = False
        self.context: "ContextParallel | None" = None  # set by executor.parallelize for cp > 1

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                offset: int) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim)  # -1: heads on this tensor-parallel rank
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        if self.rope:
            q = apply_rope(q, cos[offset:offset + s], sin[offset:offset + s])
            k = apply_rope(k, cos[offset:offset + s], sin[offset:offset + s])
        if self.selective_recompute:  # Korthikanti et al. 2022: recompute only the core
            out = checkpoint(self.core, q, k, v, offset, use_reentrant=False)
        else:
            out = self.core(q, k, v, offset)
        return self.wo(out.reshape(b, s, -1))

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             offset: int) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + causal mask) v, over all keys of the sequence."""
        if self.context is not None:
            k, v = self.context.gather(k), self.context.gather(v)
        rep = q.shape[2] // k.shape[2]  # grouped-query attention: share each kv head
        q, k, v = (t.transpose(1, 2) for t in (q, k.repeat_interleave(rep, 2),
                                               v.repeat_interleave(rep, 2)))
        if offset == 0 and q.shape[2] == k.shape[2]:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # this rank's queries start at `offset` in the sequence (context parallel)
            qpos = torch.arange(q.shape[2], device=q.device) + offset
            mask = torch.arange(k.shape[2], device=q.device)[None, :] <= qpos[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        h, f, bias = spec.hidden_size, spec.ffn_hidden_size, spec.is_gpt_family
        self.gated = spec.mlp == "swiglu"
        self.w1 = nn.Linear(h, f, bias=bias)
        self.w2 = nn.Linear(f, h, bias=bias)
        self.w3 = nn.Linear(h, f, bias=bias) if self.gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:  # Shazeer 2020, SwiGLU
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


def _norm(spec: TransformerSpec) -> nn.Module:
    return nn.LayerNorm(spec.hidden_size) if spec.is_gpt_family else RMSNorm(spec.hidden_size)


class Block(nn.Module):
    def __init__(self, spec: TransformerSpec, layer: int = 0):
        super().__init__()
        self.attention_norm = _norm(spec)
        self.attention = Attention(spec)
        self.ffn_norm = _norm(spec)
        self.mlp: nn.Module = MoE(spec) if ffn_is_moe(spec, layer) else MLP(spec)
        self.full_recompute = False

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                offset: int) -> torch.Tensor:
        if self.full_recompute:
            return checkpoint(self._forward, x, cos, sin, offset, use_reentrant=False)
        return self._forward(x, cos, sin, offset)

    def _forward(self, x, cos, sin, offset):
        x = x + self.attention(self.attention_norm(x), cos, sin, offset)
        return x + self.mlp(self.ffn_norm(x))


class Transformer(nn.Module):
    """Whole model, or one pipeline stage of it (missing parts are None)."""

    def __init__(self, spec: TransformerSpec, vocab_rows: int | None = None):
        """`vocab_rows`: rows of the embedding table and the LM head, the vocabulary padded
        as the plan pads it (planner.cost.params.padded_vocab: Megatron-LM's multiple of
        128 x tp); the padded rows are never looked up and their logits take part in the
        softmax, as in Megatron-LM. Default: the vocabulary unpadded."""
        super().__init__()
        self.spec = spec
        h = spec.hidden_size
        rows = vocab_rows or spec.vocab_size
        if rows < spec.vocab_size:
            raise ValueError(f"vocab_rows {rows} < vocab_size {spec.vocab_size}")
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(rows, h)
        self.pos_embeddings = nn.Embedding(spec.seq_len, h) if spec.is_gpt_family else None
        # Sums the embedding's partial lookups over the tensor-parallel group (one collective
        # for tokens and positions together; executor/parallel/vocab.py); identity otherwise.
        self.embedding_reduce: nn.Module = nn.Identity()
        self.layers = nn.ModuleDict({str(i): Block(spec, i) for i in range(spec.num_layers)})
        self.norm: nn.Module | None = _norm(spec)
        self.output: nn.Linear | None = nn.Linear(h, rows, bias=False)
        cos, sin = rope_tables(spec.d_head, spec.seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.position_offset = 0  # first token's position on this rank (context parallel)
        self._init_weights()
        if spec.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=INIT_STD)
        for block in self.layers.values():  # GPT-2 scaling of residual projections
            std = INIT_STD / math.sqrt(2 * self.spec.num_layers)
            nn.init.normal_(block.attention.wo.weight, std=std)
            if isinstance(block.mlp, MoE):
                for proj in block.mlp.residual_projections():
                    nn.init.normal_(proj.weight, std=std)
            else:
                nn.init.normal_(block.mlp.w2.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (first stage) or hidden states -> logits (last stage) or hidden states."""
        off = self.position_offset
        if self.tok_embeddings is not None:
            tokens = x
            x = self.tok_embeddings(tokens)
            if self.pos_embeddings is not None:
                pos = torch.arange(off, off + tokens.shape[1],
                                   device=tokens.device).expand_as(tokens)
                x = x + self.pos_embeddings(pos)
            x = self.embedding_reduce(x)
        for layer in self.layers.values():
            x = layer(x, self.rope_cos, self.rope_sin, off)
        if self.norm is not None:
            x = self.norm(x)
        if self.output is not None:
            x = self.output(x)
        return x


class ContextParallel:
    """Gathers keys and values along the sequence from every context-parallel rank, so each rank
    attends its query chunk to the whole sequence. Written by hand: torch's context-parallel
    API is experimental and built for CUDA SDPA kernels; this is the all-gather variant that
    Llama 3 used (Llama Team 2024, section 3.3.2) rather than a ring, simpler and exact."""

    def __init__(self, group):
        self.group = group

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(b, s/cp, heads, d) -> (b, s, heads, d); the backward reduce-scatters."""
        return _GatherSeq.apply(t, self.group)


class _GatherSeq(torch.autograd.Function):
    """All-gather along dim 1 with a reduce-scatter backward, on plain synchronous collectives
    (torch's functional all_gather_single_autograd corrupted the heap here when FSDP deferred
    gradient sync and a second model was built in the same process: torch 2.13, gloo)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist
        ctx.group = group
        n = dist.get_world_size(group)
        local = t.transpose(0, 1).contiguous()
        out = torch.empty((local.shape[0] * n,) + tuple(local.shape[1:]), dtype=t.dtype)
        dist.all_gather_into_tensor(out, local, group=group)
        return out.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist
        full = grad.transpose(0, 1).contiguous()
        n = dist.get_world_size(ctx.group)
        out = torch.empty((full.shape[0] // n,) + tuple(full.shape[1:]), dtype=grad.dtype)
        dist.reduce_scatter_tensor(out, full, group=ctx.group)
        return out.transpose(0, 1), None
