"""The Stack noun: built-in names and aliases, binding to clusters, files written before stacks
existed, and bad input as one clear line."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.hardware import load_cluster
from planner.schema import InputError
from planner.stack import DEFAULT_STACK, Stack, load_stack, stack_for_framework, stack_names

BUILT_IN = {"megatron-lm-2021": [], "megatron-core": ["nemo", "megatron-bridge"],
            "torchtitan": [], "fsdp": ["llm-foundry", "composer", "hf-accelerate"],
            "deepspeed": ["megatron-deepspeed"]}
PLAN = ('{"dp": 8, "tp": 1, "pp": 1, "micro_batch_size": 1, "global_batch_size": 64, '
        '"zero_stage": 3}')


def test_built_in_names_and_aliases_are_the_contract():
    names = stack_names()
    assert {n: sorted(names[n]) for n in BUILT_IN} == {n: sorted(a) for n, a in BUILT_IN.items()}
    # Variants beside the fixed names (torch.compile on) carry no aliases of their own.
    assert all(not names[n] for n in set(names) - set(BUILT_IN))
    for name, aliases in BUILT_IN.items():
        for alias in [name, *aliases, name.upper()]:
            assert load_stack(alias).name == name


def test_default_stack_and_override():
    assert DEFAULT_STACK == "megatron-core"
    assert load_cluster("dgx_a100_80g").stack.name == "megatron-core"
    assert load_cluster("dgx_a100_80g", stack="nemo").stack.name == "megatron-core"
    assert not load_cluster("dgx_a100_80g", stack="megatron-lm-2021").stack.flash_attention


def test_frameworks_of_validation_runs_name_stacks():
    assert stack_for_framework("megatron-lm-2021") == "megatron-lm-2021"
    assert stack_for_framework("other:flagscale") == DEFAULT_STACK
    with pytest.raises(InputError, match="framework 'jax' names no stack"):
        stack_for_framework("jax")


def test_unknown_stack_names_what_is_accepted():
    with pytest.raises(InputError, match="unknown stack 'megatron'.*megatron-core"):
        load_stack("megatron")


def _predict(*extra: str) -> list[str]:
    return ["predict", "-t", "llama3-8b", "-c", "dgx_h100", "--plan", PLAN, "--json", *extra]


def test_predict_reports_its_stack_for_every_name_and_alias(capsys):
    for name, aliases in BUILT_IN.items():
        for ref in [name, *aliases]:
            assert main(_predict("--stack", ref)) == 0
            assert json.loads(capsys.readouterr().out)["stack"] == name


def test_malformed_stack_file_is_one_line_exit_2(tmp_path, capsys):
    data = load_stack("torchtitan").model_dump()
    data["grad_overlap"] = "sometimes"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main(_predict("--stack", str(bad))) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "grad_overlap" in err, err
    data = load_stack("torchtitan").model_dump()
    data["nccl_magic"] = 1.0
    bad.write_text(json.dumps(data))
    assert main(_predict("--stack", str(bad))) == 2
    assert "nccl_magic" in capsys.readouterr().err


def test_stack_file_round_trips_through_a_path(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(load_stack("torchtitan").model_dump_json())
    assert load_cluster("dgx_h100", stack=str(path)).stack == load_stack("torchtitan")


def test_profile_written_before_stacks_keeps_its_software_as_its_own_stack(tmp_path):
    """A calibrated profile or refit from before stacks carries a `software` block: it loads,
    and its block becomes the cluster's own stack (used unless --stack says otherwise)."""
    data = load_cluster("dgx_h100").model_dump()
    data.pop("stack")
    data["software"] = {"flash_attention": False, "grad_overlap": False, "pool_nics": True,
                        "zero_impl": "fsdp2", "framework_memory_bytes": 0,
                        "optimizer_tensor_overhead_s": 1e-4}
    data["sources"]["software.optimizer_tensor_overhead_s"] = "measured"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    c = load_cluster(str(path))
    assert isinstance(c.stack, Stack) and c.stack.attention_kernel == "unfused_softmax"
    assert c.stack.optimizer_tensor_overhead_s == 1e-4
    assert c.stack.sources["optimizer_tensor_overhead_s"] == "measured"
    assert "software.optimizer_tensor_overhead_s" not in c.sources
    assert load_cluster(str(path), stack="torchtitan").stack.name == "torchtitan"


def test_a_profile_with_its_own_stack_uses_it(tmp_path):
    data = load_cluster("dgx_h100", stack="deepspeed").model_dump()
    path = tmp_path / "own.json"
    path.write_text(json.dumps(data))
    assert load_cluster(str(path)).stack.name == "deepspeed"
