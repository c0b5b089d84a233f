"""Tier 1: activation memory (Korthikanti et al. 2022) and model-state memory (ZeRO paper)
against their published formulas and numbers, plus properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cost.evaluate import evaluate
from planner.cost.memory import layer_activation_bytes, model_state_bytes
from planner.cost.step_time import shapes
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.topology import Topology
from planner.transformer import TransformerSpec, load_transformer

GPT = TransformerSpec(name="gpt-175b-shape", num_layers=96, hidden_size=12288,
                      num_attention_heads=96, num_kv_heads=96, ffn_hidden_size=4 * 12288,
                      vocab_size=51200, seq_len=2048, mlp="gelu")


def _act(spec, cluster, **plan):
    P = PlanArrays.from_plans([Plan(dp=1, pp=1, global_batch_size=plan.get(
        "micro_batch_size", 1), **plan)])
    stored, _ = layer_activation_bytes(spec, shapes(cluster, P), P.recompute, flash=False)
    return stored[0]


@pytest.mark.parametrize("b", [1, 4])
def test_korthikanti_eq1_no_parallelism(selene_1024, b):
    """Eq. (1): s b h (34 + 5 a s / h) bytes per layer, 16-bit activations, no parallelism."""
    s, h, a = GPT.seq_len, GPT.hidden_size, GPT.num_attention_heads
    got = _act(GPT, selene_1024, tp=1, micro_batch_size=b, precision="fp16")
    assert got == pytest.approx(s * b * h * (34 + 5 * a * s / h))


@pytest.mark.parametrize("t", [2, 8])
def test_korthikanti_eq2_tensor_parallel(selene_1024, t):
    """Eq. (2): s b h (10 + 24/t + 5 a s / (h t)) with tensor parallelism."""
    s, h, a = GPT.seq_len, GPT.hidden_size, GPT.num_attention_heads
    got = _act(GPT, selene_1024, tp=t, micro_batch_size=1)
    assert got == pytest.approx(s * h * (10 + 24 / t + 5 * a * s / (h * t)))


def test_korthikanti_eq4_eq5_sequence_parallel_and_selective(selene_1024):
    """Eq. (4): s b h / t (34 + 5 a s / h) with tp + sp; eq. (5): 34 s b h / t adding selective
    recompute; section 5: full recompute keeps 2 s b h (divided by t with sp)."""
    s, h, a, t = GPT.seq_len, GPT.hidden_size, GPT.num_attention_heads, 8
    sp = _act(GPT, selene_1024, tp=t, micro_batch_size=1, sequence_parallel=True)
    assert sp == pytest.approx(s * h / t * (34 + 5 * a * s / h))
    sel = _act(GPT, selene_1024, tp=t, micro_batch_size=1, sequence_parallel=True,
               recompute="selective")
    assert sel == pytest.approx(34 * s * h / t)
    full = _act(GPT, selene_1024, tp=t, micro_batch_size=1, recompute="full")
    assert full == pytest.approx(2 * s * h)


def test_zero_paper_figure1_model_states():
    """Rajbhandari et al. 2020, Figure 1: 7.5B parameters on 64 GPUs take 120 GB (baseline),
    31.4 GB (P_os), 16.6 GB (P_os+g), 1.9 GB (P_os+g+p) of model states per GPU."""
    psi = 7.5e9
    expected = {0: 120e9, 1: 31.4e9, 2: 16.6e9, 3: 1.875e9}
    for stage, total in expected.items():
        P = PlanArrays.from_plans([Plan(dp=64, tp=1, pp=1, micro_batch_size=1,
                                        global_batch_size=64, zero_stage=stage)])
        got = sum(v[0] for v in model_state_bytes(P, np.array([psi]), "deepspeed").values())
        assert got == pytest.approx(total, rel=0.005), stage


@settings(max_examples=60, deadline=None)
@given(tp=st.sampled_from([1, 2, 4, 8]), pp=st.sampled_from([1, 2, 4]),
       zero=st.integers(0, 3), recompute=st.sampled_from(["none", "selective", "full"]),
       sp=st.booleans(), sched=st.sampled_from(["1f1b", "gpipe"]), mbs=st.sampled_from([1, 2, 4]))
def test_memory_is_positive_and_monotone_in_micro_batch(tp, pp, zero, recompute, sp, sched, mbs):
    """More sequences per micro-batch never need less memory; no component is negative."""
    spec = load_transformer("llama2-7b")
    cluster = load_cluster("dgx_a100_80g", num_nodes=4)
    dp = 32 // (tp * pp)
    plans = [Plan(dp=dp, tp=tp, pp=pp, micro_batch_size=m, global_batch_size=64 * dp,
                  zero_stage=zero, recompute=recompute, sequence_parallel=sp and tp > 1,
                  schedule=sched) for m in (mbs, 2 * mbs)]
    r = evaluate(spec, cluster, Topology(cluster), PlanArrays.from_plans(plans))
    mem = {k: v for k, v in r.items() if k.startswith("memory.")}
    assert all((v >= 0).all() for v in mem.values())
    assert mem["memory.peak_bytes"][1] >= mem["memory.peak_bytes"][0]
    assert mem["memory.activations_bytes"][1] >= mem["memory.activations_bytes"][0]


def test_no_fitting_plan_has_a_stage_over_capacity(gpt3_175b):
    """Issue 11: GPT-3 175B on 7 DGX A100 80GB nodes at global batch 64, where 96 blocks do not
    divide over 7 (or 14, 28) pipeline chunks and the extra blocks land on ranks 1..k. Every plan
    the search reports as fitting must fit on every one of its pipeline stages (each computed on
    its own here, not through the first / middle / last shortcut the search uses)."""
    from planner.cost.memory import stage_memory
    from planner.search.search import search
    cluster = load_cluster("dgx_a100_80g", num_nodes=7)
    res = search(gpt3_175b, cluster, 64)
    assert res.fitting > 0
    plans = [res.plan(i) for i in range(res.fitting)]
    P = PlanArrays.from_plans(plans)
    sh = shapes(cluster, P)
    uneven = 0
    for s in range(int(P.pp.max())):
        has = P.pp > s
        stage = np.full(len(P), s)
        mem = stage_memory(gpt3_175b, cluster, P, sh, cluster.stack.flash_attention, stage,
                           s == 0, P.pp - 1 == s)["peak_bytes"]
        over = has & (mem > cluster.gpu.memory_bytes)
        assert not over.any(), [(plans[i].model_dump(), s, mem[i] / 2**30)
                                for i in np.flatnonzero(over)[:3]]
    uneven = sum(gpt3_175b.num_layers % (p.pp * p.virtual_pipeline_stages) != 0 for p in plans)
    assert uneven > 0  # the case the check is about is in the set


def test_predicted_peak_near_the_memory_published_runs_report():
    """FlagPerf's 'mem' column (Llama-3 8B, Megatron-Core) and torchtitan's reported reserved
    memory (Llama-3 8B fp8 on H200): each within 20% of the prediction (benchmarks/
    reported_memory.py prints them: +7%, +5%, +1%, -16%, -15%, -16%, -14%). Before fp32
    gradients and torchtitan's op-level checkpointing were modelled they were -31% to +83%."""
    from planner.validation.memory_reports import rows
    got = rows()
    assert len(got) == 7
    for name, reported, predicted, _ in got:
        assert abs(predicted / reported - 1) <= 0.20, (name, reported, predicted)


def test_torchtitan_llama2_70b_selective_op_fits_at_batch_1_not_2():
    """torchtitan docs/performance.md, footnote 1: Llama 2 70B with selective (op) activation
    checkpointing on 64 A100 80GB runs at local batch size 1 and runs out of memory at 2."""
    from planner.validation.memory_reports import oom_case
    assert oom_case() == (True, False)


def test_torchtitan_op_policy_under_tensor_parallelism():
    """torchtitan's op-level policy with tp 4 and sequence parallelism, counted by hand per
    token: the block input h/4, the attention output q/4, the kept matmul outputs q/4 (wq),
    kv/4 (wv), f/4 (w1) and h whole (w2, a row-parallel partial sum), the two reduce-scatter
    outputs 2h/4, in 16 bits; plus the fp32 log-sum-exp per head."""
    spec = load_transformer("llama3-70b")
    cluster = load_cluster("dgx_h100", 1, "torchtitan")
    P = PlanArrays.from_plans([Plan(dp=2, tp=4, pp=1, micro_batch_size=1, global_batch_size=2,
                                    recompute="selective", sequence_parallel=True)])
    sh = shapes(cluster, P)
    stored, _ = layer_activation_bytes(spec, sh, P.recompute, True, "ops_half_matmuls")
    h, q, kv, f, t = 8192, spec.q_dim, spec.kv_dim, 28672, 4
    per_token = 2 * (h / t + q / t + q / t + kv / t + f / t + h + 2 * h / t)
    lse = 4.0 * spec.num_attention_heads / t
    assert stored[0] == pytest.approx(spec.seq_len * (per_token + lse))


def test_op_policy_keeps_every_second_matmul_of_the_mlp_in_forward_order():
    """After the four attention matmuls, torchtitan's policy keeps the MLP's first, third, ...
    matmul outputs: SwiGLU's w1 and w2 (w2 a row-parallel partial sum, whole), GELU's fc1 only;
    with sequence parallelism also the down-projection's reduce-scatter output."""
    from planner.cost.block_activations import op_policy_kept
    cluster = load_cluster("dgx_h100", 1, "torchtitan")
    P = PlanArrays.from_plans([Plan(dp=2, tp=4, pp=1, micro_batch_size=1, global_batch_size=2,
                                    recompute="selective", sequence_parallel=True)])
    sh = shapes(cluster, P)
    swiglu = load_transformer("llama3-70b")
    gelu = swiglu.model_copy(update={"mlp": "gelu"})
    h, f = swiglu.hidden_size, swiglu.ffn_hidden_size
    assert op_policy_kept(swiglu, sh)[1][0] == pytest.approx(f / 4 + h + h / 4)
    assert op_policy_kept(gelu, sh)[1][0] == pytest.approx(f / 4 + h / 4)
