"""Per-plan link arrays from the topology: one networkx analysis per distinct layout
(tp, cp, dp, pp, order, ep, etp), broadcast to every plan that shares it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Iterator

import numpy as np

from planner.cost.comms import Link
from planner.hardware import Cluster
from planner.plan import ORDERS
from planner.plan_arrays import PlanArrays
from planner.topology import ALL_KINDS, KINDS, Topology
from planner.zero_layout import ZERO_KINDS

_TIERS = ("none", "intra_node", "inter_node")
_INTRA, _INTER = _TIERS.index("intra_node"), _TIERS.index("inter_node")


# The last few clusters' Topologies (Cluster is frozen, so the same object means the same
# graph and links): a search and the predict of its best plan (money.best_option) share one.
_TOPOLOGIES: list[tuple[Cluster, Topology]] = []
_KEEP = 2


def topology_for(cluster: Cluster) -> Topology:
    """Topology(cluster), built once for calls that pass the same cluster object."""
    for c, topo in _TOPOLOGIES:
        if c is cluster:
            return topo
    topo = Topology(cluster)
    _TOPOLOGIES.append((cluster, topo))
    del _TOPOLOGIES[:-_KEEP]
    return topo


class PlanLinks(Mapping):
    """kind -> Link over the plans, each built from the per-layout links the first time it is
    read: the cost model mostly reads links through `at` (one plan per group of plans,
    planner/cost/shape_cache.py on_groups), which never builds the per-plan arrays."""

    def __init__(self, per_layout: dict[str, Link], layout_of: np.ndarray) -> None:
        self.per_layout, self.layout_of = per_layout, layout_of
        self._plans: dict[str, Link] = {}

    def __getitem__(self, kind: str) -> Link:
        if kind not in self._plans:
            self._plans[kind] = self.per_layout[kind].take(self.layout_of)
        return self._plans[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self.per_layout)

    def __len__(self) -> int:
        return len(self.per_layout)

    def at(self, idx: np.ndarray) -> dict[str, Link]:
        """The links of plans `idx`."""
        rows = self.layout_of[idx]
        return {k: link.take(rows) for k, link in self.per_layout.items()}


def link_arrays(topo: Topology, P: PlanArrays,
                experts: bool = True) -> tuple[PlanLinks, list[dict]]:
    """(kind -> Link over plans, per-distinct-layout GroupLinks) for tp, cp, dp, pp, dpcp, the
    ZeRO groups zshard and zrep (planner/zero_layout.py) and, with `experts` (an MoE spec), the
    expert groups ep, etp, edp. The layouts are in the order of their (tp, cp, pp, dp, order,
    ep, etp, dp_shard) values (PlanArrays.layout_groups)."""
    first, inv = P.layout_groups
    per_layout = [{**topo.links(int(P.tp[i]), int(P.cp[i]), int(P.dp[i]), int(P.pp[i]),
                                ORDERS[int(P.order[i])], int(P.ep[i]), int(P.etp[i]), experts),
                   **topo.zero_links(int(P.tp[i]), int(P.cp[i]), int(P.dp[i]), int(P.pp[i]),
                                     ORDERS[int(P.order[i])], int(P.dp_shard[i]))}
                  for i in first]
    c = topo.cluster
    # The tiers' curves (the all-to-all's local and remote parts use them), then each distinct
    # curve of a group that crosses nodes (its slower hop at each size, planner/topology.py).
    curves = [((1.0, 1.0),), tuple(map(tuple, c.intra_node.efficiency)),
              tuple(map(tuple, c.inter_node.efficiency)) if c.inter_node else ((1.0, 1.0),)]

    def curve_of(g) -> int:
        if g.tier == "none":
            return 0
        if g.efficiency not in curves[1:]:
            curves.append(g.efficiency)
        return curves.index(g.efficiency, 1)
    ids = {kind: np.array([curve_of(links[kind]) for links in per_layout], dtype=int)
           for kind in (*(ALL_KINDS if experts else KINDS), *ZERO_KINDS)}
    out = {}
    k = len(per_layout)
    for kind in (*(ALL_KINDS if experts else KINDS), *ZERO_KINDS):
        gl = [links[kind] for links in per_layout]

        def col(field: str, dtype: type = float) -> np.ndarray:
            return np.array([getattr(g, field) for g in gl], dtype=dtype)
        out[kind] = Link(
            n=col("size"),
            bandwidth_GBps=col("bandwidth_GBps"),
            latency_s=col("latency_s"),
            call_latency_s=col("call_latency_s"),
            curve_id=ids[kind],
            curves=tuple(curves),
            ranks_per_node=col("ranks_per_node"),
            nodes_spanned=col("nodes_spanned"),
            ranks_per_domain=col("ranks_per_domain"),
            domains_spanned=col("domains_spanned"),
            intra_latency_s=np.array([np.nan if g.intra_latency_s is None else g.intra_latency_s
                                      for g in gl]),
            local_bandwidth_GBps=col("local_bandwidth_GBps"),
            local_curve_id=np.full(k, _INTRA),
            remote_fraction=col("remote_fraction"),
            remote_bandwidth_GBps=col("nic_share_GBps"),
            remote_curve_id=np.full(k, _INTER),
        )
    return PlanLinks(out, inv), per_layout
