"""Mixture-of-experts and attention variants of a `TransformerSpec` (DESIGN.md spec keys `moe`,
`attention`, `mtp_layers`, `head_dim`), and the per-block shapes that parameters, FLOPs, compute
and memory share: the attention sub-model (MHA / GQA, sliding windows, DeepSeek's multi-head
latent attention) and the FFN sub-model (a dense MLP, or routed experts plus shared experts and
a router).

Sources for the shapes:
- MoE FFN: Fedus et al. 2021 (Switch Transformer) and Jiang et al. 2024 (Mixtral, arXiv
  2401.04088): each token runs top_k of num_experts expert MLPs; DeepSeek-V3 (arXiv 2412.19437,
  section 2.1.2) adds always-active shared experts, leading dense blocks and a sigmoid router.
- MLA: DeepSeek-V2 (arXiv 2405.04434, section 2.1): queries through a rank-q_lora_rank
  down/up projection, keys and values through one joint kv_lora_rank latent plus a shared
  decoupled RoPE key of qk_rope_head_dim; per head q/k width qk_nope + qk_rope, v width v_head_dim.
- Sliding windows (gpt-oss model card, OpenAI 2025): a 128-token banded window on alternating
  layers, full causal attention on the others.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, model_validator

from planner.schema import FrozenModel


class MoESpec(FrozenModel):
    """Routed experts of the FFN (DESIGN.md `moe`)."""

    num_experts: int = Field(ge=2)
    """Routed experts per MoE block (E)."""
    top_k: int = Field(ge=1)
    """Experts each token is sent to (k <= E)."""
    expert_ffn_hidden_size: int = Field(ge=1)
    """Inner width of one routed expert's (gated) MLP."""
    num_shared_experts: int = Field(default=0, ge=0)
    """Always-active experts every token also runs (DeepSeek-V3: 1)."""
    shared_expert_ffn_hidden_size: int | None = Field(default=None, ge=1)
    """Inner width of one shared expert (null: the routed expert's width)."""
    first_dense_layers: int = Field(default=0, ge=0)
    """Leading blocks with a dense MLP of ffn_hidden_size (DeepSeek-V3: 3)."""
    moe_layer_freq: int = Field(default=1, ge=1)
    """Every moe_layer_freq-th block after the dense ones is MoE (1: all of them)."""
    router: Literal["softmax_topk", "sigmoid_topk"] = "softmax_topk"
    """Gate: softmax over experts then top-k (Mixtral, Qwen) or sigmoid scores (DeepSeek-V3)."""
    capacity_factor: float | None = Field(default=None, gt=0)
    """Tokens an expert accepts, as a multiple of the balanced share (null: dropless)."""
    expert_bias: bool = False
    """The routed experts' linear layers add a per-expert bias (gpt-oss: gate_up_proj_bias and
    down_proj_bias of Hugging Face GptOssExperts). Its cost is the stack's
    (`expert_bias_bytes`: fused into the grouped GEMM, or separate element-wise kernels); its
    E (2 f + h) parameters per block (0.03% of gpt-oss-120b) are not counted."""
    routing: Literal["learned", "round_robin"] = "learned"
    """How tokens pick experts, for where dispatch traffic goes: `learned` (a trained or
    random-logit router: a token's k experts spread over the expert ranks as if drawn at
    random), or `round_robin` (benchmark gates that assign token t the k consecutive experts
    (t k + j) mod E, NeMo AutoModel's FakeBalancedGate: a token's experts sit on one or two
    ranks)."""
    load_imbalance: float = Field(default=1.0, ge=1.0)
    """Tokens of the most loaded expert-parallel rank over the balanced share (the critical
    path of dispatch and expert compute). 1.0: balanced, what benchmark runs that force uniform
    routing measure, and near what auxiliary-loss-free balancing holds at steady state
    (DeepSeek-V3, arXiv 2412.19437, section 2.1.2). Dropless auxiliary-loss routing at ep 8
    measured 1.8-2.0 (Qwen3-235B on 256 H100, Megatron-MoE-ModelZoo's forced / dropless pairs,
    read through this model: benchmarks/dropless_imbalance.py); set it for such runs."""

    @model_validator(mode="after")
    def _k(self) -> "MoESpec":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        return self

    @property
    def shared_width(self) -> int:
        """Inner width of one shared expert."""
        return self.shared_expert_ffn_hidden_size or self.expert_ffn_hidden_size


class MLAAttention(FrozenModel):
    """Multi-head latent attention (DeepSeek-V2/V3)."""

    kind: Literal["mla"]
    """Discriminator."""
    q_lora_rank: int | None = Field(default=None, ge=1)
    """Query compression rank (null: a plain h x a(qk_nope + qk_rope) query projection)."""
    kv_lora_rank: int = Field(ge=1)
    """Joint key/value latent width (what the KV cache holds)."""
    qk_nope_head_dim: int = Field(ge=1)
    """Per-head query/key width without rotary positions."""
    qk_rope_head_dim: int = Field(ge=1)
    """Per-head rotary query/key width (the rotary key is shared by all heads)."""
    v_head_dim: int = Field(ge=1)
    """Per-head value width."""


class WindowAttention(FrozenModel):
    """Grouped-query attention with sliding windows on some layers (gpt-oss)."""

    kind: Literal["gqa"]
    """Discriminator."""
    sliding_window: int = Field(ge=1)
    """Tokens a query attends to on windowed layers."""
    full_attention_every: int = Field(default=2, ge=1)
    """Every full_attention_every-th layer attends to the whole sequence (the others windowed)."""
    sinks: bool = False
    """Learned per-head attention sinks: one extra logit per head in the softmax's denominator
    (gpt-oss: GptOssAttention.sinks). Their cost is the stack's (`attention_sink_*_bytes`: in
    the kernel, or a rescale of its output); their parameters (one per head) are not counted."""


Attention = Union[MLAAttention, WindowAttention]


def ffn_is_moe(spec, layer: int) -> bool:
    """Whether block `layer` (0-based) has routed experts."""
    m = spec.moe
    if m is None or layer < m.first_dense_layers:
        return False
    return (layer - m.first_dense_layers) % m.moe_layer_freq == 0


def moe_layer_count(spec) -> int:
    """Blocks with routed experts."""
    return sum(ffn_is_moe(spec, i) for i in range(spec.num_layers))


def mlp_mats(spec) -> int:
    """Matrices of one (dense or expert) MLP: 3 gated (swiglu), 2 otherwise."""
    return 3 if spec.mlp == "swiglu" else 2


def attention_matrices(spec) -> list[tuple[int, int, bool]]:
    """The attention block's weight matrices as (in, out, split_by_tp): column-parallel matrices
    have their `out` split over tp, row-parallel ones their `in`; whole (tp-replicated) ones are
    False. MHA/GQA: Q, K, V (h x a d, h x g d twice) and the output projection (a d x h)."""
    h, a, d = spec.hidden_size, spec.num_attention_heads, spec.d_head
    mla = spec.attention if isinstance(spec.attention, MLAAttention) else None
    if mla is None:
        g = spec.num_kv_heads
        return [(h, a * d, True), (h, g * d, True), (h, g * d, True), (a * d, h, True)]
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    mats = []
    if mla.q_lora_rank:  # down-projection (replicated, as Megatron-Core's linear_q_down_proj)
        mats += [(h, mla.q_lora_rank, False), (mla.q_lora_rank, a * qk, True)]
    else:
        mats += [(h, a * qk, True)]
    # Joint KV latent plus the shared rotary key (replicated), then the per-head up-projection.
    mats += [(h, mla.kv_lora_rank + mla.qk_rope_head_dim, False),
             (mla.kv_lora_rank, a * (mla.qk_nope_head_dim + mla.v_head_dim), True),
             (a * mla.v_head_dim, h, True)]
    return mats


def attention_norm_params(spec) -> int:
    """Extra norms inside MLA (RMSNorm on the q and kv latents); 0 otherwise."""
    mla = spec.attention if isinstance(spec.attention, MLAAttention) else None
    if mla is None:
        return 0
    return (mla.q_lora_rank or 0) + mla.kv_lora_rank


def qk_width(spec) -> int:
    """Per-head width of queries and keys (the score GEMM's inner dimension)."""
    mla = spec.attention if isinstance(spec.attention, MLAAttention) else None
    return mla.qk_nope_head_dim + mla.qk_rope_head_dim if mla else spec.d_head


def v_width(spec) -> int:
    """Per-head width of values (the weighted-sum GEMM's output)."""
    mla = spec.attention if isinstance(spec.attention, MLAAttention) else None
    return mla.v_head_dim if mla else spec.d_head


def mean_attended(spec) -> float:
    """Keys a query attends to, averaged over layers, as a fraction of seq_len, before the
    causal half (1.0: full attention on every layer). Windowed layers see `sliding_window`."""
    att = spec.attention
    if not isinstance(att, WindowAttention):
        return 1.0
    windowed = 1.0 - 1.0 / att.full_attention_every
    frac = min(1.0, 2.0 * att.sliding_window / spec.seq_len)  # causal band of w keys = 2w/s of s^2/2
    return (1.0 - windowed) + windowed * frac


def expert_params(spec) -> int:
    """Weights of one routed expert."""
    return mlp_mats(spec) * spec.hidden_size * spec.moe.expert_ffn_hidden_size


def shared_params(spec) -> int:
    """Weights of all shared experts of one block."""
    m = spec.moe
    return m.num_shared_experts * mlp_mats(spec) * spec.hidden_size * m.shared_width


def router_params(spec) -> int:
    """Router weight (h x E; DeepSeek-V3's sigmoid router adds an E-wide bias for balancing)."""
    m = spec.moe
    return spec.hidden_size * m.num_experts + (m.num_experts if m.router == "sigmoid_topk" else 0)
