"""Per-plan link arrays from the topology: one networkx analysis per distinct layout
(tp, cp, dp, pp, order, ep, etp), broadcast to every plan that shares it."""

from __future__ import annotations

import numpy as np

from planner.cost.comms import Link
from planner.plan import ORDERS
from planner.plan_arrays import PlanArrays
from planner.topology import ALL_KINDS, KINDS, Topology

_TIERS = ("none", "intra_node", "inter_node")
_INTRA, _INTER = _TIERS.index("intra_node"), _TIERS.index("inter_node")


def _layout_index(P: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """(index of the first plan of each distinct layout, layout of every plan)."""
    # One integer per layout (mixed radix, each column's radix one above its largest value, so
    # the key sorts as the tuple (tp, cp, pp, dp, order, ep, etp) does; dp follows from the
    # others for valid plans, but is kept so an invalid plan cannot alias a valid one): 1-D
    # unique is much faster than rows.
    cols = (P.tp, P.cp, P.pp, P.dp, P.order, P.ep, P.etp)
    radices = [int(c.max()) + 1 if len(c) else 1 for c in cols]
    radices[4] = len(ORDERS)
    if int(np.prod(radices, dtype=object)) < 2 ** 62:
        key = np.zeros(len(P), dtype=np.int64)
        for c, r in zip(cols, radices):
            key = key * r + c
        first, inv = np.unique(key, return_index=True, return_inverse=True)[1:]
    else:  # beyond int64 (clusters of ~40k GPUs and more): row-wise unique (slower)
        rows = np.stack(cols, axis=1)
        first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)[1:]
    return first, inv.reshape(-1)


def link_arrays(topo: Topology, P: PlanArrays,
                experts: bool = True) -> tuple[dict[str, Link], list[dict]]:
    """(kind -> Link over plans, per-distinct-layout GroupLinks) for tp, cp, dp, pp, dpcp and,
    with `experts` (an MoE spec), the expert groups ep, etp, edp."""
    first, inv = _layout_index(P)
    per_layout = [topo.links(int(P.tp[i]), int(P.cp[i]), int(P.dp[i]), int(P.pp[i]),
                             ORDERS[int(P.order[i])], int(P.ep[i]), int(P.etp[i]), experts)
                  for i in first]
    c = topo.cluster
    curves = (((1.0, 1.0),), tuple(map(tuple, c.intra_node.efficiency)),
              tuple(map(tuple, c.inter_node.efficiency)) if c.inter_node else ((1.0, 1.0),))
    out = {}
    for kind in (ALL_KINDS if experts else KINDS):
        gl = [links[kind] for links in per_layout]

        def col(field: str, dtype: type = float) -> np.ndarray:
            return np.array([getattr(g, field) for g in gl], dtype=dtype)[inv]
        out[kind] = Link(
            n=col("size"),
            bandwidth_GBps=col("bandwidth_GBps"),
            latency_s=col("latency_s"),
            call_latency_s=col("call_latency_s"),
            curve_id=np.array([_TIERS.index(g.tier) for g in gl], dtype=int)[inv],
            curves=curves,
            ranks_per_node=col("ranks_per_node"),
            nodes_spanned=col("nodes_spanned"),
            ranks_per_domain=col("ranks_per_domain"),
            local_bandwidth_GBps=col("local_bandwidth_GBps"),
            local_curve_id=np.full(len(inv), _INTRA),
            remote_fraction=col("remote_fraction"),
            remote_bandwidth_GBps=col("nic_share_GBps"),
            remote_curve_id=np.full(len(inv), _INTER),
        )
    return out, per_layout
