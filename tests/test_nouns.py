"""The three nouns: presets load, bad input is one clear error, HF configs import, and every
number in the shipped profiles carries a source."""

from __future__ import annotations

import json
import os
from typing import Iterator

import pytest
from pydantic import ValidationError

from planner.hardware import GPU, load_cluster, load_gpu, preset_names
from planner.plan import Plan
from planner.schema import InputError, write_json_atomic
from planner.stack import load_stack, stack_names
from planner.transformer import TransformerSpec, load_transformer, spec_from_hf_config
from planner.validity import plan_problems

REQUIRED_CLUSTERS = {"dgx_a100_80g", "dgx_a100_40g", "dgx_h100", "hgx_h200", "dgx_b200", "mi300x_8"}
REQUIRED_GPUS = {"a100_40g", "a100_80g", "h100_sxm", "h200", "b200", "mi300x"}


def test_required_presets_exist_and_validate():
    assert REQUIRED_CLUSTERS <= set(preset_names("clusters"))
    assert REQUIRED_GPUS <= set(preset_names("gpus"))
    for name in preset_names("clusters"):
        c = load_cluster(name)
        assert c.gpus_per_node == 8 and c.inter_node is not None


Leaf = tuple[str, object]


def _is_curve(v: object) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(p, (list, tuple))
                                                            for p in v)


def _fields(obj: object, prefix: str = "") -> Iterator[Leaf]:
    """(dotted path, value) of every non-object field of a profile dump; a curve is one field."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("sources", "notes"):
                yield from _fields(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), obj


def _needs_source(value: object) -> bool:
    """Numbers, booleans and curves are claims about the hardware or the stack; strings are
    names and choices; null is no number (no such hardware path, or an unused option)."""
    return isinstance(value, (bool, int, float)) or _is_curve(value)


def _source_problems(dump: dict, sources: dict[str, str], skip: set[str]) -> list[str]:
    fields = dict(_fields(dump))
    problems = [f"{p}: no source" for p, v in fields.items()
                if p not in skip and _needs_source(v) and not sources.get(p, "").strip()]
    problems += [f"sources['{k}'] names no field" for k in sources if k not in fields]
    return problems


def _profile_sources_problems(kind: str, name: str) -> list[str]:
    """Every number and boolean of the loaded profile, code defaults included (the validated
    model is walked, not the file), needs a non-empty source under its exact key path. The only
    rules: a curve ([x, efficiency] points) is one series with one source; a cluster's
    `num_nodes` is the scale the user picks (--num-nodes), not a fact; a cluster's GPU is checked
    against that GPU's own `sources`. Every `sources` key must name a field (no block keys)."""
    if kind == "gpus":
        gpu = load_gpu(name)
        return _source_problems(gpu.model_dump(), gpu.sources, set())
    if kind == "stacks":
        st = load_stack(name)
        return _source_problems(st.model_dump(), st.sources, set())
    c = load_cluster(name)
    dump = c.model_dump()
    dump.pop("gpu")
    dump.pop("stack")  # the bound stack is checked as a stack
    return (_source_problems(dump, c.sources, {"num_nodes"})
            + [f"gpu.{p}" for p in _source_problems(c.gpu.model_dump(), c.gpu.sources, set())])


@pytest.mark.parametrize("kind,name", [("gpus", n) for n in preset_names("gpus")]
                         + [("clusters", n) for n in preset_names("clusters")]
                         + [("stacks", n) for n in stack_names()])
def test_every_profile_number_has_a_source(kind, name):
    problems = _profile_sources_problems(kind, name)
    assert not problems, f"{name}: {problems}"


def test_source_check_catches_what_it_should():
    """Block keys, defaults that the file does not write, booleans and empty strings fail."""
    gpu = load_gpu("h100_sxm").model_dump()
    sources = dict(gpu["sources"])
    assert _source_problems(gpu, sources, set()) == []
    block = {k: v for k, v in sources.items() if not k.startswith("peak_tflops.")}
    assert "peak_tflops.bf16: no source" in _source_problems(
        gpu, {**block, "peak_tflops": "x"}, set())
    assert "sources['peak_tflops'] names no field" in _source_problems(
        gpu, {**sources, "peak_tflops": "x"}, set())
    assert _source_problems(gpu, {**sources, "fp8_gemm_scale": " "}, set()) == [
        "fp8_gemm_scale: no source"]
    st = load_stack("megatron-core").model_dump()
    ss = {k: v for k, v in st["sources"].items() if k != "grad_overlap"}
    assert _source_problems(st, ss, set()) == ["grad_overlap: no source"]  # a boolean
    c = load_cluster("dgx_h100").model_dump()
    c.pop("gpu")
    c.pop("stack")
    cs = dict(c["sources"])
    assert _source_problems(c, cs, {"num_nodes"}) == []
    c["intra_node"]["call_latency_s"] = 0.0  # as the code default would fill it in
    assert _source_problems(c, {**cs, "intra_node.call_latency_s": ""}, {"num_nodes"}) == [
        "intra_node.call_latency_s: no source"]


def test_num_nodes_scales_the_cluster():
    c = load_cluster("dgx-h100", num_nodes=16)  # '-' and '_' both accepted
    assert c.num_gpus == 128 and c.with_num_nodes(2).num_gpus == 16


@pytest.mark.parametrize("call,needle", [
    (lambda: load_cluster("dgx_z900"), "accepted: dgx_a100_40g"),
    (lambda: load_transformer("gpt5"), "accepted: gpt3-1.3b"),
    (lambda: load_cluster("dgx_h100", num_nodes=0), "--num-nodes must be >= 1"),
])
def test_unknown_presets_name_what_is_accepted(call, needle):
    with pytest.raises(InputError, match=needle):
        call()


def test_malformed_profile_names_the_field(tmp_path):
    data = json.loads(json.dumps(load_cluster("dgx_a100_80g").model_dump()))
    data["intra_node"]["topology"] = "torus"
    data["gpus_per_node"] = 0
    data["colour"] = "blue"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        load_cluster(str(bad))
    msg = str(err.value)
    assert "intra_node.topology" in msg and "'switch' or 'full_mesh'" in msg
    assert "gpus_per_node" in msg and "colour" in msg and "\n" not in msg
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_cluster(str(tmp_path / "broken.json"))


def test_gpu_curve_is_checked():
    data = load_gpu("a100_80g").model_dump()
    data["gemm_efficiency"] = [[10, 0.5], [1, 0.9]]
    with pytest.raises(ValidationError, match="strictly increasing"):
        GPU.model_validate(data)


def test_fp8_gpu_must_state_fp8_gemm_scale():
    """The code default (1.0) may fill only GPUs without fp8; one with an fp8 peak says its own."""
    data = load_gpu("mi300x").model_dump()
    data.pop("fp8_gemm_scale")
    with pytest.raises(ValidationError, match="needs fp8_gemm_scale"):
        GPU.model_validate(data)
    a100 = load_gpu("a100_80g").model_dump()
    a100.pop("fp8_gemm_scale")
    assert GPU.model_validate(a100).peak_tflops.fp8 is None


def test_models_are_frozen_and_strict():
    p = Plan(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=2)
    with pytest.raises(ValidationError):
        p.dp = 4
    with pytest.raises(ValidationError, match="Extra inputs"):
        Plan(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=2, zero=1)
    with pytest.raises(ValidationError, match="order must be"):
        Plan(dp=2, tp=1, pp=1, micro_batch_size=1, global_batch_size=2, order="tp-dp")
    with pytest.raises(ValidationError, match="not a multiple of num_kv_heads"):
        TransformerSpec(name="x", num_layers=2, hidden_size=64, num_attention_heads=4,
                        num_kv_heads=3, ffn_hidden_size=128, vocab_size=10, seq_len=8)


def test_mesh_dims_are_outermost_first():
    p = Plan(dp=2, tp=4, pp=3, cp=1, micro_batch_size=1, global_batch_size=2)
    assert p.mesh_dims() == [("pp", 3), ("dp", 2), ("cp", 1), ("tp", 4)]


@pytest.mark.parametrize("cfg,expect", [
    ({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
      "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
      "vocab_size": 128256, "max_position_embeddings": 8192, "hidden_act": "silu",
      "tie_word_embeddings": False}, ("swiglu", 8, False, 8192)),
    ({"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096,
      "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
      "vocab_size": 32000, "max_position_embeddings": 32768, "hidden_act": "silu",
      "sliding_window": 4096}, ("swiglu", 8, False, 32768)),
    ({"model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896,
      "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
      "vocab_size": 151936, "max_position_embeddings": 32768, "hidden_act": "silu",
      "tie_word_embeddings": True}, ("swiglu", 2, True, 32768)),
    ({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_inner": None,
      "vocab_size": 50257, "n_positions": 1024, "activation_function": "gelu_new"},
     ("gelu", 12, True, 1024)),
])
def test_hf_config_import(cfg, expect):
    s = spec_from_hf_config(cfg)
    assert (s.mlp, s.num_kv_heads, s.tied_embeddings, s.seq_len) == expect


def test_hf_config_from_file_and_errors(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64,
                                               "n_head": 4, "vocab_size": 100, "n_positions": 32}))
    assert load_transformer(str(d)).ffn_hidden_size == 256
    with pytest.raises(InputError, match="mixture-of-experts"):
        spec_from_hf_config({"model_type": "mixtral", "num_local_experts": 8})
    with pytest.raises(InputError, match="missing key 'intermediate_size'"):
        spec_from_hf_config({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                             "num_attention_heads": 4, "vocab_size": 10,
                             "max_position_embeddings": 16})


def test_plan_problems_name_every_reason(gpt3_175b, selene_1024):
    ok = Plan(dp=16, tp=8, pp=8, micro_batch_size=1, global_batch_size=1536, recompute="full")
    assert plan_problems(ok, gpt3_175b, selene_1024) == []
    bad = Plan(dp=3, tp=5, pp=7, cp=3, micro_batch_size=2, global_batch_size=100,
               schedule="interleaved_1f1b", sequence_parallel=True, precision="fp8")
    text = " | ".join(plan_problems(bad, gpt3_175b, selene_1024))
    for needle in ("= 315 but the cluster has 1024 GPUs", "num_attention_heads 96 is not "
                   "divisible by tp=5", "global_batch_size 100",
                   "virtual_pipeline_stages >= 2", "seq_len 2048 is not divisible by 2*cp = 6",
                   "precision fp8 is not supported by a100_80g"):
        assert needle in text
    sp1 = Plan(dp=1024, tp=1, pp=1, micro_batch_size=1, global_batch_size=1024,
               sequence_parallel=True)
    assert plan_problems(sp1, gpt3_175b, selene_1024) == [
        "sequence_parallel needs tp >= 2 (it shards activations over tp)"]
    too_deep = Plan(dp=1, tp=1, pp=1024, micro_batch_size=1, global_batch_size=1024)
    assert any("num_layers 96 is less than pp*virtual_pipeline_stages - 2 = 1024*1 - 2" in p
               for p in plan_problems(too_deep, gpt3_175b, selene_1024))
    uneven = Plan(dp=1, tp=8, pp=7, micro_batch_size=1, global_batch_size=1536)  # 96 over 7
    assert not any("num_layers" in p for p in plan_problems(uneven, gpt3_175b, selene_1024))


def test_atomic_write_replaces_whole_file_with_usual_permissions(tmp_path):
    path = write_json_atomic(tmp_path / "out" / "plan.json", {"dp": 2})
    write_json_atomic(path, {"dp": 4})
    assert json.loads(path.read_text()) == {"dp": 4}
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]  # no temporary left
    old = os.umask(0o022)
    try:
        assert write_json_atomic(path, {}).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
