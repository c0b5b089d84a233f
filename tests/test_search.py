"""The search: same figures as predict, pruning reasons that are true, a correct Pareto front,
and no crash on any valid input (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.search.search import NO_FIT, hsdp_node, pareto_front, search
from planner.search.space import Space
from planner.transformer import TransformerSpec, load_transformer
from planner.validity import plan_problems


@pytest.fixture(scope="module")
def small_search():
    spec, cluster = load_transformer("llama2-7b"), load_cluster("dgx_a100_80g", num_nodes=2)
    return spec, cluster, search(spec, cluster, 64)


def test_search_figures_equal_predict(small_search):
    """One implementation: the vectorized search and `predict` agree exactly, for the best plan
    and for plans spread through the ranking."""
    spec, cluster, res = small_search
    assert res.fitting > 0 and res.valid > res.fitting
    for i in [0, 1, res.fitting // 2, res.fitting - 1]:
        r = predict(spec, cluster, res.plan(i))
        assert r["step_time_s"] == pytest.approx(res.step_time_s[i], rel=1e-12)
        assert r["memory"]["peak_bytes"] == pytest.approx(res.peak_bytes[i], abs=1)
        assert r["fits"] and res.fits[i]
    r = predict(spec, cluster, res.plan(len(res.plans) - 1))  # a plan that does not fit
    assert r["memory"]["peak_bytes"] == pytest.approx(res.peak_bytes[-1], abs=1)
    assert not r["fits"] and not res.fits[-1] and res.step_time_s[-1] == np.inf


def test_ranking_and_counts(small_search):
    spec, cluster, res = small_search
    space = Space.build(cluster.num_gpus, spec.num_layers, 64, "bf16", None, hsdp_node(cluster))
    assert res.candidates == space.size
    assert res.candidates == res.valid + sum(v for k, v in res.pruned.items() if k != NO_FIT)
    assert res.pruned.get(NO_FIT, 0) == res.valid - res.fitting
    fit_steps = res.step_time_s[:res.fitting]
    assert (np.diff(fit_steps) >= 0).all() and res.fits[:res.fitting].all()
    assert not res.fits[res.fitting:].any()
    assert (res.peak_bytes[:res.fitting] <= cluster.gpu.memory_bytes).all()


def test_kept_plans_are_valid_and_pruned_examples_are_true(small_search):
    spec, cluster, res = small_search
    for i in np.linspace(0, len(res.plans) - 1, 25).astype(int):
        assert plan_problems(res.plan(int(i)), spec, cluster) == []
    assert res.examples  # every rule that pruned something shows one real message
    for reason, msg in res.examples.items():
        assert msg and reason in res.pruned


def test_pareto_front_by_brute_force():
    rng = np.random.default_rng(0)
    step, peak = rng.random(300), rng.random(300)
    front = set(pareto_front(step, peak).tolist())
    for i in range(300):
        dominated = ((step <= step[i]) & (peak <= peak[i]) & ((step < step[i]) | (peak < peak[i])))
        assert (i in front) == (not dominated.any())


@st.composite
def _specs(draw):
    kv = draw(st.sampled_from([1, 2, 4, 8]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    return TransformerSpec(
        name="random", num_layers=draw(st.integers(1, 48)), hidden_size=heads * draw(
            st.sampled_from([32, 64, 128])), num_attention_heads=heads, num_kv_heads=kv,
        ffn_hidden_size=draw(st.integers(16, 8192)), vocab_size=draw(st.integers(2, 200_000)),
        seq_len=draw(st.sampled_from([128, 1000, 2048, 8192])),
        mlp=draw(st.sampled_from(["gelu", "swiglu"])), tied_embeddings=draw(st.booleans()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_specs(), cluster=st.sampled_from(["dgx_a100_40g", "dgx_h100", "mi300x_8"]),
       nodes=st.integers(1, 4), gbs=st.integers(1, 512))
def test_search_never_crashes_on_valid_input(spec, cluster, nodes, gbs):
    """Any valid spec, cluster and batch: plans or reasons, never an exception."""
    c = load_cluster(cluster, nodes)
    res = search(spec, c, gbs)
    # Every candidate is accounted for once: kept, or pruned for its first failing rule.
    assert res.candidates == Space.build(c.num_gpus, spec.num_layers, gbs, "bf16", None,
                                        hsdp_node(c)).size
    assert res.candidates == res.valid + sum(n for k, n in res.pruned.items() if k != NO_FIT)
    assert res.pruned.get(NO_FIT, 0) == res.valid - res.fitting
    assert all(n > 0 for n in res.pruned.values())
    if res.fitting:  # the best plan is one predict accepts, and it fits
        assert plan_problems(res.plan(0), spec, c) == []
        assert predict(spec, c, res.plan(0))["fits"]
    fit = res.step_time_s[:res.fitting]
    assert np.isfinite(fit).all() and (fit > 0).all()
    assert (res.peak_bytes > 0).all()


@settings(max_examples=30, deadline=None)
@given(tp=st.sampled_from([1, 2, 4]), pp=st.sampled_from([1, 2]),
       mbs=st.sampled_from([1, 2]), recompute=st.sampled_from(["none", "selective", "full"]))
def test_more_data_parallel_gpus_never_slow_compute(tp, pp, mbs, recompute):
    """Doubling dp (same global batch) halves each replica's micro-batches: the compute part of
    the step never grows."""
    from planner.plan import Plan
    spec = load_transformer("llama2-7b")
    times = []
    for nodes in (1, 2):
        cluster = load_cluster("dgx_h100", nodes)
        dp = cluster.num_gpus // (tp * pp)
        plan = Plan(dp=dp, tp=tp, pp=pp, micro_batch_size=mbs, global_batch_size=256,
                    recompute=recompute)
        times.append(predict(spec, cluster, plan)["breakdown"]["compute_s"])
    assert times[1] <= times[0] * (1 + 1e-12)


def test_parallel_search_equals_serial(monkeypatch):
    """Blocks shared among processes merge in block order: the same counts, examples, ranking
    and figures as one process."""
    monkeypatch.setattr("planner.search.search.PARALLEL_MIN_CANDIDATES", 0)
    spec, cluster = load_transformer("llama3-8b"), load_cluster("dgx_h100", 2)
    a = search(spec, cluster, 64, block_candidates=20_000)
    b = search(spec, cluster, 64, block_candidates=20_000, workers=2)
    assert (a.candidates, a.valid, a.fitting, a.pruned, a.examples) == (
        b.candidates, b.valid, b.fitting, b.pruned, b.examples)
    assert np.array_equal(a.step_time_s, b.step_time_s) and np.array_equal(a.pareto, b.pareto)
    assert all(np.array_equal(getattr(a.plans, f), getattr(b.plans, f))
               for f in a.plans.__dataclass_fields__)


@pytest.mark.parametrize("name,cluster,nodes,gbs", [
    ("llama3-8b", "dgx_h100", 2, 64), ("tiny-moe", "dgx_h100", 1, 64),
    ("llama2-7b", "mi300x_8", 1, 48)])
def test_factored_pruning_equals_every_rule_on_every_candidate(name, cluster, nodes, gbs):
    """planner/search/prune.py evaluates each rule on rows, columns or alive cells only: the
    same kept candidates, first-failing counts and examples as validity.invalid_masks over the
    whole block."""
    from planner.plan_arrays import S_GPIPE
    from planner.search.prune import REDUNDANT, prune_grid, rules, sides
    from planner.validity import CHECKS, invalid_masks
    spec, c = load_transformer(name), load_cluster(cluster, nodes)
    space = Space.build(c.num_gpus, spec.num_layers, gbs, "bf16", spec.moe, hsdp_node(c))
    rs = None
    for grid in space.grids(gbs, 7):
        rs = rs or rules(c)
        counts, examples = {}, {}
        r, col = prune_grid(spec, c, grid, rs, sides(spec, c, grid, rs), counts, examples)
        P = grid.row_cells(np.arange(grid.shape[0]))
        masks = invalid_masks(spec, c, P)
        masks["zero_without_dp"] = (P.zero > 0) & (P.dp * P.cp == 1)
        masks["gpipe_without_pp"] = (P.schedule == S_GPIPE) & (P.pp == 1)
        masks["zero1_under_fsdp2"] = (P.zero == 1) & (c.stack.zero_impl == "fsdp2") & (
            (not c.stack.sharded_grads_reduce_each_backward)
            | ((P.gbs // (P.dp * P.mbs) == 1) & (P.pp == 1)))
        checks = {ch.key: ch for ch in CHECKS}
        bad, want, want_ex = np.zeros(len(P), bool), {}, {}
        for key, m in masks.items():
            first = m & ~bad
            if first.any():
                s = checks[key].summary if key in checks else REDUNDANT[key][0]
                want[s] = int(first.sum())
                want_ex[s] = (checks[key].message(spec, c, P, int(np.argmax(first)))
                              if key in checks else REDUNDANT[key][1])
            bad |= m
        assert counts == want and examples == want_ex
        assert list(counts) == list(want)  # same order: the tables list them so
        assert np.array_equal(r * grid.shape[1] + col, np.flatnonzero(~bad))


def test_chunked_cost_model_calls_change_no_figure(monkeypatch):
    """The search calls the cost model in chunks (planner/search/steps.py): element-wise, so the
    same figures bit for bit as one call per block."""
    spec, cluster = load_transformer("llama3-8b"), load_cluster("dgx_h100", 2)
    a = search(spec, cluster, 64)
    monkeypatch.setattr("planner.search.steps.CHUNK", 97)
    b = search(spec, cluster, 64)
    assert np.array_equal(a.step_time_s, b.step_time_s)
    assert np.array_equal(a.peak_bytes, b.peak_bytes) and np.array_equal(a.pareto, b.pareto)
    assert all(np.array_equal(getattr(a.plans, f), getattr(b.plans, f))
               for f in a.plans.__dataclass_fields__)


def test_times_shared_per_distinct_shape_change_no_figure(monkeypatch):
    """Block, head and embedding times are computed once per distinct Shapes row and spread
    back (planner/cost/shape_cache.py): the same figures bit for bit as computing them for every
    plan, dense and mixture-of-experts, fp8 and bf16."""
    for model, nodes, gbs in (("llama3-8b", 2, 64), ("tiny-moe", 1, 64)):
        spec, cluster = load_transformer(model), load_cluster("dgx_h100", nodes)
        a = search(spec, cluster, gbs, precision="fp8")
        monkeypatch.setattr("planner.cost.shape_cache.MIN_PLANS", 10**12)  # never shared
        b = search(spec, cluster, gbs, precision="fp8")
        monkeypatch.undo()
        assert len(a.plans) == len(b.plans) > 100
        assert np.array_equal(a.step_time_s, b.step_time_s)
        assert np.array_equal(a.peak_bytes, b.peak_bytes) and np.array_equal(a.pareto, b.pareto)
