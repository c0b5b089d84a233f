"""Where the members of each parallel group sit, reduced to what planner/topology.py turns into
a GroupLink: the most members per node and domain, the nodes and domains spanned, the flow
counts that share each node's NICs and the all-to-all senders. They read the cluster only
through its shape (nodes, GPUs per node, each node's scale-up domain), never a bandwidth,
latency or stack, so every GPU type of one shape shares them:
`paraplan estimate` searches five GPU types at each size, and placing the same groups on the
same nodes once per type was a third of its time. A Shape is kept per shape (`shape_of`) and
holds its Placements per layout.

The reductions keep every value the link model reads, in an order that gives its results bit
for bit: the NIC shares are reduced with a minimum (distinct flow rows suffice) and the
all-to-all's worst rank is an argmax (distinct (remote, senders) pairs in order of first
occurrence give the same first maximum)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.expert_layout import EXPERT_KINDS, expert_rank_groups
from planner.zero_layout import ZERO_KINDS, zero_rank_groups
from planner.hardware import Cluster
from planner.nvlink_domain import domain_of_node, gpus_per_domain
from planner.plan import DIMS

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


def group_key(sizes: dict[str, int], order: str, kind: str) -> tuple[tuple, tuple]:
    """A key that two (sizes, order, kind) share only if rank_groups gives them the same array:
    a rank is the sum of its grid indices times their strides, a group row runs over the other
    dimensions (grid order, flattened) and its columns over the kind's (in KINDS order), so
    (size, stride) of each, without those of size 1 and with neighbours that flatten as one
    axis merged, fix the array."""
    outer_first = list(reversed(order.split("-")))
    strides, stride = {}, 1
    for d in order.split("-"):  # innermost first
        strides[d], stride = stride, stride * sizes[d]
    dims = KINDS[kind]
    return (_merged([(sizes[d], strides[d]) for d in outer_first if d not in dims]),
            _merged([(sizes[d], strides[d]) for d in dims]))


def _merged(axes: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """(size, stride) axes flattened row-major, as few as give the same ranks: an axis of size
    1 adds nothing, and (s1, t1) then (s2, t2) with t1 = s2 t2 run as (s1 s2, t2)."""
    out: list[tuple[int, int]] = []
    for size, stride in axes:
        if size == 1:
            continue
        if out and out[-1][1] == size * stride:
            out[-1] = (out[-1][0] * size, stride)
        else:
            out.append((size, stride))
    return tuple(out)


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


@dataclass(frozen=True)
class Placement:
    """One group kind under one layout (size > 1) on one cluster shape."""

    size: int
    ranks_per_node: int
    nodes_spanned: int
    ranks_per_domain: int
    domains_spanned: int
    crosses: bool
    """Some group leaves a domain (pp: some pair of neighbouring stages)."""
    flows: np.ndarray
    """(rows, columns) flow counts, each row one distinct NIC share a flow that leaves a domain
    gets: the uplink over each count, summed along the row (0: padding). pp: one flow per
    sending node, one column; rings: the flows on each node a group pools in its domain."""
    remote: np.ndarray
    """All-to-all: distinct (remote, senders) pairs of the ranks sending out of their domain,
    in order of first occurrence: ranks of the group outside the rank's domain ..."""
    senders: np.ndarray
    """... and the sending ranks on that rank's node, sharing its NICs where pooled."""
    remote_each: np.ndarray
    """The distinct `remote` of those ranks, in order of first occurrence (NICs not pooled:
    every rank has one GPU's share)."""


class Shape:
    """A cluster shape's rank placement, and the Placements of the layouts asked for so far."""

    def __init__(self, cluster: Cluster):
        self.num_nodes, self.gpus_per_node = cluster.num_nodes, cluster.gpus_per_node
        self.node_of = np.arange(cluster.num_gpus) // cluster.gpus_per_node
        self.node_domain = domain_of_node(cluster)
        self.domain_of = self.node_domain[self.node_of]
        self.num_domains = int(self.domain_of.max()) + 1
        self.one_node_domains = gpus_per_domain(cluster) == cluster.gpus_per_node
        self._dense: dict[tuple, dict[str, Placement | None]] = {}
        self._groups: dict[tuple, Placement] = {}  # group_key (and pp or not) -> Placement
        self._expert: dict[tuple, dict[str, Placement | None]] = {}
        self._zero: dict[tuple, dict[str, Placement | None]] = {}
        # One object per distinct value: layouts that place a kind alike (tp = 8 under any dp
        # or pp, on these servers) share it, and with it its GroupLink (Topology._link).
        self._interned: dict[tuple, Placement] = {}

    def dense(self, tp: int, cp: int, dp: int, pp: int, order: str) -> dict[str, Placement | None]:
        """The Placement of each dense kind (KINDS; None: groups of one rank), placed once per
        distinct group array (group_key: dpcp is dp when cp = 1; tp = 8 innermost is the same
        groups under any dp, pp and order of the outer dimensions)."""
        key = (tp, cp, dp, pp, order)
        if key not in self._dense:
            sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
            out: dict[str, Placement | None] = {}
            for kind in KINDS:
                rows, cols = group_key(sizes, order, kind)
                if not cols:
                    out[kind] = None
                    continue
                gkey = (rows, cols, kind == "pp")
                if gkey not in self._groups:
                    self._groups[gkey] = self._intern(self._place(
                        rank_groups(sizes, order, kind), kind == "pp"))
                out[kind] = self._groups[gkey]
            self._dense[key] = out
        return self._dense[key]

    def expert(self, tp: int, cp: int, dp: int, pp: int, order: str, ep: int,
               etp: int) -> dict[str, Placement | None]:
        """The Placement of each expert kind (EXPERT_KINDS, planner/expert_layout.py; None:
        groups of one rank)."""
        key = (tp, cp, dp, pp, order, ep, etp)
        if key not in self._expert:
            sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
            out: dict[str, Placement | None] = {}
            for kind in EXPERT_KINDS:
                groups = expert_rank_groups(sizes, order, ep, etp, kind)
                out[kind] = None if groups.shape[1] == 1 else self._intern(
                    self._place(groups, False))
            self._expert[key] = out
        return self._expert[key]

    def zero(self, tp: int, cp: int, dp: int, pp: int, order: str,
             dp_shard: int) -> dict[str, Placement | None]:
        """The Placement of each ZeRO kind (ZERO_KINDS, planner/zero_layout.py; None: groups of
        one rank). Without hybrid sharding the shard group is dp x cp (the dense `dpcp`)."""
        if dp_shard == dp:
            return {"zshard": self.dense(tp, cp, dp, pp, order)["dpcp"], "zrep": None}
        key = (tp, cp, dp, pp, order, dp_shard)
        if key not in self._zero:
            sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
            out: dict[str, Placement | None] = {}
            for kind in ZERO_KINDS:
                groups = zero_rank_groups(sizes, order, dp_shard, kind)
                out[kind] = None if groups.shape[1] == 1 else self._intern(
                    self._place(groups, False))
            self._zero[key] = out
        return self._zero[key]

    def _intern(self, p: Placement) -> Placement:
        key = (p.size, p.ranks_per_node, p.nodes_spanned, p.ranks_per_domain,
               p.domains_spanned, p.crosses, p.flows.shape, p.flows.tobytes(),
               p.remote.tobytes(), p.senders.tobytes(), p.remote_each.tobytes())
        return self._interned.setdefault(key, p)

    def _place(self, groups: np.ndarray, pp: bool) -> Placement:
        n_groups, size = groups.shape
        gid = np.repeat(np.arange(n_groups), size)
        nodes, doms = self.node_of[groups], self.domain_of[groups]
        per_node = _places(gid, nodes.ravel(), self.num_nodes, n_groups)
        per_dom = (per_node if self.one_node_domains
                   else _places(gid, doms.ravel(), self.num_domains, n_groups))
        spans = per_dom.spans
        if pp:
            # Point-to-point between neighbouring stages: each sender to another domain is one
            # flow through its own node's uplink.
            cross = doms[:, 1:] != doms[:, :-1]
            flows = np.bincount(nodes[:, :-1][cross], minlength=self.num_nodes)
            rows = np.unique(flows[flows > 0])[:, None]
        else:
            cross = spans > 1
            rows = self._ring_flows(per_node, cross)
        return Placement(size, int(per_node.count.max()), int(per_node.spans.max()),
                         int(per_dom.count.max()), int(spans.max()), bool(cross.any()), rows,
                         *self._a2a(size, nodes.ravel(), per_dom))

    def _ring_flows(self, per_node: _Places, spanning: np.ndarray) -> np.ndarray:
        """One ring flow per spanning group touches each node it has members on, a node's uplink
        is shared by the flows touching it, and a group pools the uplinks of its nodes in each
        domain (one node per domain on 8-GPU servers, as NCCL pools a node's NICs): per (group,
        domain) the flow counts of those nodes in node order, distinct rows."""
        sel = spanning[per_node.group]
        node, group = per_node.place[sel], per_node.group[sel]
        if not len(node):
            return np.zeros((0, 1), dtype=np.int64)
        flows = np.bincount(node, minlength=self.num_nodes)[node]
        if self.one_node_domains:
            return np.unique(flows)[:, None]
        pair = group * self.num_domains + self.node_domain[node]
        inv = np.unique(pair, return_inverse=True)[1].reshape(-1)  # sorted: nodes in order
        start = np.searchsorted(inv, np.arange(inv.max() + 1))
        col = np.arange(len(inv)) - start[inv]
        out = np.zeros((len(start), int(col.max()) + 1), dtype=np.int64)
        out[inv, col] = flows
        return np.unique(out, axis=0)

    def _a2a(self, size: int, nodes: np.ndarray, per_dom: _Places) -> tuple[np.ndarray, ...]:
        """Every rank sends (size - local)/size of its message out at once, through its node's
        NICs shared by the node's sending ranks (pooled) or its own GPU's share of them."""
        remote = size - per_dom.count[per_dom.of_rank]
        sending = remote > 0
        senders = np.bincount(nodes[sending], minlength=self.num_nodes)
        r, s = remote[sending], np.maximum(1, senders[nodes])[sending]
        first = np.sort(np.unique(r * (s.max(initial=0) + 1) + s, return_index=True)[1])
        return r[first], s[first], r[np.sort(np.unique(r, return_index=True)[1])]


_SHAPES: list[tuple[tuple, Shape]] = []
_KEEP = 4  # an estimate task's searches: several GPU types, a few node counts


def shape_of(cluster: Cluster) -> Shape:
    """The Shape of clusters with this one's nodes, GPUs per node and domains."""
    key = (cluster.num_nodes, cluster.gpus_per_node, gpus_per_domain(cluster))
    for k, shape in _SHAPES:
        if k == key:
            return shape
    shape = Shape(cluster)
    _SHAPES.append((key, shape))
    del _SHAPES[:-_KEEP]
    return shape
