"""Hugging Face `config.json` -> `TransformerSpec`: dense Llama / Mistral / Qwen2-3 / GPT-2 style
configs, and mixture-of-experts configs of model_type mixtral, qwen2_moe, qwen3_moe,
deepseek_v2 / deepseek_v3 / kimi_k2 (MLA), gpt_oss (sliding windows) and llama4 (its
`text_config`).

Key names and their meaning are those of the transformers configuration classes
(src/transformers/models/<type>/configuration_<type>.py) and of the modelling code that reads
them; each mapper cites the rule it copies. A key that changes the model's shape must be in the
file (a missing one is an `InputError` naming it); keys that only choose between layouts default
as transformers does (noted where used).

Training sequence length: the length the model was pre-trained at where the config records it
(`rope_scaling.original_max_position_embeddings`, the context before a YaRN / Llama-3 rope
extension; gpt-oss's `initial_context_length`), else `max_position_embeddings`.
"""

from __future__ import annotations

from typing import Any, Callable

from planner.schema import InputError, validate_as
from planner.transformer import TransformerSpec

Config = dict[str, Any]
_MISSING = object()


def _need(cfg: Config, key: str, what: str) -> Any:
    """cfg[key], which must be present and not null."""
    if cfg.get(key) is None:
        raise InputError(f"{what}: missing key '{key}'")
    return cfg[key]


def _present(cfg: Config, key: str, what: str) -> Any:
    """cfg[key], which must be present but may be null (null has a meaning, e.g. q_lora_rank)."""
    value = cfg.get(key, _MISSING)
    if value is _MISSING:
        raise InputError(f"{what}: missing key '{key}'")
    return value


def _seq_len(cfg: Config, what: str) -> int:
    """Pre-training length (see module docstring)."""
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    orig = rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None
    return orig or cfg.get("initial_context_length") or _need(cfg, "max_position_embeddings",
                                                              what)


def _gated(cfg: Config, what: str) -> None:
    act = str(cfg.get("hidden_act", "silu")).lower()
    if act not in {"silu", "swish"}:
        raise InputError(f"{what}: hidden_act '{act}' is not supported for gated MLPs; "
                         "accepted: silu")


def _base(cfg: Config, name: str, what: str, ffn_key: str = "intermediate_size",
          head_dim: bool = True) -> Config:
    """The fields every gated (Llama-family) config shares. `head_dim` is kept only where it
    differs from hidden_size / num_attention_heads (Qwen3, gpt-oss), so a config and a preset
    that leave it implicit compare equal."""
    _gated(cfg, what)
    layers = _need(cfg, "num_hidden_layers", what)
    h = _need(cfg, "hidden_size", what)
    heads = _need(cfg, "num_attention_heads", what)
    spec: Config = {
        "name": cfg.get("_name_or_path") or name,
        "num_layers": layers,
        "hidden_size": h,
        "num_attention_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads") or heads,
        "ffn_hidden_size": _need(cfg, ffn_key, what),
        "vocab_size": _need(cfg, "vocab_size", what),
        "seq_len": _seq_len(cfg, what),
        "mlp": "swiglu",
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }
    d = cfg.get("head_dim")
    if head_dim and d and d != h // heads:
        spec["head_dim"] = d
    return spec


def _layout(is_moe: list[bool], what: str, key: str) -> tuple[int, int] | None:
    """(first_dense_layers, moe_layer_freq) reproducing the config's MoE layers exactly (the
    spec's layout: blocks first_dense + i * freq are MoE), or None when no block is."""
    moe = [i for i, flag in enumerate(is_moe) if flag]
    if not moe:
        return None
    first = moe[0]
    freq = moe[1] - moe[0] if len(moe) > 1 else len(is_moe) - first
    if [i >= first and (i - first) % freq == 0 for i in range(len(is_moe))] != is_moe:
        raise InputError(f"{what}: the MoE layers {moe} set by '{key}' are not a leading run of "
                         "dense blocks followed by every n-th block; the spec's layout is "
                         "moe.first_dense_layers + moe.moe_layer_freq")
    return first, freq


def _moe(spec: Config, is_moe: list[bool], what: str, key: str, **moe: Any) -> Config:
    """Attach the `moe` block (routed experts on the layers `is_moe` marks)."""
    layout = _layout(is_moe, what, key)
    if layout is not None:
        spec["moe"] = {"first_dense_layers": layout[0], "moe_layer_freq": layout[1], **moe}
    return spec


def _build(spec: Config, what: str) -> TransformerSpec:
    return validate_as(TransformerSpec, spec, what)


# ---------------------------------------------------------------------------------------------
# Families

def _from_llama(cfg: Config, name: str, what: str) -> TransformerSpec:
    """Llama, Mistral, Qwen2, Qwen3 (dense)."""
    return _build(_base(cfg, name, what), what)


def _from_gpt2(cfg: Config, name: str, what: str) -> TransformerSpec:
    h = _need(cfg, "n_embd", what)
    heads = _need(cfg, "n_head", what)
    return _build({
        "name": cfg.get("_name_or_path") or name,
        "num_layers": _need(cfg, "n_layer", what),
        "hidden_size": h,
        "num_attention_heads": heads,
        "num_kv_heads": heads,
        "ffn_hidden_size": cfg.get("n_inner") or 4 * h,
        "vocab_size": _need(cfg, "vocab_size", what),
        "seq_len": cfg.get("n_positions") or _need(cfg, "n_ctx", what),
        "mlp": "gelu",
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", True)),
    }, what)


def _from_mixtral(cfg: Config, name: str, what: str) -> TransformerSpec:
    """Mixtral (configuration_mixtral.py): every block's MLP is num_local_experts experts of
    intermediate_size, top num_experts_per_tok, softmax gate (modeling_mixtral.py). Mixtral v0.1
    sets sliding_window null (no window), so the key is not read."""
    spec = _base(cfg, name, what)
    return _build(_moe(spec, [True] * spec["num_layers"], what, "num_local_experts",
                       num_experts=_need(cfg, "num_local_experts", what),
                       top_k=_need(cfg, "num_experts_per_tok", what),
                       expert_ffn_hidden_size=spec["ffn_hidden_size"],
                       router="softmax_topk"), what)


def _from_qwen_moe(cfg: Config, name: str, what: str) -> TransformerSpec:
    """Qwen2-MoE / Qwen3-MoE: block i is MoE iff i not in mlp_only_layers and
    (i + 1) % decoder_sparse_step == 0 (modeling_qwen3_moe.py Qwen3MoeDecoderLayer; defaults 1
    and [] as in the config classes); dense blocks use intermediate_size. qwen2_moe adds one
    shared expert of shared_expert_intermediate_size (0 or absent: none)."""
    spec = _base(cfg, name, what)
    step = cfg.get("decoder_sparse_step") or 1
    dense_only = set(cfg.get("mlp_only_layers") or [])
    flags = [i not in dense_only and (i + 1) % step == 0 for i in range(spec["num_layers"])]
    shared = cfg.get("shared_expert_intermediate_size") or 0
    if str(cfg.get("model_type")) == "qwen2_moe" and "shared_expert_intermediate_size" not in cfg:
        raise InputError(f"{what}: missing key 'shared_expert_intermediate_size'")
    return _build(_moe(spec, flags, what, "decoder_sparse_step/mlp_only_layers",
                       num_experts=_need(cfg, "num_experts", what),
                       top_k=_need(cfg, "num_experts_per_tok", what),
                       expert_ffn_hidden_size=_need(cfg, "moe_intermediate_size", what),
                       num_shared_experts=1 if shared else 0,
                       shared_expert_ffn_hidden_size=shared or None,
                       router="softmax_topk"), what)


_ROUTERS = {"sigmoid": "sigmoid_topk", "softmax": "softmax_topk"}


def _from_deepseek(cfg: Config, name: str, what: str) -> TransformerSpec:
    """DeepSeek-V2/V3 and Kimi K2 (DeepSeek's configuration_deepseek.py / modeling_deepseek.py
    in the model repos): block i is MoE iff i >= first_k_dense_replace and i % moe_layer_freq
    == 0; n_shared_experts shared experts of moe_intermediate_size (DeepSeek builds them as one
    MLP n times as wide: the same weights and FLOPs); scoring_func picks the gate (V3 / K2:
    sigmoid, the native DeepseekV3 classes have no other; V2: softmax); MLA from q_lora_rank
    (null: no query compression, DeepSeek-V2-Lite), kv_lora_rank, qk_nope/qk_rope/v_head_dim;
    num_nextn_predict_layers multi-token-prediction modules (V3: 1)."""
    spec = _base(cfg, name, what, head_dim=False)
    first = _need(cfg, "first_k_dense_replace", what)
    freq = cfg.get("moe_layer_freq") or 1
    flags = [i >= first and i % freq == 0 for i in range(spec["num_layers"])]
    default = "softmax" if str(cfg.get("model_type")) == "deepseek_v2" else "sigmoid"
    scoring = str(cfg.get("scoring_func") or default)
    if scoring not in _ROUTERS:
        raise InputError(f"{what}: scoring_func '{scoring}' is not supported; accepted: "
                         f"{', '.join(_ROUTERS)}")
    spec["attention"] = {"kind": "mla", "q_lora_rank": _present(cfg, "q_lora_rank", what),
                         **{k: _need(cfg, k, what) for k in (
                             "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                             "v_head_dim")}}
    spec["mtp_layers"] = cfg.get("num_nextn_predict_layers") or 0
    expert = _need(cfg, "moe_intermediate_size", what)
    return _build(_moe(spec, flags, what, "first_k_dense_replace/moe_layer_freq",
                       num_experts=_need(cfg, "n_routed_experts", what),
                       top_k=_need(cfg, "num_experts_per_tok", what),
                       expert_ffn_hidden_size=expert,
                       num_shared_experts=_need(cfg, "n_shared_experts", what),
                       shared_expert_ffn_hidden_size=expert,
                       router=_ROUTERS[scoring]), what)


def _from_gpt_oss(cfg: Config, name: str, what: str) -> TransformerSpec:
    """gpt-oss (configuration_gpt_oss.py): every block is MoE (num_local_experts of
    intermediate_size, top num_experts_per_tok, softmax over the selected experts);
    layer_types marks sliding_attention (a sliding_window-token band) and full_attention blocks,
    default alternating from a sliding block 0 as the config class builds it. The experts carry
    biases (GptOssExperts gate_up_proj_bias / down_proj_bias: `moe.expert_bias`) and its
    attention learned sinks (GptOssAttention.sinks: `attention.sinks`); the attention's biases
    are not a spec field (0.01% of gpt-oss-120b)."""
    spec = _base(cfg, name, what)
    layers = spec["num_layers"]
    types = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention"
                                       for i in range(layers)]
    full = sum(t == "full_attention" for t in types)
    window = cfg.get("sliding_window")
    if len(types) != layers or full + sum(t == "sliding_attention" for t in types) != layers:
        raise InputError(f"{what}: layer_types must list {layers} entries of sliding_attention "
                         "or full_attention")
    if window and full < layers:
        if not full or layers % full:
            raise InputError(f"{what}: layer_types has {full} full_attention blocks of {layers}; "
                             "the spec needs every n-th block full (attention.full_attention_"
                             "every)")
        spec["attention"] = {"kind": "gqa", "sliding_window": window,
                             "full_attention_every": layers // full, "sinks": True}
    top_k = cfg.get("num_experts_per_tok") or _need(cfg, "experts_per_token", what)
    return _build(_moe(spec, [True] * layers, what, "num_local_experts",
                       num_experts=_need(cfg, "num_local_experts", what), top_k=top_k,
                       expert_ffn_hidden_size=spec["ffn_hidden_size"],
                       router="softmax_topk", expert_bias=True), what)


def _from_llama4(cfg: Config, name: str, what: str) -> TransformerSpec:
    """Llama 4 text model (configuration_llama4.py Llama4TextConfig): MoE blocks are moe_layers,
    default every interleave_moe_layer_step-th from step - 1; each has num_local_experts routed
    experts and one shared expert, both of intermediate_size, and a sigmoid gate over the top
    num_experts_per_tok (modeling_llama4.py Llama4TextMoe); dense blocks use
    intermediate_size_mlp. Chunked attention (attention_chunk_size, 3 of 4 blocks) only differs
    from full attention beyond the chunk (8192), so it is not modelled."""
    spec = _base(cfg, name, what, ffn_key="intermediate_size_mlp")
    layers = spec["num_layers"]
    step = cfg.get("interleave_moe_layer_step") or 1
    moe_layers = cfg.get("moe_layers")
    if moe_layers is None:
        moe_layers = list(range(step - 1, layers, step))
    expert = _need(cfg, "intermediate_size", what)
    return _build(_moe(spec, [i in set(moe_layers) for i in range(layers)], what,
                       "moe_layers/interleave_moe_layer_step",
                       num_experts=_need(cfg, "num_local_experts", what),
                       top_k=_need(cfg, "num_experts_per_tok", what),
                       expert_ffn_hidden_size=expert, num_shared_experts=1,
                       shared_expert_ffn_hidden_size=expert, router="sigmoid_topk"), what)


Mapper = Callable[[Config, str, str], TransformerSpec]
_DENSE: dict[str, Mapper] = {"llama": _from_llama, "mistral": _from_llama,
                             "qwen2": _from_llama, "qwen3": _from_llama, "gpt2": _from_gpt2}
_MOE: dict[str, Mapper] = {"mixtral": _from_mixtral, "qwen2_moe": _from_qwen_moe,
                           "qwen3_moe": _from_qwen_moe, "deepseek_v2": _from_deepseek,
                           "deepseek_v3": _from_deepseek, "kimi_k2": _from_deepseek,
                           "gpt_oss": _from_gpt_oss, "llama4": _from_llama4,
                           "llama4_text": _from_llama4}
_WRAPPERS = {"llama4", "kimi_k25"}  # multimodal configs whose language model is `text_config`
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def accepted_model_types() -> list[str]:
    """The model_type values `spec_from_hf_config` reads."""
    return sorted(_DENSE.keys() | _MOE.keys())


def _text_config(cfg: Config) -> Config:
    """The language model's config: `text_config` of a multimodal wrapper (Llama 4, Kimi
    K2.5), with the wrapper's name and tie_word_embeddings where the text config lacks them."""
    text = cfg.get("text_config")
    if str(cfg.get("model_type", "")).lower() not in _WRAPPERS or not isinstance(text, dict):
        return cfg
    inner = dict(text)
    for key in ("_name_or_path", "tie_word_embeddings"):
        if key in cfg and key not in inner:
            inner[key] = cfg[key]
    inner.setdefault("model_type", cfg["model_type"])
    return inner


def spec_from_hf_config(cfg: dict[str, Any], name: str = "hf-model") -> TransformerSpec:
    """Map a Hugging Face `config.json` to a spec (dense or mixture-of-experts; see the module
    docstring for the model types). Raises InputError naming a missing key or an unsupported
    model_type."""
    cfg = _text_config(cfg)
    model_type = str(cfg.get("model_type", "")).lower()
    if model_type in _MOE:
        return _MOE[model_type](cfg, name, f"HF mixture-of-experts config ({model_type})")
    what = f"HF config ({model_type or 'no model_type'})"
    if any(cfg.get(k) for k in _EXPERT_KEYS):
        raise InputError(f"{what}: mixture-of-experts model_type '{model_type}' is not "
                         f"supported; accepted: {', '.join(accepted_model_types())}")
    if model_type in _DENSE:
        return _DENSE[model_type](cfg, name, what)
    if "n_layer" in cfg and "n_embd" in cfg:
        return _from_gpt2(cfg, name, what)
    if "num_hidden_layers" in cfg:
        return _from_llama(cfg, name, what)
    raise InputError(f"{what}: unrecognised config; accepted model_type: "
                     f"{', '.join(accepted_model_types())}")
