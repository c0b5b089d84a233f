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

import networkx as nx
import numpy as np

from planner.expert_layout import EXPERT_KINDS, expert_rank_groups
from planner.hardware import Cluster
from planner.nvlink_domain import domain_of_node, gpus_per_domain
from planner.plan import DIMS

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
    local_bandwidth_GBps: float = _INF
    """Per-rank scale-up bandwidth to the group's peers in the same domain (inf: none)."""
    remote_fraction: float = 0.0
    """All-to-all: the largest fraction of one rank's message that leaves its domain,
    (size - peers in its domain incl. itself) / size, for the rank the NICs bound most."""
    nic_share_GBps: float = _INF
    """All-to-all: that rank's share of its node's NICs while every rank of the kind sends out
    of its domain at once (inf: no traffic leaves a domain)."""


def build_graph(cluster: Cluster) -> nx.Graph:
    """The cluster graph (see module docstring)."""
    g = nx.Graph()
    G, intra, inter = cluster.gpus_per_node, cluster.intra_node, cluster.inter_node
    dom = domain_of_node(cluster)
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
                g.add_edge(name, f"switch{d}", bandwidth_GBps=intra.bandwidth_GBps,
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
# Every kind `Topology.links` returns: KINDS, then the expert groups of parallel folding.
ALL_KINDS: tuple[str, ...] = (*KINDS, *EXPERT_KINDS)


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


@dataclass(frozen=True)
class _Places:
    """Where the members of each group sit, per (group, place) pair that holds any (sparse:
    a rank's group and place, deduplicated; place = node or domain)."""

    group: np.ndarray
    """Group of each pair."""
    place: np.ndarray
    """Node or domain of each pair."""
    count: np.ndarray
    """Members of that group in that place."""
    of_rank: np.ndarray
    """Pair index of each member (groups.ravel() order)."""
    spans: np.ndarray
    """(groups,) places each group touches."""


def _places(gid: np.ndarray, where: np.ndarray, places: int, n_groups: int) -> _Places:
    """_Places of members (group `gid`, place `where`, both per member) over `places` places."""
    uniq, inv, count = np.unique(gid * places + where, return_inverse=True, return_counts=True)
    group = uniq // places
    return _Places(group, uniq % places, count, inv.reshape(-1),
                   np.bincount(group, minlength=n_groups))


class Topology:
    """Graph plus a cache of GroupLinks per layout; predict and search share it."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.graph = build_graph(cluster)
        self.node_of = np.array([self.graph.nodes[f"gpu{r}"]["node"]
                                 for r in range(cluster.num_gpus)])
        self._node_domain = domain_of_node(cluster)
        self.domain_of = self._node_domain[self.node_of]
        self.num_domains = int(self.domain_of.max()) + 1
        inter = cluster.inter_node
        self._uplink_GBps = (0.0 if inter is None
                             else inter.nics_per_node * inter.nic_bandwidth_GBps)
        D = gpus_per_domain(cluster)
        self._one_node_domains = D == cluster.gpus_per_node
        self._cache: dict[tuple, dict[str, GroupLink]] = {}
        self._expert_cache: dict[tuple, dict[str, GroupLink]] = {}
        self._intra_path = self._path_edges(0, 1) if min(D, cluster.num_gpus) > 1 else []
        self._inter_path = self._path_edges(0, D) if cluster.num_gpus > D else []

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
            sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
            if tp * cp * dp * pp != self.cluster.num_gpus:
                raise ValueError(f"layout {sizes} needs {tp * cp * dp * pp} GPUs, cluster has "
                                 f"{self.cluster.num_gpus}")
            self._cache[key] = {k: self._link(k, rank_groups(sizes, order, k)) for k in KINDS}
        if not experts:
            return self._cache[key]
        ekey = key + (ep, etp)
        if ekey not in self._expert_cache:
            sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
            self._expert_cache[ekey] = {
                k: self._link(k, expert_rank_groups(sizes, order, ep, etp, k))
                for k in EXPERT_KINDS}
        return {**self._cache[key], **self._expert_cache[ekey]}

    def _link(self, kind: str, groups: np.ndarray) -> GroupLink:
        n_groups, size = groups.shape
        if size == 1:
            return GroupLink(kind, 1, 1, 1, "none", _INF, 0.0, 0.0, ((1.0, 1.0),), "none")
        gid = np.repeat(np.arange(n_groups), size)
        nodes, doms = self.node_of[groups], self.domain_of[groups]
        per_node = _places(gid, nodes.ravel(), self.cluster.num_nodes, n_groups)
        per_dom = (per_node if self._one_node_domains
                   else _places(gid, doms.ravel(), self.num_domains, n_groups))
        k, spans = int(per_dom.count.max()), per_dom.spans
        if kind == "pp":
            # Point-to-point between neighbouring stages: each sender to another domain is one
            # flow through its own node's uplink.
            cross = doms[:, 1:] != doms[:, :-1]
            flows = np.bincount(nodes[:, :-1][cross], minlength=self.cluster.num_nodes)
            shared = self._uplink_GBps / flows[flows > 0]
            local_peers = 1
        else:
            cross = spans > 1
            shared = self._ring_share(per_node, cross)
            local_peers = k - 1
        gl = self._bound(kind, size, k, int(spans.max()), shared, bool(cross.any()), local_peers)
        frac, share = self._a2a_remote(size, nodes.ravel(), per_dom)
        return GroupLink(gl.kind, gl.size, int(per_node.count.max()), int(per_node.spans.max()),
                         gl.tier, gl.bandwidth_GBps, gl.latency_s, gl.call_latency_s,
                         gl.efficiency, gl.link_name, ranks_per_domain=k,
                         domains_spanned=int(spans.max()),
                         local_bandwidth_GBps=self._intra_bw(k - 1) if k > 1 else _INF,
                         remote_fraction=frac, nic_share_GBps=share)

    def _ring_share(self, per_node: _Places, spanning: np.ndarray) -> np.ndarray:
        """NIC bandwidth each spanning group's rings have where they leave a domain: one ring
        flow per spanning group touches each node it has members on, a node's uplink is shared
        by the flows touching it, and a group pools the uplinks of its nodes in that domain
        (one node per domain on 8-GPU servers: uplink / flows, as NCCL pools a node's NICs)."""
        sel = spanning[per_node.group]
        node, group = per_node.place[sel], per_node.group[sel]
        if not len(node):
            return np.array([_INF])
        flows = np.bincount(node, minlength=self.cluster.num_nodes)
        contrib = self._uplink_GBps / flows[node]
        if self._one_node_domains:
            return contrib
        pair = group * self.num_domains + self._node_domain[node]
        inv = np.unique(pair, return_inverse=True)[1].reshape(-1)
        return np.bincount(inv, weights=contrib)  # pooled over the group's nodes per domain

    def _intra_bw(self, local_peers: int) -> float:
        """Per-rank scale-up bandwidth with `local_peers` group peers in the domain."""
        intra = self.cluster.intra_node
        caps = [e["bandwidth_GBps"] for e in self._intra_path]
        if intra.topology == "full_mesh":
            # Multi-ring collectives use one direct link per local peer in parallel.
            return min(intra.bandwidth_GBps, max(1, local_peers) * min(caps))
        return min(caps)

    def _a2a_remote(self, size: int, nodes: np.ndarray, per_dom: _Places) -> tuple[float, float]:
        """(fraction of its message a rank sends out of its domain, its NIC share) for the rank
        whose remote part takes longest: every rank sends (size - local)/size of its message
        out at once, through its node's NICs shared by the node's sending ranks."""
        remote = size - per_dom.count[per_dom.of_rank]
        sending = remote > 0
        if not sending.any():
            return 0.0, _INF
        senders = np.bincount(nodes[sending], minlength=self.cluster.num_nodes)
        if not self.cluster.stack.pool_nics:
            senders = np.full_like(senders, self.cluster.gpus_per_node)
        share = self._uplink_GBps / np.maximum(1, senders[nodes])
        worst = int(np.argmax(np.where(sending, remote / share, 0.0)))
        return float(remote[worst]) / size, float(share[worst])

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
        if bw_intra < bw_inter:
            return GroupLink(kind, size, k, m, "intra_node", bw_intra, lat, call,
                             tuple(map(tuple, intra.efficiency)), intra.name)
        return GroupLink(kind, size, k, m, "inter_node", bw_inter, lat, call,
                         tuple(map(tuple, inter.efficiency)), inter.name)
