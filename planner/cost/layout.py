"""Per-plan link arrays from the topology: one networkx analysis per distinct layout
(tp, cp, dp, pp, order), broadcast to every plan that shares it."""

from __future__ import annotations

import numpy as np

from planner.cost.comms import Link
from planner.plan import ORDERS
from planner.plan_arrays import PlanArrays
from planner.topology import KINDS, Topology

_TIERS = ("none", "intra_node", "inter_node")


def link_arrays(topo: Topology, P: PlanArrays) -> tuple[dict[str, Link], list[dict]]:
    """(kind -> Link over plans, per-distinct-layout GroupLinks) for tp, cp, dp, pp and dpcp."""
    keys = np.stack([P.tp, P.cp, P.dp, P.pp, P.order], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    per_layout = [topo.links(int(a), int(b), int(c), int(d), ORDERS[int(o)]) for a, b, c, d, o in uniq]
    c = topo.cluster
    curves = (((1.0, 1.0),), tuple(map(tuple, c.intra_node.efficiency)),
              tuple(map(tuple, c.inter_node.efficiency)) if c.inter_node else ((1.0, 1.0),))
    out = {}
    for kind in KINDS:
        gl = [links[kind] for links in per_layout]
        out[kind] = Link(
            n=np.array([g.size for g in gl], dtype=float)[inv],
            bandwidth_GBps=np.array([g.bandwidth_GBps for g in gl])[inv],
            latency_s=np.array([g.latency_s for g in gl])[inv],
            curve_id=np.array([_TIERS.index(g.tier) for g in gl])[inv],
            curves=curves,
        )
    return out, per_layout
