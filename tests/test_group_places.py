"""The group placements shared per cluster shape (planner/group_places.py) and the paths read
without the graph (planner/topology.py representative_paths) change no GroupLink: held here
against the per-rank computation they replace, on every rank of every group."""

from __future__ import annotations

import collections

import networkx as nx
import numpy as np
import pytest

from planner.expert_layout import EXPERT_KINDS, expert_rank_groups
from planner.group_places import KINDS, group_key, rank_groups
from planner.hardware import load_cluster, preset_names
from planner.nvlink_domain import gpus_per_domain
from planner.plan import ORDERS
from planner.search.space import layouts
from planner.stack import load_stack
from planner.topology import GroupLink, Topology, build_graph, representative_paths

_INF = float("inf")


def _direct(topo: Topology, kind: str, groups: np.ndarray) -> GroupLink:
    """GroupLink of `groups` from every member's node and domain (no reduction, no sharing)."""
    c, n_groups, size = topo.cluster, *groups.shape
    if size == 1:
        return GroupLink(kind, 1, 1, 1, "none", _INF, 0.0, 0.0, ((1.0, 1.0),), "none")
    nodes = np.arange(c.num_gpus)[groups] // c.gpus_per_node
    doms = topo.domain_of[groups]
    per_node = [collections.Counter(row) for row in nodes.tolist()]
    per_dom = [collections.Counter(row) for row in doms.tolist()]
    uplink = topo._uplink_GBps
    k = max(max(d.values()) for d in per_dom)
    spans = np.array([len(d) for d in per_dom])
    if kind == "pp":
        cross = doms[:, 1:] != doms[:, :-1]
        flows = np.bincount(nodes[:, :-1][cross], minlength=c.num_nodes)
        shared, local_peers, crosses = uplink / flows[flows > 0], 1, bool(cross.any())
    else:
        touch = collections.Counter(n for g in range(n_groups) if spans[g] > 1
                                    for n in per_node[g])
        pooled = collections.defaultdict(float)  # (group, domain) -> its nodes' shares, in order
        for g in range(n_groups):
            if spans[g] > 1:
                for n in sorted(per_node[g]):
                    pooled[g, int(topo.domain_of[n * c.gpus_per_node])] += uplink / touch[n]
        shared = np.array(list(pooled.values()) or [_INF])
        local_peers, crosses = k - 1, bool((spans > 1).any())
    gl = topo._bound(kind, size, k, int(spans.max()), shared, crosses, local_peers)
    remote = np.array([size - per_dom[g][d] for g, row in enumerate(doms.tolist()) for d in row])
    flat = nodes.ravel()
    frac, share = 0.0, _INF
    if (remote > 0).any():
        senders = np.bincount(flat[remote > 0], minlength=c.num_nodes)
        if not c.stack.pool_nics:
            senders = np.full_like(senders, c.gpus_per_node)
        each = uplink / np.maximum(1, senders[flat])
        worst = int(np.argmax(np.where(remote > 0, remote / each, 0.0)))
        frac, share = float(remote[worst]) / size, float(each[worst])
    return GroupLink(kind, size, max(max(d.values()) for d in per_node),
                     max(len(d) for d in per_node), gl.tier, gl.bandwidth_GBps, gl.latency_s,
                     gl.call_latency_s, gl.efficiency, gl.link_name, ranks_per_domain=k,
                     domains_spanned=int(spans.max()),
                     intra_latency_s=c.intra_node.latency_s,
                     local_bandwidth_GBps=topo._intra_bw(k - 1) if k > 1 else _INF,
                     remote_fraction=frac, nic_share_GBps=share)


class _MoE:  # expert splits of a 16-expert model
    num_experts, expert_ffn_hidden_size = 16, 64


@pytest.mark.parametrize("name,nodes,stack", [
    ("dgx_h100", 4, None), ("dgx_h100", 4, "deepspeed"), ("mi300x_8", 2, None),
    ("gb200_nvl72", 12, None), ("gb200_nvl72", 12, "megatron-lm-2021"), ("gb200_nvl72", 11, None)])
def test_links_equal_every_rank(name, nodes, stack):
    """Every layout (two orders; the expert splits too) of a cluster, after another cluster of
    the same shape filled the shared placements, equals the per-rank computation, repr-exact."""
    c = load_cluster(name, nodes, stack=load_stack(stack)) if stack else load_cluster(name, nodes)
    other = load_cluster("hgx_h200" if name == "dgx_h100" else name, nodes)
    rng = np.random.default_rng(0)
    for topo in (Topology(other), Topology(c)):
        lays = layouts(c.num_gpus, _MoE)
        for tp, cp, dp, pp, ep, etp in lays[rng.permutation(len(lays))[:150]]:
            sizes = {"tp": int(tp), "cp": int(cp), "dp": int(dp), "pp": int(pp)}
            for order in rng.choice(ORDERS, 2, replace=False):
                got = topo.links(*sizes.values(), str(order), int(ep), int(etp))
                want = {k: rank_groups(sizes, str(order), k) for k in KINDS} | {
                    k: expert_rank_groups(sizes, str(order), int(ep), int(etp), k)
                    for k in EXPERT_KINDS}
                assert list(got) == list(want)
                for k, groups in want.items():
                    assert repr(got[k]) == repr(_direct(topo, k, groups)), (sizes, order, k)


def test_group_key_is_the_group_array():
    """Two (sizes, order, kind) share a group_key exactly when rank_groups gives them the same
    array (every layout and order of these worlds)."""
    for world in (12, 16, 72):
        arrays: dict[tuple, set] = collections.defaultdict(set)
        keys: dict[tuple, set] = collections.defaultdict(set)
        for tp, cp, dp, pp, _, _ in layouts(world):
            sizes = {"tp": int(tp), "cp": int(cp), "dp": int(dp), "pp": int(pp)}
            for order in ORDERS:
                for kind in KINDS:
                    g = rank_groups(sizes, order, kind)
                    arr, key = (g.shape, g.tobytes()), group_key(sizes, order, kind)
                    arrays[key].add(arr)
                    keys[arr].add(key)
        assert all(len(v) == 1 for v in arrays.values())
        assert all(len(v) == 1 for v in keys.values())


def test_representative_paths_are_the_graphs():
    """The paths Topology reads without building the graph are nx.shortest_path's on it."""
    for name in preset_names("clusters"):
        for nodes in (1, 2, 9, 12):
            c = load_cluster(name, nodes)
            g, D = build_graph(c), gpus_per_domain(c)

            def edges(a: int, b: int) -> list[dict]:
                p = nx.shortest_path(g, f"gpu{a}", f"gpu{b}")
                return [g.edges[u, v] for u, v in zip(p, p[1:])]
            want = (edges(0, 1) if min(D, c.num_gpus) > 1 else [],
                    edges(0, D) if c.num_gpus > D else [])
            got = representative_paths(c)
            assert got is None or got == want, (name, nodes)
