"""The search's speed-ups change no figure: terms computed once per group of plans and spread
back (planner/cost/shape_cache.py on_groups), the peak-only memory pass (planner/cost/peak.py),
pruning on column classes, the merge's sort, the plans kept as indices
(planner/search/indexed.py), the GPU-independent part shared between searches
(planner/search/shared.py) and the estimate's task split are held here against the direct
computation, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.cost import shape_cache
from planner.cost.evaluate import evaluate, peak_memory
from planner.cost.memory import memory_breakdown
from planner.cost.step_time import shapes
from planner.hardware import load_cluster
from planner.plan_arrays import G_HIER, G_PS, G_TREE, PlanArrays
from planner.search.indexed import SpacePlans
from planner.search.prune import prune_grid, rules, sides
from planner.search.search import search
from planner.search.shared import shared_space
from planner.search.space import Space
from planner.search.steps import first_in_order, sort_order
from planner.stack import load_stack
from planner.topology import Topology
from planner.transformer import load_transformer


def _valid_plans(spec, cluster, gbs: int, precision: str, per_block: int = 60_000) -> PlanArrays:
    """The valid candidates of the first blocks of a search's space."""
    space = Space.build(cluster.num_gpus, spec.num_layers, gbs, precision, spec.moe)
    rs, parts = rules(cluster), []
    for i, grid in enumerate(space.grids(gbs, max(1, per_block // space.per_layout))):
        if i == 3:
            break
        r, c = prune_grid(spec, cluster, grid, rs, sides(spec, cluster, grid, rs), {}, {})
        parts.append(grid.cells(r, c))
    return PlanArrays(**{f: np.concatenate([getattr(p, f) for p in parts])
                         for f in PlanArrays.__dataclass_fields__})


def _mixed(spec, cluster) -> PlanArrays:
    """Plans of two batches and every precision the GPU runs, with some ring plans switched to
    tree, hierarchical and parameter-server gradient sync: fields a search holds constant vary
    here, so a grouped term reading one its group key misses would show."""
    precisions = [p for p in ("bf16", "fp8", "fp32") if cluster.gpu.peak_flops(p)]
    parts = [_valid_plans(spec, cluster, gbs, p) for gbs in (64, 128) for p in precisions]
    P = PlanArrays(**{f: np.concatenate([getattr(p, f) for p in parts])
                      for f in PlanArrays.__dataclass_fields__})
    rng = np.random.default_rng(0)
    gs = rng.choice([0, G_TREE, G_HIER], len(P))
    ps = (P.tp * P.pp * P.cp == 1) & (P.zero == 0) & (P.ep * P.etp == 1) & (rng.random(len(P)) < .5)
    gs = np.where(ps, G_PS, gs)
    servers = np.where(ps, np.minimum(P.dp * P.cp, rng.integers(1, 5, len(P))), 0)
    return PlanArrays(**{**{f: getattr(P, f) for f in PlanArrays.__dataclass_fields__},
                         "grad_sync": gs, "ps_servers": servers,
                         "ps_placement": rng.integers(0, 2, len(P)) * ps})


@pytest.mark.parametrize("name,cluster,nodes,stack", [
    ("llama3-8b", "dgx_h100", 2, None), ("tiny-moe", "dgx_h100", 2, None),
    ("llama3-8b", "dgx_h100", 2, "torchtitan"), ("tiny-moe", "dgx_h100", 2, "nemo-automodel-flex"),
    ("tiny-moe", "dgx_h100", 2, "megatron-core-deepep-overlap"),
    ("gpt3-1.3b", "dgx_a100_80g", 2, "deepspeed"), ("llama2-7b", "mi300x_8", 1, "fsdp")])
def test_grouped_cost_model_equals_every_plan(monkeypatch, name, cluster, nodes, stack):
    """evaluate() and peak_memory() with the terms shared per group equal the direct call on
    every plan (MIN_PLANS huge: nothing shared), values and dtypes; and the peak-only pass
    equals memory_breakdown's peak."""
    spec = load_transformer(name)
    c = load_cluster(cluster, nodes, stack=load_stack(stack)) if stack else load_cluster(
        cluster, nodes)
    P, topo = _mixed(spec, c), Topology(c)
    assert len(P) > 1000
    shared, peak = evaluate(spec, c, topo, P.take(slice(None))), peak_memory(spec, c, P)
    monkeypatch.setattr(shape_cache, "MIN_PLANS", 10**12)
    direct = evaluate(spec, c, topo, P.take(slice(None)))
    assert shared.keys() == direct.keys()
    for k, v in direct.items():
        assert v.dtype == shared[k].dtype and np.array_equal(v, shared[k]), k
    whole = memory_breakdown(spec, c, P, shapes(c, P), c.stack.flash_attention)["peak_bytes"]
    assert np.array_equal(peak, whole) and np.array_equal(peak, direct["memory.peak_bytes"])


def test_sort_order_is_lexsort():
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 5000):
        step = rng.choice([0.0, -0.0, 1.0, 2.5, np.inf], n) + rng.integers(0, 3, n) * 0.25
        peak = rng.choice([1.0, 2.0, 3.0], n)
        fits = rng.random(n) < 0.7
        want = np.lexsort((peak, step, ~fits))
        assert np.array_equal(sort_order(step, peak, fits), want)
        if n:
            step[::5], peak[1::7] = np.nan, np.nan
            assert np.array_equal(sort_order(step, peak, fits), np.lexsort((peak, step, ~fits)))


def test_first_in_order_is_sort_orders_first():
    rng = np.random.default_rng(4)
    for n in (0, 1, 2, 7, 5000):
        for fit_rate in (0.0, 0.01, 0.7):
            step = rng.choice([0.0, -0.0, 1.0, 2.5, np.inf], n) + rng.integers(0, 3, n) * 0.25
            peak = rng.choice([1.0, 2.0, 3.0], n)
            fits = rng.random(n) < fit_rate
            assert np.array_equal(first_in_order(step, peak, fits),
                                  sort_order(step, peak, fits)[:1])
            if n:
                step[::5], peak[1::7] = np.nan, np.nan
                assert np.array_equal(first_in_order(step, peak, fits),
                                      sort_order(step, peak, fits)[:1])


def test_best_only_search_is_the_searchs_first():
    """search(best_only=True), as the estimate runs it: the counts and the first plan."""
    for name, c in (("llama3-8b", load_cluster("dgx_h100", 2)),
                    ("llama3-70b", load_cluster("dgx_a100_40g", 1))):  # nothing fits
        spec = load_transformer(name)
        full, best = search(spec, c, 64), search(spec, c, 64, best_only=True)
        assert (full.candidates, full.valid, full.fitting, full.pruned, full.examples) == (
            best.candidates, best.valid, best.fitting, best.pruned, best.examples)
        assert len(best.plans) == 1 and best.plan(0) == full.plan(0)
        for f in ("step_time_s", "peak_bytes", "fits", "mfu", "tokens_per_s"):
            assert getattr(best, f)[0] == getattr(full, f)[0], f
    # what money.best_option reports when nothing fits
    assert best.peak_bytes.min() == full.peak_bytes.min()
    assert not full.fitting and full.valid


def test_indexed_plans_equal_cells():
    space = Space.build(16, 32, 64, "bf16")
    rng = np.random.default_rng(2)
    layout, col = rng.integers(0, len(space.layouts), 500), rng.integers(0, space.per_layout, 500)
    P, Q = SpacePlans(space, 64, layout, col), space.cells(64, layout, col)
    for f in PlanArrays.__dataclass_fields__:
        a, b = getattr(P, f), getattr(Q, f)
        assert a.dtype == b.dtype and np.array_equal(a, b), f
    assert len(P) == 500 and P.plan(17) == Q.plan(17)
    idx = np.arange(0, 500, 3)
    assert all(np.array_equal(getattr(P.take(idx), f), getattr(Q.take(idx), f))
               for f in PlanArrays.__dataclass_fields__)


def _same(a, b) -> None:
    assert (a.candidates, a.valid, a.fitting, a.pruned, a.examples) == (
        b.candidates, b.valid, b.fitting, b.pruned, b.examples)
    for f in ("step_time_s", "peak_bytes", "fits", "mfu", "tokens_per_s", "pareto"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert all(np.array_equal(getattr(a.plans, f), getattr(b.plans, f))
               for f in PlanArrays.__dataclass_fields__)


def test_shared_space_equals_separate_searches():
    """Validity and peak memory kept from one GPU type's search serve the next of the same
    size: the same results as searching each alone."""
    spec = load_transformer("llama3-8b")
    clusters = [load_cluster(n, 2) for n in ("dgx_h100", "dgx_b200", "dgx_a100_80g")]
    alone = [search(spec, c, 64) for c in clusters]
    with shared_space():
        together = [search(spec, c, 64) for c in clusters]
    for a, b in zip(alone, together):
        _same(a, b)


def test_shared_space_key_reads_the_searched_precision_only():
    """An A100 (no fp8) shares a bf16 space with an H100; for fp8 the key keeps the GPU, which
    the pruning message names."""
    from planner.search.shared import space_key
    spec = load_transformer("llama3-8b")
    a100, h100 = load_cluster("dgx_a100_80g", 2), load_cluster("dgx_h100", 2)
    with shared_space():
        assert space_key(spec, a100, 64, "bf16", 10) == space_key(spec, h100, 64, "bf16", 10)
        assert space_key(spec, a100, 64, "fp8", 10) != space_key(spec, h100, 64, "fp8", 10)
        alone = search(spec, a100, 64, "fp8")
        search(spec, h100, 64, "fp8")
        shared = search(spec, a100, 64, "fp8")
    _same(alone, shared)
    assert "not supported by a100_80g" in shared.examples["precision not supported by the GPU"]


def test_estimate_tasks_equal_one_process():
    """The estimate's searches shared among processes (a sweep per GPU type, each size on every
    GPU type) give what one process gives, including a size the sweep also tried."""
    from planner.commands.estimate import to_json
    from planner.estimate import estimate
    spec = load_transformer("llama3-8b")
    names = ["dgx_h100", "dgx_b200"]
    one = estimate(spec, names, 1e12, 64, sizes=[8, 16], workers=1)
    two = estimate(spec, names, 1e12, 64, sizes=[8, 16], workers=2)
    assert json.dumps(to_json(one, None, None)) == json.dumps(to_json(two, None, None))
    assert [o.num_gpus for o in two.options] == [8, 16, 8, 16]


@pytest.mark.parametrize("name,reads_all", [("llama3-8b", False), ("tiny-moe", True)])
def test_column_classes_on_shuffled_columns(name, reads_all):
    """Pruning on column classes keeps the block's row-major order and first-failing counts
    when the columns are in no particular order, and when every column is its own class."""
    from planner.search.prune import REDUNDANT, Grid
    from planner.validity import CHECKS, invalid_masks
    spec, c = load_transformer(name), load_cluster("dgx_h100", 1)
    space = Space.build(c.num_gpus, spec.num_layers, 64, "bf16", spec.moe)
    grid = next(space.grids(64, 5))
    perm = np.random.default_rng(3).permutation(grid.shape[1])
    grid = Grid(rows=grid.rows, cols={k: v[perm] for k, v in grid.cols.items()},
                const=grid.const)
    rs = rules(c)
    kinds = sides(spec, c, grid, rs)
    counts, examples = {}, {}
    r, col = prune_grid(spec, c, grid, rs, list(kinds) if reads_all else kinds, counts,
                        examples)
    P = grid.row_cells(np.arange(grid.shape[0]))
    masks = invalid_masks(spec, c, P)
    masks.update({k: fn(spec, c, P) for k, _, fn, _ in rs if k in REDUNDANT})
    summary = {ch.key: ch.summary for ch in CHECKS} | {k: v[0] for k, v in REDUNDANT.items()}
    bad, want = np.zeros(len(P), bool), {}
    for key, m in masks.items():
        m = np.broadcast_to(np.asarray(m, bool), (len(P),))
        if (m & ~bad).any():
            want[summary[key]] = int((m & ~bad).sum())
        bad |= m
    assert list(counts.items()) == list(want.items())
    assert np.array_equal(r * grid.shape[1] + col, np.flatnonzero(~bad))
