"""Host (CPU) launch time (planner/cost/host.py): hidden behind big blocks, the floor of small
ones, larger on Grace hosts and eager stacks, and one launch gap per dropless MoE sync."""

from __future__ import annotations

import pytest

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.stack import load_stack
from planner.transformer import load_transformer

SMALL = dict(dp=1, tp=8, pp=1, micro_batch_size=1, global_batch_size=8, precision="bf16")


def _run(model: str, cluster: str, stack: str, nodes: int = 1, **plan):
    c = load_cluster(cluster, nodes, stack)
    return predict(load_transformer(model), c, Plan(**plan)), c


def test_big_blocks_hide_the_host_time():
    """Llama-3 70B, tp 8, 8k tokens a micro-batch: ms of GPU work per block against ~0.5 ms
    of launches; the CPU stays ahead and nothing of it shows."""
    r, _ = _run("llama3-70b", "dgx_h100", "megatron-core", 1, dp=1, tp=8, pp=1,
                micro_batch_size=1, global_batch_size=8, precision="bf16")
    assert r["breakdown"]["host_s"] == 0.0


def test_a_small_block_takes_the_hosts_time():
    """GPT-3 1.3B at tp 8, 2,048 tokens: each block's GPU work is tens of microseconds, so the
    block takes what the CPU needs to launch it, and the step at least micro-batches x blocks x
    (forward + backward launches, with the four TP collectives) x host_op_s."""
    r, c = _run("gpt3-1.3b", "gb200_nvl72", "megatron-core", **SMALL)
    st, spec = c.stack, load_transformer("gpt3-1.3b")
    floor = (8 * spec.num_layers * (st.block_host_ops_fwd + st.block_host_ops_bwd + 4)
             * c.host_op_s)
    assert r["breakdown"]["host_s"] > r["breakdown"]["compute_s"]
    assert r["step_time_s"] >= floor
    assert r["step_time_s"] < floor * 1.5  # the rest: embedding, head, optimizer, TP comm


def test_grace_hosts_and_eager_stacks_launch_slower():
    """Grace's CPU takes 37 us per op where the DGX H100's x86 takes 13.5 (TE issue #2053);
    eager torchtitan launches 114 ops a block, compiled torchtitan 35, Megatron-Core 37."""
    grace, c = _run("gpt3-1.3b", "gb200_nvl72", "megatron-core", **SMALL)
    x86_host = load_cluster("dgx_h100").host_op_s
    x86 = predict(load_transformer("gpt3-1.3b"), c.model_copy(update={"host_op_s": x86_host}),
                  Plan(**SMALL))
    assert grace["step_time_s"] > 1.5 * x86["step_time_s"]
    assert grace["breakdown"]["host_s"] > 2 * x86["breakdown"]["host_s"]
    eager, _ = _run("gpt3-1.3b", "gb200_nvl72", "torchtitan", **SMALL)
    compiled, _ = _run("gpt3-1.3b", "gb200_nvl72", "torchtitan-compile", **SMALL)
    assert eager["breakdown"]["host_s"] > 2 * compiled["breakdown"]["host_s"]
    assert eager["step_time_s"] > compiled["step_time_s"]


@pytest.mark.parametrize("capacity", [None, 1.0])
def test_each_dropless_moe_sync_costs_one_launch(capacity):
    """Qwen3-30B-A3B, ep 8 on one DGX H100: the GPU work hides every launch, but each dropless
    MoE block's device-to-host read of its token counts (Megatron-Core's dispatcher) empties
    the CPU's queue: one launch gap per MoE block per micro-batch. A capacity factor sizes the
    dispatch without the read, and the gap goes."""
    spec = load_transformer("qwen3-30b-a3b")
    moe = spec.moe.model_copy(update={"capacity_factor": capacity})
    spec = spec.model_copy(update={"moe": moe})
    c = load_cluster("dgx_h100", 1, "megatron-core")
    plan = Plan(dp=8, tp=1, pp=1, ep=8, micro_batch_size=2, global_batch_size=32,
                precision="bf16")
    r = predict(spec, c, plan)
    m = 32 // (8 * 2)
    gaps = m * spec.num_layers * c.stack.moe_host_syncs * c.host_op_s
    assert r["breakdown"]["host_s"] == pytest.approx(gaps if capacity is None else 0.0)


def test_cpu_profiles_model_no_host_term():
    """A calibrated CPU profile's ranks run the ops themselves (their dispatch is in the GPU
    profile's kernel_overhead_s): host_op_s defaults to 0 and nothing is added."""
    c = load_cluster("dgx_h100", 1, "megatron-core").model_copy(update={"host_op_s": 0.0})
    r = predict(load_transformer("gpt3-1.3b"), c, Plan(**SMALL))
    assert r["breakdown"]["host_s"] == 0.0


def test_stack_counts_are_read_from_the_stack():
    """Halving a stack's launch counts halves a host-bound block's host floor."""
    base = load_stack("torchtitan")
    half = base.model_copy(update={"block_host_ops_fwd": base.block_host_ops_fwd / 2,
                                   "block_host_ops_bwd": base.block_host_ops_bwd / 2})
    spec, plan = load_transformer("gpt3-1.3b"), Plan(**SMALL)
    full_t = predict(spec, load_cluster("gb200_nvl72", 1, base), plan)["breakdown"]["host_s"]
    half_t = predict(spec, load_cluster("gb200_nvl72", 1, half), plan)["breakdown"]["host_s"]
    assert half_t < 0.6 * full_t


def test_predict_says_when_a_plan_is_host_bound(capsys, tmp_path):
    """The human output names a host-bound plan and what shortens it; a big-block plan gets no
    such line."""
    from planner.cli import main
    small = tmp_path / "plan.json"
    small.write_text('{"dp": 1, "tp": 8, "pp": 1, "micro_batch_size": 1, '
                     '"global_batch_size": 8}')
    assert main(["predict", "-t", "gpt3-1.3b", "-c", "gb200_nvl72", "-n", "1",
                 "--plan", str(small)]) == 0
    out = capsys.readouterr().out
    assert "host-bound" in out and "CUDA graphs" in out
    assert main(["predict", "-t", "llama3-70b", "-c", "dgx_h100", "-n", "1",
                 "--plan", str(small)]) == 0
    assert "host-bound" not in capsys.readouterr().out
