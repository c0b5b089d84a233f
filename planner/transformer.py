"""`TransformerSpec`: the model noun (a decoder-only transformer, dense or mixture-of-experts; the
MoE and attention sub-models are in planner/moe.py), its built-in presets and the import from a
Hugging Face `config.json`.

Conventions implied by `mlp` (the spec keys are fixed by DESIGN.md, so the family is inferred):
`gelu` is the GPT-2/3 / Megatron GPT family (biases, LayerNorm, learned position embeddings,
dropout); `swiglu` is the Llama family (no biases, RMSNorm, rotary positions, no dropout).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from planner.moe import Attention, MoESpec
from planner.schema import FrozenModel, InputError, read_json, validate_as


class TransformerSpec(FrozenModel):
    """Shape of a decoder-only transformer (dense, or mixture-of-experts with `moe`)."""

    name: str = Field(min_length=1)
    """Display name."""
    num_layers: int = Field(ge=1)
    """Transformer blocks (L)."""
    hidden_size: int = Field(ge=1)
    """Model width (h)."""
    num_attention_heads: int = Field(ge=1)
    """Query heads (a); hidden_size must be a multiple."""
    num_kv_heads: int = Field(ge=1)
    """Key/value heads (g); a == g is multi-head attention, g < a is grouped-query attention."""
    ffn_hidden_size: int = Field(ge=1)
    """MLP inner width (f)."""
    vocab_size: int = Field(ge=1)
    """Vocabulary size (V)."""
    seq_len: int = Field(ge=1)
    """Training sequence length (s)."""
    mlp: Literal["gelu", "swiglu"] = "gelu"
    """`gelu`: two matrices h x f. `swiglu`: three (gate, up, down)."""
    tied_embeddings: bool = True
    """Input embedding and LM head share one matrix."""
    moe: MoESpec | None = None
    """Routed experts of the FFN (null: a dense MLP in every block)."""
    attention: Attention | None = Field(default=None, discriminator="kind")
    """null: multi-head / grouped-query attention from num_kv_heads; else MLA or sliding windows."""
    mtp_layers: int = Field(default=0, ge=0)
    """Multi-token-prediction blocks after the last layer (DeepSeek-V3: 1)."""
    head_dim: int | None = Field(default=None, ge=1)
    """Per-head width (null: hidden_size / num_attention_heads; Qwen3 and gpt-oss set it)."""

    @model_validator(mode="after")
    def _shapes(self) -> "TransformerSpec":
        h, a, g = self.hidden_size, self.num_attention_heads, self.num_kv_heads
        if self.head_dim is None and self.attention is None and h % a:
            raise ValueError(f"hidden_size {h} is not a multiple of num_attention_heads {a} "
                             "(set head_dim when the heads' width is not hidden / heads)")
        if a % g:
            raise ValueError(f"num_attention_heads {a} is not a multiple of num_kv_heads {g}")
        if self.moe and self.moe.first_dense_layers > self.num_layers:
            raise ValueError(f"moe.first_dense_layers {self.moe.first_dense_layers} exceeds "
                             f"num_layers {self.num_layers}")
        return self

    @property
    def d_head(self) -> int:
        """Per-head width d: head_dim, or h / a."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        """Width of all query heads: a * d (h unless head_dim says otherwise)."""
        return self.num_attention_heads * self.d_head

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): g * d."""
        return self.num_kv_heads * self.d_head

    @property
    def is_moe(self) -> bool:
        """Whether any block has routed experts."""
        return self.moe is not None

    @property
    def is_gpt_family(self) -> bool:
        """Biases, LayerNorm, learned positions and dropout (see module docstring)."""
        return self.mlp == "gelu"


# ---------------------------------------------------------------------------------------------
# Presets

def _presets() -> dict[str, dict[str, Any]]:
    path = Path(str(resources.files("planner"))) / "presets" / "transformers.json"
    return json.loads(path.read_text())["presets"]


def transformer_preset_names() -> list[str]:
    """Names of the built-in transformer presets, in the file's order (by family and size)."""
    return list(_presets())


def transformer_preset_info(name: str) -> dict[str, Any]:
    """The preset entry: `spec`, `source`, and the published parameter count."""
    return _presets()[name]


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load_transformer(ref: str) -> TransformerSpec:
    """A spec from a preset name (`gpt3-175b`), a spec JSON, a Hugging Face `config.json`, or a
    directory containing one."""
    p = Path(ref)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json" or p.exists():
        data = read_json(p, f"transformer {p}")
        if not isinstance(data, dict):
            raise InputError(f"transformer {p}: expected a JSON object")
        if {"model_type", "num_hidden_layers", "n_layer"} & data.keys():
            return spec_from_hf_config(data, name=p.parent.name or p.stem)
        return validate_as(TransformerSpec, data, f"transformer spec {p}")
    presets = _presets()
    key = _norm(ref)
    if key not in presets:
        raise InputError(f"unknown transformer preset '{ref}'; accepted: "
                         f"{', '.join(presets)} (or a spec JSON / HF config.json path)")
    return validate_as(TransformerSpec, presets[key]["spec"], f"transformer preset {key}")


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json import

_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3"}
_GPT2_LIKE = {"gpt2"}


def spec_from_hf_config(cfg: dict[str, Any], name: str = "hf-model") -> TransformerSpec:
    """Map a Hugging Face `config.json` (Llama, Mistral, Qwen2, GPT-2 style) to a spec."""
    model_type = str(cfg.get("model_type", "")).lower()
    what = f"HF config ({model_type or 'no model_type'})"
    if cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise InputError(f"{what}: mixture-of-experts models are not supported yet; accepted "
                         f"model_type: {', '.join(sorted(_LLAMA_LIKE | _GPT2_LIKE))}")
    if model_type in _GPT2_LIKE or ("n_layer" in cfg and "n_embd" in cfg):
        return _from_gpt2(cfg, name, what)
    if model_type in _LLAMA_LIKE or "num_hidden_layers" in cfg:
        return _from_llama(cfg, name, what)
    raise InputError(f"{what}: unrecognised config; accepted model_type: "
                     f"{', '.join(sorted(_LLAMA_LIKE | _GPT2_LIKE))}")


def _need(cfg: dict[str, Any], key: str, what: str) -> Any:
    if cfg.get(key) is None:
        raise InputError(f"{what}: missing key '{key}'")
    return cfg[key]


def _from_llama(cfg: dict[str, Any], name: str, what: str) -> TransformerSpec:
    act = str(cfg.get("hidden_act", "silu")).lower()
    if act not in {"silu", "swish"}:
        raise InputError(f"{what}: hidden_act '{act}' is not supported for gated MLPs; "
                         "accepted: silu")
    heads = _need(cfg, "num_attention_heads", what)
    return validate_as(TransformerSpec, {
        "name": cfg.get("_name_or_path") or name,
        "num_layers": _need(cfg, "num_hidden_layers", what),
        "hidden_size": _need(cfg, "hidden_size", what),
        "num_attention_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads") or heads,
        "ffn_hidden_size": _need(cfg, "intermediate_size", what),
        "vocab_size": _need(cfg, "vocab_size", what),
        "seq_len": _need(cfg, "max_position_embeddings", what),
        "mlp": "swiglu",
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }, what)


def _from_gpt2(cfg: dict[str, Any], name: str, what: str) -> TransformerSpec:
    h = _need(cfg, "n_embd", what)
    heads = _need(cfg, "n_head", what)
    return validate_as(TransformerSpec, {
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
