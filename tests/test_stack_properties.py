"""Properties (hypothesis) over random valid specs x clusters x stacks x plans: `predict` never
raises on a valid plan, step time and memory are finite and positive, the error band holds the
point estimate, and more link bandwidth or a faster GPU never makes a plan slower."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from planner.cost.evaluate import predict
from planner.hardware import Cluster, load_cluster, preset_names
from planner.plan import Plan
from planner.stack import stack_names
from planner.transformer import TransformerSpec
from planner.validity import plan_problems

CLUSTERS = preset_names("clusters")
STACKS = list(stack_names())


@st.composite
def specs(draw) -> TransformerSpec:
    heads = draw(st.sampled_from([8, 16, 32]))
    head_dim = draw(st.sampled_from([64, 128]))
    kv = draw(st.sampled_from([h for h in (1, 2, 4, 8, heads) if heads % h == 0]))
    gelu = draw(st.booleans())
    return TransformerSpec(name="random", num_layers=draw(st.integers(2, 48)),
                           hidden_size=heads * head_dim, num_attention_heads=heads,
                           num_kv_heads=heads if gelu else kv,
                           ffn_hidden_size=draw(st.sampled_from([2, 3, 4])) * heads * head_dim,
                           vocab_size=draw(st.integers(1000, 160000)),
                           seq_len=draw(st.sampled_from([512, 2048, 4096, 8192])),
                           mlp="gelu" if gelu else "swiglu", tied_embeddings=draw(st.booleans()))


@st.composite
def cases(draw) -> tuple[TransformerSpec, Cluster, Plan]:
    spec = draw(specs())
    nodes = draw(st.sampled_from([1, 2, 4]))
    cluster = load_cluster(draw(st.sampled_from(CLUSTERS)), nodes, draw(st.sampled_from(STACKS)))
    world = cluster.num_gpus
    tp = draw(st.sampled_from([d for d in (1, 2, 4, 8) if world % d == 0]))
    pp = draw(st.sampled_from([d for d in (1, 2, 4) if (world // tp) % d == 0]))
    cp = draw(st.sampled_from([d for d in (1, 2) if (world // tp // pp) % d == 0]))
    dp = world // (tp * pp * cp)
    mbs = draw(st.sampled_from([1, 2]))
    m = draw(st.sampled_from([1, 2, 4, 8])) * pp
    schedule = draw(st.sampled_from(["1f1b", "gpipe"] + (["interleaved_1f1b"] if pp > 1 else [])))
    passes = draw(st.sampled_from([p for p in (1, 2) if pp > 1 and (m // pp) % p == 0] or [1]))
    plan = Plan(dp=dp, tp=tp, pp=pp, cp=cp, micro_batch_size=mbs,
                global_batch_size=dp * mbs * m, schedule=schedule, pipeline_passes=passes,
                virtual_pipeline_stages=2 if schedule == "interleaved_1f1b" else 1,
                zero_stage=draw(st.integers(0, 3)),
                recompute=draw(st.sampled_from(["none", "selective", "full"])),
                sequence_parallel=tp > 1 and draw(st.booleans()),
                precision=draw(st.sampled_from(["bf16", "fp8"])))
    assume(not plan_problems(plan, spec, cluster))
    return spec, cluster, plan


def _scaled(cluster: Cluster, links: float = 1.0, gpu: float = 1.0) -> Cluster:
    d = cluster.model_dump()
    for tier in ("intra_node", "inter_node"):
        if d[tier] is not None:
            key = "bandwidth_GBps" if tier == "intra_node" else "nic_bandwidth_GBps"
            d[tier][key] *= links
    # A full mesh's GPU pairs are links too (xGMI: 64 GB/s each): scaling the per-GPU total
    # without them would make the mesh slower than the NICs it was faster than.
    if d["intra_node"] is not None and d["intra_node"].get("pair_bandwidth_GBps") is not None:
        d["intra_node"]["pair_bandwidth_GBps"] *= links
    d["gpu"]["hbm_bandwidth_GBps"] *= gpu
    d["gpu"]["peak_tflops"] = {k: (v * gpu if v is not None else None)
                               for k, v in d["gpu"]["peak_tflops"].items()}
    return Cluster.model_validate(d)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_predict_is_finite_positive_and_inside_its_band(case):
    spec, cluster, plan = case
    r = predict(spec, cluster, plan)
    assert math.isfinite(r["step_time_s"]) and r["step_time_s"] > 0
    assert all(math.isfinite(v) and v >= 0 for v in r["breakdown"].values())
    assert r["memory"]["peak_bytes"] > 0
    assert all(v >= 0 for k, v in r["memory"].items())
    low, high = r["step_time_range_s"]
    assert 0 < low <= r["step_time_s"] <= high


@settings(max_examples=40, deadline=None)
@given(cases(), st.floats(1.25, 4.0))
def test_faster_links_or_gpus_never_slow_a_plan(case, k):
    spec, cluster, plan = case
    base = predict(spec, cluster, plan)["step_time_s"]
    assert predict(spec, _scaled(cluster, links=k), plan)["step_time_s"] <= base * (1 + 1e-9)
    assert predict(spec, _scaled(cluster, gpu=k), plan)["step_time_s"] <= base * (1 + 1e-9)


def test_faster_gpu_never_slows_a_small_zero3_plan():
    """The case hypothesis found: a 2-block model under ZeRO-3 (fsdp-compile, dp 8 on one DGX
    A100 40GB) got slower on a faster GPU, because the last micro-batch's backward hid its
    re-gathers and the step's reduce-scatters as if each had the whole backward to itself; they
    share it (planner/cost/zero.py)."""
    spec = TransformerSpec(name="small", num_layers=2, hidden_size=512, num_attention_heads=8,
                           num_kv_heads=2, ffn_hidden_size=2048, vocab_size=1000, seq_len=512,
                           mlp="swiglu", tied_embeddings=False)
    cluster = load_cluster("dgx_a100_40g", 1, "fsdp-compile")
    plan = Plan(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=8, zero_stage=3)
    base = predict(spec, cluster, plan)["step_time_s"]
    for k in (1.25, 2.0, 4.0):
        assert predict(spec, _scaled(cluster, gpu=k), plan)["step_time_s"] <= base * (1 + 1e-9)


def test_faster_gpu_never_slows_a_tp_recompute_zero3_plan():
    """The second case hypothesis found: FSDP2 ZeRO-3 with tp 8 and full recompute on two DGX
    B200 got slower on a 2x GPU, because a block's prefetched gather hid behind its compute
    alone; it runs on through the recomputed forward and the exposed TP collectives too, which
    a faster GPU does not shorten (planner/cost/zero.py fsdp2_overlaps)."""
    spec = TransformerSpec(name="random", num_layers=16, hidden_size=1024, num_attention_heads=8,
                           num_kv_heads=8, ffn_hidden_size=2048, vocab_size=1000, seq_len=512,
                           mlp="gelu", tied_embeddings=False)
    cluster = load_cluster("dgx_b200", 2, "fsdp-compile")
    for precision, m in (("bf16", 4), ("fp8", 4), ("bf16", 8)):
        plan = Plan(dp=2, tp=8, pp=1, micro_batch_size=1, global_batch_size=2 * m, zero_stage=3,
                    recompute="full", precision=precision)
        assert not plan_problems(plan, spec, cluster)
        base = predict(spec, cluster, plan)["step_time_s"]
        for k in (1.25, 2.0, 4.0):
            faster = predict(spec, _scaled(cluster, gpu=k), plan)["step_time_s"]
            assert faster <= base * (1 + 1e-9), (precision, m, k, base, faster)
