"""`paraplan export` (planner/export/): the best plan for Llama-3 70B on 64 H100s as Megatron-LM
arguments, a torchtitan TOML and a DeepSpeed JSON. The text is always parsed here (shlex +
argparse, tomllib, json); where the framework installs (`pip install -e '.[frameworks]'`), its own
configuration code parses it too and the values must round-trip. Otherwise those tests skip."""

from __future__ import annotations

import argparse
import json
import shlex
import tomllib
from unittest import mock

import pytest

from planner.cli import main
from planner.export import TARGETS, export, export_problems
from planner.export.common import chunk_layers
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.schema import InputError
from planner.search.search import search
from planner.stack import load_stack
from planner.transformer import load_transformer

SPEC = load_transformer("llama3-70b")


@pytest.fixture(scope="module")
def ranked():
    return search(SPEC, load_cluster("dgx_h100", 8), 512)


@pytest.fixture(scope="module")
def best(ranked) -> Plan:
    return ranked.plan(0)


@pytest.fixture(scope="module")
def best_for_deepspeed(ranked) -> Plan:
    """The best-ranked fitting plan DeepSpeed can run (the overall best may use cp or ZeRO-2/3
    with pipeline stages, which DeepSpeed cannot)."""
    for i in range(ranked.fitting):
        plan = ranked.plan(i)
        if not export_problems(plan, SPEC, "deepspeed"):
            return plan
    pytest.fail("no fitting plan DeepSpeed can run")


def _megatron_args(text: str) -> argparse.Namespace:
    """A small argparse of the flags the Megatron export emits (core_v0.15 names)."""
    p = argparse.ArgumentParser()
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                 "--context-parallel-size", "--micro-batch-size", "--global-batch-size",
                 "--num-layers", "--hidden-size", "--num-attention-heads", "--num-query-groups",
                 "--ffn-hidden-size", "--seq-length", "--max-position-embeddings",
                 "--vocab-size", "--make-vocab-size-divisible-by", "--recompute-num-layers",
                 "--num-layers-per-virtual-pipeline-stage", "--initial-loss-scale",
                 "--num-distributed-optimizer-instances"):
        p.add_argument(flag, type=int)
    for flag in ("--cp-comm-type", "--pipeline-model-parallel-layout",
                 "--data-parallel-sharding-strategy", "--recompute-granularity",
                 "--recompute-method", "--fp8-format", "--fp8-recipe", "--normalization",
                 "--position-embedding-type", "--attention-backend"):
        p.add_argument(flag)
    for flag in ("--attention-dropout", "--hidden-dropout"):
        p.add_argument(flag, type=float)
    for flag in ("--sequence-parallel", "--use-distributed-optimizer", "--use-megatron-fsdp",
                 "--overlap-grad-reduce", "--overlap-param-gather", "--tp-comm-overlap",
                 "--bf16", "--fp16", "--async-save", "--group-query-attention", "--swiglu",
                 "--disable-bias-linear", "--untie-embeddings-and-output-weights",
                 "--use-tp-pp-dp-mapping"):
        p.add_argument(flag, action="store_true")
    # One flag per line with `\` continuations, as a shell reads it; unknown flags fail here.
    return p.parse_args(shlex.split(text.replace("\\\n", " ")))


def _check_megatron(plan: Plan, ns: argparse.Namespace) -> None:
    assert (ns.tensor_model_parallel_size, ns.pipeline_model_parallel_size,
            ns.context_parallel_size) == (plan.tp, plan.pp, plan.cp)
    assert (ns.micro_batch_size, ns.global_batch_size) == (plan.micro_batch_size,
                                                           plan.global_batch_size)
    assert ns.sequence_parallel == plan.sequence_parallel
    assert ns.use_distributed_optimizer == (plan.zero_stage == 1)
    assert ns.use_megatron_fsdp == (plan.zero_stage >= 2)
    hybrid = plan.zero_stage >= 1 and plan.zero_shard < plan.dp
    assert ns.num_distributed_optimizer_instances == (plan.dp // plan.zero_shard if hybrid
                                                      else None)
    assert ns.recompute_granularity == (None if plan.recompute == "none" else plan.recompute)
    assert ns.bf16 == (plan.precision in ("bf16", "fp8")) and ns.fp16 == (plan.precision == "fp16")
    assert (ns.num_layers, ns.hidden_size, ns.num_query_groups) == (80, 8192, 8)


def test_megatron_best_plan_parses(best):
    text, unexpressed = export(best, SPEC, load_stack("megatron-core"), "megatron")
    _check_megatron(best, _megatron_args(text))
    assert all(isinstance(u, str) and u for u in unexpressed)


def _megatron_core_configs(ns: argparse.Namespace):
    """megatron-core's ModelParallelConfig / TransformerConfig from the flags, by the field names
    core_v0.16 generates the same flags from."""
    torch = pytest.importorskip("torch")
    core = pytest.importorskip("megatron.core", reason="megatron-core not installed "
                               "(pip install -e '.[frameworks]')", exc_type=ImportError)
    from megatron.core.transformer import TransformerConfig
    dtype = torch.bfloat16 if ns.bf16 else torch.float16 if ns.fp16 else torch.float32
    parallel = dict(tensor_model_parallel_size=ns.tensor_model_parallel_size,
                    pipeline_model_parallel_size=ns.pipeline_model_parallel_size,
                    context_parallel_size=ns.context_parallel_size,
                    sequence_parallel=ns.sequence_parallel, bf16=ns.bf16, fp16=ns.fp16,
                    params_dtype=dtype, pipeline_dtype=dtype)
    mp = core.ModelParallelConfig(**parallel)
    tc = TransformerConfig(
        **parallel, num_layers=ns.num_layers, hidden_size=ns.hidden_size,
        num_attention_heads=ns.num_attention_heads, num_query_groups=ns.num_query_groups,
        ffn_hidden_size=ns.ffn_hidden_size, gated_linear_unit=ns.swiglu,
        normalization=ns.normalization, add_bias_linear=not ns.disable_bias_linear,
        recompute_granularity=ns.recompute_granularity, recompute_method=ns.recompute_method,
        recompute_num_layers=ns.recompute_num_layers, fp8=ns.fp8_format,
        pipeline_model_parallel_layout=ns.pipeline_model_parallel_layout,
        virtual_pipeline_model_parallel_size=(
            ns.num_layers // (ns.pipeline_model_parallel_size
                              * ns.num_layers_per_virtual_pipeline_stage)
            if ns.num_layers_per_virtual_pipeline_stage else None))
    return mp, tc


UNEVEN_INTERLEAVED = {"dp": 1, "tp": 2, "pp": 8, "cp": 4, "micro_batch_size": 1,
                      "global_batch_size": 512, "recompute": "selective",
                      "schedule": "interleaved_1f1b", "virtual_pipeline_stages": 3,
                      "sequence_parallel": True}  # 80 blocks in 24 chunks: uneven


HYBRID = {"dp": 8, "tp": 8, "pp": 1, "cp": 1, "micro_batch_size": 1, "global_batch_size": 512,
          "zero_stage": 1, "dp_shard": 2, "recompute": "full", "sequence_parallel": True,
          "schedule": "1f1b", "virtual_pipeline_stages": 1}  # 8 nodes: 4 instances of 2


@pytest.mark.parametrize("update", [{}, {"recompute": "full", "zero_stage": 1},
                                    UNEVEN_INTERLEAVED, HYBRID,
                                    {**HYBRID, "zero_stage": 3}])
def test_megatron_core_round_trip(best, update):
    plan = Plan(**{**best.to_json_dict(), **update})
    text, _ = export(plan, SPEC, load_stack("megatron-core"), "megatron")
    ns = _megatron_args(text)
    _check_megatron(plan, ns)
    mp, tc = _megatron_core_configs(ns)
    if plan.zero_shard < plan.dp:  # hybrid sharding: megatron-core's DDP config takes it
        from megatron.core.distributed import DistributedDataParallelConfig
        ddp = DistributedDataParallelConfig(
            use_distributed_optimizer=True,
            num_distributed_optimizer_instances=ns.num_distributed_optimizer_instances)
        assert ddp.num_distributed_optimizer_instances * plan.zero_shard == plan.dp
    assert (mp.tensor_model_parallel_size, mp.pipeline_model_parallel_size,
            mp.context_parallel_size, mp.sequence_parallel) == (plan.tp, plan.pp, plan.cp,
                                                                plan.sequence_parallel)
    assert tc.num_query_groups == SPEC.num_kv_heads and tc.gated_linear_unit
    assert tc.recompute_granularity == (None if plan.recompute == "none" else plan.recompute)
    assert (tc.virtual_pipeline_model_parallel_size or 1) == plan.virtual_pipeline_stages
    if ns.pipeline_model_parallel_layout:  # an uneven split: each chunk's blocks as planned
        assert tc.pipeline_model_parallel_layout is not None
        assert ns.pipeline_model_parallel_layout.count("|") + 1 == len(chunk_layers(plan, SPEC))


def test_torchtitan_best_plan_parses(best):
    text, unexpressed = export(best, SPEC, load_stack("torchtitan"), "torchtitan")
    cfg = tomllib.loads(text)
    par = cfg["parallelism"]
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"],
            par["context_parallel_degree"]) == (best.tp, best.pp, best.cp)
    dp = par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"]
    assert dp == best.dp and cfg["training"]["global_batch_size"] == best.global_batch_size
    assert cfg["activation_checkpoint"]["mode"] == best.recompute
    assert cfg["model"]["flavor"] == "70B"
    if best.pp > 1:
        parts = par["module_fqns_per_model_part"]
        assert [sum(n.startswith("layers.") for n in p) for p in parts] == chunk_layers(best,
                                                                                       SPEC)
    assert all(isinstance(u, str) for u in unexpressed)


@pytest.fixture(params=["best", "hybrid"])
def titan_plan(request, best) -> Plan:
    """The best plan, and a hybrid-sharding one (dp 16 of 2 replicas x 8 shards, zero 3)."""
    if request.param == "best":
        return best
    return Plan(**{**best.to_json_dict(), "dp": 16, "tp": 4, "pp": 1, "cp": 1,
                   "virtual_pipeline_stages": 1, "schedule": "1f1b", "zero_stage": 3,
                   "dp_shard": 8, "micro_batch_size": 1, "sequence_parallel": False})


def test_torchtitan_config_manager_round_trip(titan_plan, tmp_path):
    best = titan_plan
    pytest.importorskip("torchtitan.config", reason="torchtitan 0.2.2 (and triton, which it "
                        "imports) not installed (pip install -e '.[frameworks]')",
                        exc_type=ImportError)
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims
    text, _ = export(best, SPEC, load_stack("torchtitan"), "torchtitan")
    path = tmp_path / "job.toml"
    path.write_text(text)
    job = ConfigManager().parse_args(["--job.config_file", str(path)])
    par = job.parallelism
    dims = ParallelDims(dp_replicate=par.data_parallel_replicate_degree,
                        dp_shard=par.data_parallel_shard_degree, cp=par.context_parallel_degree,
                        tp=par.tensor_parallel_degree, pp=par.pipeline_parallel_degree, ep=1,
                        etp=1, world_size=best.world_size)
    assert (dims.tp, dims.pp, dims.cp, dims.dp_replicate * dims.dp_shard) == (
        best.tp, best.pp, best.cp, best.dp)
    hybrid = best.zero_stage >= 1 and best.zero_shard < best.dp
    assert (dims.dp_shard, dims.dp_replicate) == ((best.zero_shard, best.dp // best.zero_shard)
                                                  if hybrid else (dims.dp_shard, 1))
    assert job.training.global_batch_size == best.global_batch_size
    assert job.training.seq_len == SPEC.seq_len
    assert job.activation_checkpoint.mode == best.recompute
    assert job.training.mixed_precision_param == "bfloat16"


def test_deepspeed_refuses_what_it_cannot_run(best):
    found = export_problems(best, SPEC, "deepspeed")
    if best.cp > 1 or (best.pp > 1 and best.zero_stage >= 2):
        assert found
        with pytest.raises(InputError, match="deepspeed cannot run this plan"):
            export(best, SPEC, load_stack("deepspeed"), "deepspeed")


def test_deepspeed_config_round_trip(best_for_deepspeed):
    plan = best_for_deepspeed
    text, unexpressed = export(plan, SPEC, load_stack("deepspeed"), "deepspeed")
    cfg = json.loads(text)
    assert cfg["train_batch_size"] == plan.global_batch_size
    assert (cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"]
            * plan.dp) == plan.global_batch_size
    assert cfg["zero_optimization"]["stage"] == plan.zero_stage
    pytest.importorskip("deepspeed", reason="deepspeed not installed "
                        "(pip install -e '.[frameworks]')", exc_type=ImportError)
    import deepspeed.comm as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    class DataParallel:  # the data-parallel size Megatron-DeepSpeed's mpu reports
        def get_data_parallel_world_size(self) -> int:
            return plan.dp

    with mock.patch.object(dist, "get_rank", return_value=0):
        ds = DeepSpeedConfig(cfg, mpu=DataParallel())
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu,
            ds.gradient_accumulation_steps) == (plan.global_batch_size, plan.micro_batch_size,
                                                plan.num_micro_batches)
    assert ds.zero_optimization_stage == plan.zero_stage
    assert ds.bfloat16_config.enabled == (plan.precision == "bf16")


def test_unexpressed_fields_are_reported():
    plan = Plan(dp=4, tp=8, pp=2, micro_batch_size=1, global_batch_size=64, zero_stage=1,
                schedule="interleaved_1f1b", virtual_pipeline_stages=2)
    _, unexpressed = export(plan, SPEC, load_stack("deepspeed"), "deepspeed")
    assert any("interleaving" in u for u in unexpressed)
    _, unexpressed = export(plan, SPEC, load_stack("torchtitan"), "torchtitan")
    assert any(u.startswith("zero_stage=1") for u in unexpressed)
    _, unexpressed = export(plan.model_copy(update={"schedule": "gpipe",
                                                    "virtual_pipeline_stages": 1}),
                            SPEC, load_stack("megatron-core"), "megatron")
    assert any(u.startswith("schedule=gpipe") for u in unexpressed)


def test_cli_exports_all_three(tmp_path, capsys, best):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**best.to_json_dict(), "transformer": SPEC.model_dump(),
                                "cluster": "dgx_h100"}))
    for target in ("megatron", "torchtitan"):
        out = tmp_path / f"{target}.txt"
        assert main(["export", "--plan", str(plan), "--to", target, "--out", str(out)]) == 0
        stack = load_stack("megatron-core" if target == "megatron" else target)
        assert out.read_text() == export(best, SPEC, stack, target)[0]
        assert "launch:" in capsys.readouterr().err
    assert main(["export", "--plan", str(plan), "--to", "megatron"]) == 0
    _check_megatron(best, _megatron_args(capsys.readouterr().out))


@pytest.mark.parametrize("argv, needle", [
    (["--to", "slurm"], "unknown export target 'slurm'; accepted: megatron, torchtitan"),
    (["--to", "deepspeed"], "deepspeed cannot run this plan: cp=2"),
    (["--to", "megatron", "-t", "no-such-model"], "unknown transformer preset"),
])
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    plan = json.dumps({"dp": 8, "tp": 2, "pp": 2, "cp": 2, "micro_batch_size": 1,
                       "global_batch_size": 64})
    assert main(["export", "--plan", plan, "-t", "llama3-70b"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_plan_without_transformer_needs_t(capsys):
    plan = json.dumps({"dp": 1, "tp": 1, "pp": 1, "micro_batch_size": 1, "global_batch_size": 1})
    assert main(["export", "--plan", plan, "--to", "megatron"]) == 2
    assert "--transformer is required" in capsys.readouterr().err


def test_targets_registered():
    assert set(TARGETS) == {"megatron", "torchtitan", "deepspeed"}
    for module in TARGETS.values():
        assert callable(module.problems) and callable(module.render)
