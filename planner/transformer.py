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
            from planner.hf_config import spec_from_hf_config
            return spec_from_hf_config(data, name=p.parent.name or p.stem)
        return validate_as(TransformerSpec, data, f"transformer spec {p}")
    presets = _presets()
    key = _norm(ref)
    if key not in presets:
        raise InputError(f"unknown transformer preset '{ref}'; accepted: "
                         f"{', '.join(presets)} (or a spec JSON / HF config.json path)")
    return validate_as(TransformerSpec, presets[key]["spec"], f"transformer preset {key}")


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json import: planner/hf_config.py (it imports TransformerSpec from here,
# so this module reaches it lazily, inside load_transformer and through __getattr__ below).

def __getattr__(name: str) -> Any:
    """`from planner.transformer import spec_from_hf_config` keeps working (the import lives
    in planner/hf_config.py; resolved on first use so neither module imports the other at
    load time)."""
    if name == "spec_from_hf_config":
        from planner.hf_config import spec_from_hf_config
        return spec_from_hf_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
