"""The cluster as a networkx graph, and which link bounds each parallel group's communication.

Graph: `gpu{r}` nodes (attribute `node`), one `switch{n}` per node for switched fabrics (NVSwitch)
or direct GPU-GPU edges for full meshes (xGMI), one `uplink{n}` per node (its compute NICs
together) and a `fabric` node (the non-blocking scale-out network). Edges carry `bandwidth_GBps`,
`latency_s` and `tier`.

A group's collective runs as rings (NCCL). A ring hop between two GPUs of one node crosses the
intra-node links; a hop between nodes crosses both nodes' uplinks. All groups of one kind
communicate at once (every dp group reduces gradients together), so an uplink is shared by every
ring of that kind that leaves the node: a dp group with one GPU per node gets one NIC's share
(uplink / 8 on a DGX), a group with all 8 GPUs of a node on it pools the whole uplink. That is the
"bounded by the NICs it shares" rule of DESIGN.md, counted rather than assumed. Where the
stack's `pool_nics` is false, every GPU is held to its own NIC share instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from planner.hardware import Cluster
from planner.plan import DIMS


@dataclass(frozen=True)
class GroupLink:
    """How one kind of group (tp, cp, dp or pp neighbours) communicates under a layout."""

    kind: str
    size: int
    """Ranks per group."""
    ranks_per_node: int
    """Most members of one group on one node."""
    nodes_spanned: int
    """Most nodes one group spans."""
    tier: str
    """`none` (size 1), `intra_node` or `inter_node`: the tier that bounds bandwidth."""
    bandwidth_GBps: float
    """Per-rank bandwidth of a ring hop (or p2p transfer) on the bounding link, before efficiency."""
    latency_s: float
    """Per-step latency of the slowest link crossed."""
    call_latency_s: float
    """Fixed cost per collective call on that link."""
    efficiency: tuple[tuple[float, float], ...]
    """Message-size efficiency curve of the bounding link."""
    link_name: str


def build_graph(cluster: Cluster) -> nx.Graph:
    """The cluster graph (see module docstring)."""
    g = nx.Graph()
    G, intra, inter = cluster.gpus_per_node, cluster.intra_node, cluster.inter_node
    if inter is not None:
        g.add_node("fabric", kind="fabric")
    for n in range(cluster.num_nodes):
        gpus = [f"gpu{n * G + i}" for i in range(G)]
        for r, name in enumerate(gpus):
            g.add_node(name, kind="gpu", node=n, rank=n * G + r)
        if intra.topology == "switch":
            g.add_node(f"switch{n}", kind="switch", node=n)
            for name in gpus:
                g.add_edge(name, f"switch{n}", bandwidth_GBps=intra.bandwidth_GBps,
                           latency_s=intra.latency_s, tier="intra_node")
        else:
            for i, a in enumerate(gpus):
                for b in gpus[i + 1:]:
                    g.add_edge(a, b, bandwidth_GBps=intra.pair_bandwidth_GBps,
                               latency_s=intra.latency_s, tier="intra_node")
        if inter is not None:
            up = f"uplink{n}"
            g.add_node(up, kind="uplink", node=n)
            per_gpu = inter.nics_per_node * inter.nic_bandwidth_GBps / G
            for name in gpus:  # each GPU reaches the node's NICs over PCIe
                g.add_edge(name, up, bandwidth_GBps=per_gpu, latency_s=0.0, tier="pcie")
            g.add_edge(up, "fabric", bandwidth_GBps=inter.nics_per_node * inter.nic_bandwidth_GBps,
                       latency_s=inter.latency_s, tier="inter_node")
    return g


# Group kinds: the four dimensions, plus dp x cp, over which gradients are reduced and ZeRO shards
# (context-parallel ranks hold the same weights; Megatron-LM reduces over dp*cp).
KINDS: dict[str, tuple[str, ...]] = {"tp": ("tp",), "cp": ("cp",), "dp": ("dp",), "pp": ("pp",),
                                     "dpcp": ("cp", "dp")}


def rank_groups(sizes: dict[str, int], order: str, kind: str) -> np.ndarray:
    """(number of groups, group size) array of ranks for a group kind (a key of KINDS), given the
    rank order (innermost dimension first, as in Plan.order)."""
    outer_first = list(reversed(order.split("-")))
    world = int(np.prod([sizes[d] for d in DIMS]))
    grid = np.arange(world).reshape([sizes[d] for d in outer_first])
    dims = KINDS[kind]
    axes = [outer_first.index(d) for d in dims]
    size = int(np.prod([sizes[d] for d in dims]))
    return np.moveaxis(grid, axes, list(range(-len(axes), 0))).reshape(-1, size)


class Topology:
    """Graph plus a cache of GroupLinks per layout; predict and search share it."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.graph = build_graph(cluster)
        self.node_of = np.array([self.graph.nodes[f"gpu{r}"]["node"]
                                 for r in range(cluster.num_gpus)])
        self._cache: dict[tuple, dict[str, GroupLink]] = {}
        self._intra_path = self._path_edges(0, 1) if cluster.gpus_per_node > 1 else []
        self._inter_path = (self._path_edges(0, cluster.gpus_per_node)
                            if cluster.num_nodes > 1 else [])

    def _path_edges(self, a: int, b: int) -> list[dict]:
        """Edge attributes along the graph path between two GPUs (same node or not: the graph
        is homogeneous, so one representative pair per case stands for all)."""
        path = nx.shortest_path(self.graph, f"gpu{a}", f"gpu{b}")
        return [self.graph.edges[u, v] for u, v in zip(path, path[1:])]

    def links(self, tp: int, cp: int, dp: int, pp: int, order: str) -> dict[str, GroupLink]:
        """GroupLink for each group kind (tp, cp, dp, pp, dpcp) under this layout (cached)."""
        key = (tp, cp, dp, pp, order)
        if key not in self._cache:
            sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
            if tp * cp * dp * pp != self.cluster.num_gpus:
                raise ValueError(f"layout {sizes} needs {tp * cp * dp * pp} GPUs, cluster has "
                                 f"{self.cluster.num_gpus}")
            self._cache[key] = {k: self._link(k, rank_groups(sizes, order, k)) for k in KINDS}
        return self._cache[key]

    def _link(self, kind: str, groups: np.ndarray) -> GroupLink:
        n_groups, size = groups.shape
        if size == 1:
            return GroupLink(kind, 1, 1, 1, "none", float("inf"), 0.0, 0.0, ((1.0, 1.0),), "none")
        nodes = self.node_of[groups]
        num_nodes = self.cluster.num_nodes
        pair = np.arange(n_groups)[:, None] * num_nodes + nodes
        per_pair = np.bincount(pair.ravel(), minlength=n_groups * num_nodes)
        per_pair = per_pair.reshape(n_groups, num_nodes)
        k = int(per_pair.max())
        spans = (per_pair > 0).sum(axis=1)
        m = int(spans.max())
        if kind == "pp":
            # Point-to-point between neighbouring stages: each crossing sender is one flow.
            cross = nodes[:, 1:] != nodes[:, :-1]
            flows = np.bincount(nodes[:, :-1][cross], minlength=num_nodes)
            local_peers = 1
        else:
            # One ring flow leaves each node per group that spans more than one node.
            flows = ((per_pair > 0) & (spans[:, None] > 1)).sum(axis=0)
            cross = spans > 1
            local_peers = k - 1
        return self._bound(kind, size, k, m, int(flows.max()), bool(cross.any()), local_peers)

    def _bound(self, kind: str, size: int, k: int, m: int, flows_per_uplink: int,
               crosses: bool, local_peers: int) -> GroupLink:
        intra = self.cluster.intra_node
        bw_intra = float("inf")
        if self._intra_path and (k > 1 or not crosses):
            caps = [e["bandwidth_GBps"] for e in self._intra_path]
            if intra.topology == "full_mesh":
                # Multi-ring collectives use one direct link per local peer in parallel.
                bw_intra = min(intra.bandwidth_GBps, max(1, local_peers) * min(caps))
            else:
                bw_intra = min(caps)
        if not crosses:
            return GroupLink(kind, size, k, m, "intra_node", bw_intra, intra.latency_s,
                             intra.call_latency_s, tuple(map(tuple, intra.efficiency)),
                             intra.name)
        inter = self.cluster.inter_node
        assert inter is not None, "crossing nodes needs an inter-node network"
        up = next(e for e in self._inter_path if e["tier"] == "inter_node")
        if not self.cluster.stack.pool_nics:
            # Each GPU's traffic leaves through its own share of the NICs.
            flows_per_uplink = max(flows_per_uplink, self.cluster.gpus_per_node)
        bw_inter = up["bandwidth_GBps"] / max(1, flows_per_uplink)
        lat = max(e["latency_s"] for e in self._inter_path)
        call = max(intra.call_latency_s, inter.call_latency_s)
        if bw_intra < bw_inter:
            return GroupLink(kind, size, k, m, "intra_node", bw_intra, lat, call,
                             tuple(map(tuple, intra.efficiency)), intra.name)
        return GroupLink(kind, size, k, m, "inter_node", bw_inter, lat, call,
                         tuple(map(tuple, inter.efficiency)), inter.name)
