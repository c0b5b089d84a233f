"""Gradient-synchronisation cost model (planner/cost/grad_sync.py): hand-computed cases and the
plan validation messages."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.comms import Link
from planner.cost.grad_sync import parameter_server, ps_volume, tree_all_reduce
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.transformer import load_transformer
from planner.validity import plan_problems


def link(n: float, bw: float = 100.0, lat: float = 5e-6) -> Link:
    a = np.array([float(n)])
    return Link(n=a, bandwidth_GBps=np.array([bw]), latency_s=np.array([lat]),
                call_latency_s=np.array([0.0]), curve_id=np.array([0]), curves=(((1.0, 1.0),),))


def test_tree_wins_small_messages_ring_ties_large() -> None:
    L = link(256)
    small, big = np.array([1e3]), np.array([1e9])
    # 2*8 = 16 latency steps vs 2*255 = 510: tree wins for tiny messages at large n.
    assert tree_all_reduce(L, small)[0] < L.all_reduce(small)[0] / 10
    assert tree_all_reduce(L, small)[0] == pytest.approx(16 * 5e-6 + 2 * 255 / 256 * 1e3 / 1e11)
    # Large messages: the same bus volume, so they differ by the latency steps only, a small
    # share of the time (the model charges the tree ring's bandwidth: it never loses to the ring).
    diff = L.all_reduce(big)[0] - tree_all_reduce(L, big)[0]
    assert diff == pytest.approx((510 - 16) * 5e-6)
    assert diff / L.all_reduce(big)[0] < 0.15


def test_ps_falls_with_servers_and_equals_ring_volume_at_s_eq_n() -> None:
    n, G = 8, np.array([1e9])
    L = link(n, lat=0.0)
    times = [parameter_server(L, G, np.array([s]), np.array([False]))[0] for s in (1, 2, 4, 8)]
    assert times == sorted(times, reverse=True)
    assert ps_volume(G, np.array([8.0]), np.array([8]), np.array([False]))[0] == \
        pytest.approx(2 * (n - 1) / n * 1e9)
    assert times[-1] == pytest.approx(L.all_reduce(G)[0])
    # Dedicated servers, S >= n: each worker sends and receives G once: half the ring volume.
    assert ps_volume(G, np.array([8.0]), np.array([8]), np.array([True]))[0] == 1e9


BASE = dict(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=8)


@pytest.mark.parametrize("kw, text", [
    (dict(grad_sync="parameter_server"), "needs ps_servers >= 1"),
    (dict(ps_servers=2), "needs grad_sync parameter_server"),
    (dict(grad_sync="parameter_server", ps_servers=16), "exceeds dp*cp = 8"),
    (dict(grad_sync="parameter_server", ps_servers=2, zero_stage=1), "needs zero_stage 0"),
])
def test_plan_validation(kw: dict, text: str) -> None:
    probs = plan_problems(Plan(**{**BASE, **kw}), load_transformer("tiny"),
                          load_cluster("dgx_h100", num_nodes=1))
    assert len(probs) == 1 and text in probs[0] and "\n" not in probs[0]


def test_ring_default_unchanged_and_others_valid() -> None:
    spec, c = load_transformer("tiny"), load_cluster("dgx_h100", num_nodes=1)
    for kw in (dict(), dict(grad_sync="tree"), dict(grad_sync="hierarchical"),
               dict(grad_sync="parameter_server", ps_servers=4)):
        assert plan_problems(Plan(**{**BASE, **kw}), spec, c) == []
    assert Plan(**BASE).grad_sync == "ring" and Plan(**BASE).ps_servers == 0
