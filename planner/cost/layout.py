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
    # One integer per layout (mixed radix; dp follows from the others for valid plans, but is kept
    # so an invalid plan cannot alias a valid one): 1-D unique is much faster than rows.
    radix = topo.cluster.num_gpus + 1
    if radix ** 4 * len(ORDERS) < 2 ** 62:
        key = (((P.tp * radix + P.cp) * radix + P.pp) * radix + P.dp) * len(ORDERS) + P.order
        first, inv = np.unique(key, return_index=True, return_inverse=True)[1:]
    else:  # clusters beyond ~40k GPUs: row-wise unique (slower, no overflow)
        rows = np.stack([P.tp, P.cp, P.pp, P.dp, P.order], axis=1)
        first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)[1:]
    inv = inv.reshape(-1)
    per_layout = [topo.links(int(P.tp[i]), int(P.cp[i]), int(P.dp[i]), int(P.pp[i]),
                             ORDERS[int(P.order[i])]) for i in first]
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
            call_latency_s=np.array([g.call_latency_s for g in gl])[inv],
            curve_id=np.array([_TIERS.index(g.tier) for g in gl])[inv],
            curves=curves,
            ranks_per_node=np.array([g.ranks_per_node for g in gl], dtype=float)[inv],
            nodes_spanned=np.array([g.nodes_spanned for g in gl], dtype=float)[inv],
        )
    return out, per_layout
