"""The cluster as a networkx graph, and which link bounds each parallel group's communication.

Graph: `gpu{r}` nodes (attributes `node`, `domain`), one `switch{d}` per scale-up domain for
switched fabrics (NVSwitch; a domain is one node except on multi-node NVLink systems such as
GB200 NVL72, planner/nvlink_domain.py) or direct GPU-GPU edges for full meshes (xGMI), one
`uplink{n}` per node (its compute NICs together) and a `fabric` node (the non-blocking
scale-out network). Edges carry `bandwidth_GBps`, `latency_s` and `tier`.

A group's collective runs as rings (NCCL). A ring hop between two GPUs of one domain crosses the
scale-up links (tier `intra_node`, whatever node each GPU sits on); a hop between domains
crosses the NICs. All groups of one kind communicate at once (every dp group reduces gradients
together), so a domain's NICs are shared by every ring of that kind that leaves the domain: a
dp group with one GPU per node gets one NIC's share (uplink / 8 on a DGX), a group with all 8
GPUs of a node on it pools the whole uplink. That is the "bounded by the NICs it shares" rule of
DESIGN.md, counted rather than assumed. Where the stack's `pool_nics` is false, every GPU is held
to its own NIC share instead. Where a domain is one node (every 8-GPU preset) this is exactly
the per-node rule.

An all-to-all (expert dispatch) is not a ring: every rank sends its own share to every peer at
once, so the part of a rank's message that leaves its domain needs that rank's own share of its
node's NICs (the node's uplink over the ranks on it that send out of the domain). GroupLink
carries that share and the worst rank's fraction of data leaving the domain (Link.all_to_all).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from planner.cost.efficiency import curve
from planner.expert_layout import EXPERT_KINDS
from planner.zero_layout import ZERO_KINDS
# KINDS and rank_groups live with the placements now; imported from here too.
from planner.group_places import KINDS, Placement, rank_groups, shape_of  # noqa: F401
from planner.hardware import Cluster
from planner.nvlink_domain import domain_of_node, gpus_per_domain

_INF = float("inf")


@dataclass(frozen=True)
class GroupLink:
    """How one kind of group (tp, cp, dp, pp neighbours, dpcp, ep, etp, edp) communicates."""

    kind: str
    size: int
    """Ranks per group."""
    ranks_per_node: int
    """Most members of one group on one node."""
    nodes_spanned: int
    """Most nodes one group spans."""
    tier: str
    """`none` (size 1), `intra_node` (inside one scale-up domain) or `inter_node`: the tier that
    bounds bandwidth."""
    bandwidth_GBps: float
    """Per-rank bandwidth of a ring hop (or p2p transfer) on the bounding link, before efficiency."""
    latency_s: float
    """Per-step latency of the slowest link crossed."""
    call_latency_s: float
    """Fixed cost per collective call on that link."""
    efficiency: tuple[tuple[float, float], ...]
    """Message-size efficiency curve of the bounding link."""
    link_name: str
    ranks_per_domain: int = 1
    """Most members of one group inside one scale-up domain (= ranks_per_node on 8-GPU nodes)."""
    domains_spanned: int = 1
    """Most domains one group spans."""
    intra_latency_s: float | None = None
    """Per-step latency of a ring hop that stays inside a scale-up domain (None: every step at
    `latency_s`); a ring across m domains takes m - 1 of its steps across the network."""
    local_bandwidth_GBps: float = _INF
    """Per-rank scale-up bandwidth to the group's peers in the same domain (inf: none)."""
    remote_fraction: float = 0.0
    """All-to-all: the largest fraction of one rank's message that leaves its domain,
    (size - peers in its domain incl. itself) / size, for the rank the NICs bound most."""
    nic_share_GBps: float = _INF
    """All-to-all: that rank's share of its node's NICs while every rank of the kind sends out
    of its domain at once (inf: no traffic leaves a domain)."""


def _edge_attrs(cluster: Cluster) -> dict[str, dict]:
    """Attributes of each kind of edge (the graph is homogeneous): `intra` (GPU-switch, or
    GPU-GPU in a mesh) and, with a network, `pcie` (GPU to its node's NICs) and `uplink`."""
    G, intra, inter = cluster.gpus_per_node, cluster.intra_node, cluster.inter_node
    bw = intra.bandwidth_GBps if intra.topology == "switch" else intra.pair_bandwidth_GBps
    out = {"intra": dict(bandwidth_GBps=bw, latency_s=intra.latency_s, tier="intra_node")}
    if inter is not None:
        out["pcie"] = dict(bandwidth_GBps=inter.nics_per_node * inter.nic_bandwidth_GBps / G,
                           latency_s=0.0, tier="pcie")
        out["uplink"] = dict(bandwidth_GBps=inter.nics_per_node * inter.nic_bandwidth_GBps,
                             latency_s=inter.latency_s, tier="inter_node")
    return out


def build_graph(cluster: Cluster) -> nx.Graph:
    """The cluster graph (see module docstring)."""
    g = nx.Graph()
    G, intra, inter = cluster.gpus_per_node, cluster.intra_node, cluster.inter_node
    dom, e = domain_of_node(cluster), _edge_attrs(cluster)
    if inter is not None:
        g.add_node("fabric", kind="fabric")
    for n in range(cluster.num_nodes):
        gpus = [f"gpu{n * G + i}" for i in range(G)]
        d = int(dom[n])
        for r, name in enumerate(gpus):
            g.add_node(name, kind="gpu", node=n, domain=d, rank=n * G + r)
        if intra.topology == "switch":
            g.add_node(f"switch{d}", kind="switch", domain=d)
            for name in gpus:
                g.add_edge(name, f"switch{d}", **e["intra"])
        else:
            for i, a in enumerate(gpus):
                for b in gpus[i + 1:]:
                    g.add_edge(a, b, **e["intra"])
        if inter is not None:
            up = f"uplink{n}"
            g.add_node(up, kind="uplink", node=n)
            for name in gpus:  # each GPU reaches the node's NICs over PCIe
                g.add_edge(name, up, **e["pcie"])
            g.add_edge(up, "fabric", **e["uplink"])
    return g


def representative_paths(cluster: Cluster) -> tuple[list[dict], list[dict]] | None:
    """Edge attributes along the graph's shortest path from GPU 0 to GPU 1 (inside a domain)
    and to the first GPU of the next domain, as nx.shortest_path finds them on build_graph's
    graph, without building it (a search builds a Topology per cluster; the graph was most of
    that at 2,048 GPUs): GPU 1 shares GPU 0's node, reached through the domain's switch (each
    GPU's first edge, so the breadth-first search meets there before the NICs) or the mesh
    edge; another domain is only reached out through PCIe, the uplink, the fabric and back.
    None with one GPU per node (GPU 1 is on another node): the graph decides."""
    G, D, n = cluster.gpus_per_node, gpus_per_domain(cluster), cluster.num_gpus
    if G == 1:
        return None
    e = _edge_attrs(cluster)
    intra = [e["intra"]] * (2 if cluster.intra_node.topology == "switch" else 1)
    return intra, ([e["pcie"], e["uplink"], e["uplink"], e["pcie"]] if n > D else [])


# Every kind `Topology.links` returns: KINDS, then the expert groups of parallel folding.
ALL_KINDS: tuple[str, ...] = (*KINDS, *EXPERT_KINDS)
_NONE_LINK = {k: GroupLink(k, 1, 1, 1, "none", _INF, 0.0, 0.0, ((1.0, 1.0),), "none")
              for k in (*ALL_KINDS, *ZERO_KINDS)}


def _slower_hop(bw_a: float, curve_a, bw_b: float, curve_b) -> tuple[tuple[float, float], ...]:
    """Efficiency curve (message MB, fraction of min(bw_a, bw_b)) of a ring whose hops are of
    two kinds: at each point of either curve, the lower of bw x efficiency of the two, as a
    fraction of the lower raw bandwidth (the tiers' curves read, and the result interpolated,
    by planner.cost.efficiency.curve)."""
    lo = min(bw_a, bw_b)
    xs = sorted({float(p[0]) for p in curve_a} | {float(p[0]) for p in curve_b})
    ea, eb = curve(curve_a, np.array(xs)), curve(curve_b, np.array(xs))
    return tuple((x, float(min(bw_a * a, bw_b * b) / lo)) for x, a, b in zip(xs, ea, eb))


class Topology:
    """The cluster's graph (built when first read) and its GroupLinks, cached per layout;
    predict and search share it."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        # Where the groups sit depends on the cluster's shape only: shared with every cluster
        # of that shape (planner/group_places.py); the bandwidths are this cluster's.
        self._shape = shape_of(cluster)
        self.node_of = self._shape.node_of
        self.domain_of = self._shape.domain_of
        self.num_domains = self._shape.num_domains
        inter = cluster.inter_node
        self._uplink_GBps = (0.0 if inter is None
                             else inter.nics_per_node * inter.nic_bandwidth_GBps)
        D = gpus_per_domain(cluster)
        self._cache: dict[tuple, dict[str, GroupLink]] = {}
        self._expert_cache: dict[tuple, dict[str, GroupLink]] = {}
        self._zero_cache: dict[tuple, dict[str, GroupLink]] = {}
        self._by_place: dict[tuple, GroupLink] = {}
        paths = representative_paths(cluster)
        if paths is None:
            paths = (self._path_edges(0, 1) if min(D, cluster.num_gpus) > 1 else [],
                     self._path_edges(0, D) if cluster.num_gpus > D else [])
        self._intra_path, self._inter_path = paths

    @cached_property
    def graph(self) -> nx.Graph:
        """The cluster graph (build_graph), built when first read."""
        return build_graph(self.cluster)

    def _path_edges(self, a: int, b: int) -> list[dict]:
        """Edge attributes along the graph path between two GPUs (same domain or not: the graph
        is homogeneous, so one representative pair per case stands for all)."""
        path = nx.shortest_path(self.graph, f"gpu{a}", f"gpu{b}")
        return [self.graph.edges[u, v] for u, v in zip(path, path[1:])]

    def links(self, tp: int, cp: int, dp: int, pp: int, order: str, ep: int = 1,
              etp: int = 1, experts: bool = True) -> dict[str, GroupLink]:
        """GroupLink for each group kind of ALL_KINDS (tp, cp, dp, pp, dpcp; and, unless
        `experts` is false (a dense model's plans never use them), the expert groups ep, etp,
        edp of parallel folding, planner/expert_layout.py) under this layout (cached per
        layout and ep, etp)."""
        key = (tp, cp, dp, pp, order)
        if key not in self._cache:
            if tp * cp * dp * pp != self.cluster.num_gpus:
                sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
                raise ValueError(f"layout {sizes} needs {tp * cp * dp * pp} GPUs, cluster has "
                                 f"{self.cluster.num_gpus}")
            self._cache[key] = {k: self._link(k, p)
                                for k, p in self._shape.dense(tp, cp, dp, pp, order).items()}
        if not experts:
            return self._cache[key]
        ekey = key + (ep, etp)
        if ekey not in self._expert_cache:
            self._expert_cache[ekey] = {
                k: self._link(k, p)
                for k, p in self._shape.expert(tp, cp, dp, pp, order, ep, etp).items()}
        return {**self._cache[key], **self._expert_cache[ekey]}

    def zero_links(self, tp: int, cp: int, dp: int, pp: int, order: str,
                   dp_shard: int | None = None) -> dict[str, GroupLink]:
        """GroupLink of each ZeRO kind (planner/zero_layout.py: `zshard`, the group one sharded
        copy of the state spans; `zrep`, its replicas) under this layout; dp_shard None or dp:
        full sharding (zshard is the dp x cp group)."""
        shard = dp if dp_shard is None else dp_shard
        key = (tp, cp, dp, pp, order, shard)
        if key not in self._zero_cache:
            self.links(tp, cp, dp, pp, order, experts=False)  # checks the world size
            self._zero_cache[key] = {
                k: self._link(k, p)
                for k, p in self._shape.zero(tp, cp, dp, pp, order, shard).items()}
        return self._zero_cache[key]

    def _link(self, kind: str, place: Placement | None) -> GroupLink:
        """The GroupLink of `kind` placed as `place` (None: groups of one rank), once per
        distinct placement (planner/group_places.py interns them)."""
        if place is None:
            return _NONE_LINK[kind]
        key = (id(place), kind)  # self._shape holds every interned place: no id is reused
        if key not in self._by_place:
            self._by_place[key] = self._new_link(kind, place)
        return self._by_place[key]

    def _new_link(self, kind: str, place: Placement) -> GroupLink:
        size, k = place.size, place.ranks_per_domain
        shared = self._flow_shares(place.flows)
        gl = self._bound(kind, size, k, place.domains_spanned, shared, place.crosses,
                         1 if kind == "pp" else k - 1)
        frac, share = self._a2a_remote(place)
        return GroupLink(gl.kind, gl.size, place.ranks_per_node, place.nodes_spanned,
                         gl.tier, gl.bandwidth_GBps, gl.latency_s, gl.call_latency_s,
                         gl.efficiency, gl.link_name, ranks_per_domain=k,
                         domains_spanned=place.domains_spanned,
                         intra_latency_s=self.cluster.intra_node.latency_s,
                         local_bandwidth_GBps=self._intra_bw(k - 1) if k > 1 else _INF,
                         remote_fraction=frac, nic_share_GBps=share)

    def _flow_shares(self, flows: np.ndarray) -> np.ndarray:
        """NIC bandwidth of each distinct flow that leaves a domain (Placement.flows): the
        uplink over each node's flow count, pooled over the row's nodes in node order (the
        sum a bincount over every (group, domain) would give, each 0 adding nothing)."""
        if not len(flows):
            return np.array([_INF])
        each = np.divide(self._uplink_GBps, flows, out=np.zeros(flows.shape), where=flows > 0)
        total = each[:, 0] + 0.0
        for col in each.T[1:]:
            total = total + col
        return total

    def _intra_bw(self, local_peers: int) -> float:
        """Per-rank scale-up bandwidth with `local_peers` group peers in the domain."""
        intra = self.cluster.intra_node
        caps = [e["bandwidth_GBps"] for e in self._intra_path]
        if intra.topology == "full_mesh":
            # Multi-ring collectives use one direct link per local peer in parallel.
            return min(intra.bandwidth_GBps, max(1, local_peers) * min(caps))
        return min(caps)

    def _a2a_remote(self, place: Placement) -> tuple[float, float]:
        """(fraction of its message a rank sends out of its domain, its NIC share) for the rank
        whose remote part takes longest: every rank sends (size - local)/size of its message
        out at once, through its node's NICs shared by the node's sending ranks."""
        if not len(place.remote):
            return 0.0, _INF
        if self.cluster.stack.pool_nics:
            remote, senders = place.remote, place.senders
        else:  # every rank holds its own GPU's share
            remote = place.remote_each
            senders = np.full_like(remote, max(1, self.cluster.gpus_per_node))
        share = self._uplink_GBps / senders
        worst = int(np.argmax(remote / share))  # the first maximum, as over every rank
        return float(remote[worst]) / place.size, float(share[worst])

    def _bound(self, kind: str, size: int, k: int, m: int, shared: np.ndarray,
               crosses: bool, local_peers: int) -> GroupLink:
        """Ring bound: k most members in one domain, m most domains spanned, `shared` the NIC
        bandwidth of each flow that leaves a domain."""
        intra = self.cluster.intra_node
        bw_intra = _INF
        if self._intra_path and (k > 1 or not crosses):
            bw_intra = self._intra_bw(local_peers)
        if not crosses:
            return GroupLink(kind, size, k, m, "intra_node", bw_intra, intra.latency_s,
                             intra.call_latency_s, tuple(map(tuple, intra.efficiency)),
                             intra.name)
        inter = self.cluster.inter_node
        assert inter is not None, "crossing nodes needs an inter-node network"
        if self.cluster.stack.pool_nics:
            bw_inter = float(np.min(shared))
        else:  # each GPU's traffic leaves through its own share of the NICs
            bw_inter = self._uplink_GBps / self.cluster.gpus_per_node
        lat = max(e["latency_s"] for e in self._inter_path)
        call = max(intra.call_latency_s, inter.call_latency_s)
        # The ring runs at its slowest hop's pace at each message size: the lower of the two
        # tiers' bandwidth x efficiency, so that a faster tier never slows it (naming the slower
        # raw bandwidth's tier and using only its curve would switch curves as the raw
        # bandwidths cross).
        curve = _slower_hop(bw_intra, intra.efficiency, bw_inter, inter.efficiency)
        if bw_intra < bw_inter:
            return GroupLink(kind, size, k, m, "intra_node", bw_intra, lat, call, curve,
                             intra.name)
        return GroupLink(kind, size, k, m, "inter_node", bw_inter, lat, call, curve, inter.name)
