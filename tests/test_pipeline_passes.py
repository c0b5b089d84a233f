"""Pipeline passes (Plan.pipeline_passes): a step that runs its micro-batches as several
pipeline schedules, as torchtitan and NeMo AutoModel do when they accumulate gradients around
torch.distributed.pipelining. What the cost model does with them (a bubble and a fill per pass,
FSDP2's and DDP's gradient sync at each schedule's end), the checks on bad plans, the export,
and the shipped runs that set them. (Executor equivalence with one process is in
tests/test_executor_equivalence.py and tests/test_moe_executor.py.)"""

from __future__ import annotations

import pytest

from tests.conftest import predict_cli

from planner.cost.evaluate import predict
from planner.export import export
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.stack import load_stack
from planner.transformer import load_transformer
from planner.validity import plan_problems

SPEC = load_transformer("llama3-8b")
PP4 = dict(dp=2, tp=1, pp=4, micro_batch_size=1, global_batch_size=32, recompute="full")


def _predict(stack: str, **changes) -> dict:
    cluster = load_cluster("dgx_h100", 1, load_stack(stack))
    return predict(SPEC, cluster, Plan(**{**PP4, **changes}))


@pytest.mark.parametrize("schedule,v", [("1f1b", 1), ("interleaved_1f1b", 2)])
def test_each_pass_pays_its_own_bubble_and_fill(schedule, v):
    one = _predict("megatron-core", schedule=schedule, virtual_pipeline_stages=v)
    two = _predict("megatron-core", schedule=schedule, virtual_pipeline_stages=v,
                   pipeline_passes=2)
    b1, b2 = one["breakdown"], two["breakdown"]
    assert b1["compute_s"] == pytest.approx(b2["compute_s"], rel=1e-12)
    assert b1["bubble_s"] > 0 and b2["bubble_s"] == pytest.approx(2 * b1["bubble_s"], rel=1e-9)
    # p2p slots: m v + passes (p - 1): three more chunk slots on the critical path.
    m = PP4["global_batch_size"] // PP4["dp"]
    hop = b1["pp_comm_s"] / (m * v + 3)
    assert b2["pp_comm_s"] == pytest.approx(hop * (m * v + 6), rel=1e-9)
    assert two["step_time_s"] > one["step_time_s"]


def test_fsdp2_reduces_and_regathers_at_each_schedules_end():
    """torchtitan (FSDP2, ZeRO-3): PipelineStage.backward_maybe_with_nosync syncs on each
    schedule's last backward, so two schedules reduce-scatter twice."""
    one = _predict("torchtitan", zero_stage=3)["breakdown"]["dp_comm_s"]
    two = _predict("torchtitan", zero_stage=3, pipeline_passes=2)["breakdown"]["dp_comm_s"]
    assert two > one > 0
    # Without overlap (the same stack, grad_overlap off) every extra call is exposed: the
    # second schedule adds one forward gather and one reduce-scatter of every unit.
    from planner.cost.zero import fsdp2_calls
    from planner.plan_arrays import PlanArrays
    st = load_stack("torchtitan")
    plans = PlanArrays.from_plans([Plan(**{**PP4, "zero_stage": 3, "pipeline_passes": n})
                                   for n in (1, 2)])
    fwd, gathers, scatters = fsdp2_calls(st, plans)
    m = PP4["global_batch_size"] // PP4["dp"]
    assert list(fwd) == [1, 2] and list(scatters) == [1, 2] and list(gathers) == [1 + m, 2 + m]


def test_replicated_gradients_sync_once_a_step():
    """zero_stage 0: the gradient all-reduce runs once a step however many passes (this
    executor all-reduces after the last pass; Megatron-LM and DeepSpeed run one schedule), so
    without overlap (Megatron-LM 2021) the exposed sync does not move."""
    one = _predict("megatron-lm-2021")["breakdown"]["dp_comm_s"]
    two = _predict("megatron-lm-2021", pipeline_passes=2)["breakdown"]["dp_comm_s"]
    assert one > 0 and two == pytest.approx(one, rel=1e-12)


def test_passes_hold_no_more_activations():
    one = _predict("megatron-core", schedule="gpipe")
    two = _predict("megatron-core", schedule="gpipe", pipeline_passes=2)
    # GPipe holds every micro-batch of its schedule: half as many per pass.
    assert two["memory"]["activations_bytes"] < one["memory"]["activations_bytes"]


@pytest.mark.parametrize("changes,words", [
    ({"pp": 1, "dp": 8, "pipeline_passes": 2}, "needs pp >= 2"),
    ({"pipeline_passes": 3}, "not divisible by pipeline_passes=3"),
    ({"pipeline_passes": 8}, "at least pp=4 micro-batches per schedule, got 2"),
    ({"pipeline_passes": 8, "schedule": "interleaved_1f1b", "virtual_pipeline_stages": 2},
     "micro-batches per schedule (2) to be a multiple of pp=4"),
])
def test_bad_passes_say_why(changes, words):
    plan = Plan(**{**PP4, **changes})
    problems = plan_problems(plan, SPEC, load_cluster("dgx_h100", 1))
    assert any(words in p for p in problems), problems


def test_cli_rejects_zero_passes_in_one_line():
    out = predict_cli({**PP4, "pipeline_passes": 0})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pipeline_passes" in lines[0], out.stderr


def test_export_runs_one_schedule_per_pass_in_torchtitan_and_says_so_elsewhere():
    plan = Plan(**{**PP4, "zero_stage": 3, "pipeline_passes": 2})
    toml, _ = export(plan, SPEC, load_stack("torchtitan"), "torchtitan")
    # 32 sequences over dp 2 in 2 schedules: 8 per schedule, torchtitan accumulates 2.
    assert "local_batch_size = 8" in toml
    _, notes = export(plan, SPEC, load_stack("megatron-core"), "megatron")
    assert any("pipeline_passes=2" in n for n in notes), notes


def test_shipped_automodel_runs_take_their_tables_gradient_accumulation():
    """NeMo AutoModel's table states LBS 8 and GA 4 (DeepSeek-V3, 1,024 GPUs) and GA 2
    (Kimi-K2): one schedule of 8 micro-batches per accumulation step
    (planner/validation/plan_map.json)."""
    from planner.validation import load_runs, run_published_plan, shipped_set_path
    runs = {r.name: r for r in load_runs(shipped_set_path("moe"))}
    got = {n: run_published_plan(r) for n, r in runs.items() if n.startswith("automodel")}
    assert got["automodel-deepseek_v3-1024gpu-dgx_h100-bf16-pp4ep64"].pipeline_passes == 4
    assert got["automodel-kimi_k2-256gpu-dgx_h100-bf16-pp8ep32"].pipeline_passes == 2
    for plan in got.values():
        if plan.pp > 1:
            assert plan.micro_batches_per_pass == 8
        else:
            assert plan.pipeline_passes == 1
