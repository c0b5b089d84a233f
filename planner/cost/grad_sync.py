"""Gradient synchronisation time over the dp x cp group by `Plan.grad_sync`, vectorized over plans.

- ring: `Link.all_reduce` (bandwidth-optimal, 2(n-1) latency steps; Thakur et al. 2005).
- tree: NCCL's double binary tree (Sanders, Speck & Traeff 2009, "Two-tree algorithms for full
  bandwidth broadcast, reduction and scan"; NCCL 2.4 blog "Massively scale your deep learning
  training with NCCL 2.4"). Reduce up and broadcast down a tree of depth log2 n: 2*ceil(log2 n)
  latency steps. The two complementary trees each carry half the buffer, pipelined, so every rank
  sends and receives about the buffer once per phase: we charge the same bus volume as the ring,
  2(n-1)/n, the bandwidth-optimal bound Sanders et al. reach up to a constant (chosen honestly:
  measured NCCL tree bus bandwidth sits at or a little below ring's for large messages).
- hierarchical: reduce-scatter inside the node (k ranks), all-reduce across the m nodes of 1/k
  of the buffer (k such rings in parallel, one per local rank, each on its NIC share), all-gather
  inside the node (Goyal et al. 2017; Horovod's hierarchical all-reduce; NCCL CollNet/NVLS idea).
- parameter_server, S servers among n workers (Li et al. 2014, "Scaling distributed machine
  learning with the parameter server"; Jiang et al. 2020, BytePS, OSDI, section 3): every worker
  pushes its gradient, cut in S shards of G/S, one to each server, and pulls the S updated shards.
  colocated (a server is also a worker, full-duplex links): a server rank sends its own push to
  the S-1 other servers, (S-1)G/S, and serves the pull of the n-1 other workers, (n-1)G/S; it
  receives the same amounts. Per direction: G (n + S - 2) / S. At S = n that is 2(n-1)/n G, the
  ring all-reduce volume; with fewer servers it grows as 1/S: the servers' links are the bound.
  dedicated (servers on extra machines with the same link): a worker sends G and receives G; a
  server moves n G / S each way. Per direction: G max(1, n / S): with S >= n, half the ring's
  volume (BytePS's argument for spare CPU/bandwidth machines).
  Two latency steps (push, pull): the n-1 messages to a server proceed in parallel.
"""

from __future__ import annotations

import numpy as np

from planner.cost.comms import Link
from planner.hardware import Cluster
from planner.plan_arrays import G_HIER, G_PS, G_TREE, PS_DEDICATED, PlanArrays


def tree_all_reduce(link: Link, nbytes: np.ndarray) -> np.ndarray:
    """Double-binary-tree all-reduce: ring's bus volume, 2 ceil(log2 n) latency steps."""
    n = link.n
    steps = 2.0 * np.ceil(np.log2(np.maximum(n, 1.0)))
    return link._transfer(nbytes, 2.0 * (n - 1) / n * nbytes, steps)


def _intra_link(cluster: Cluster, like: Link, k: np.ndarray) -> Link:
    """The node-local link for groups of k ranks (NVLink switch or full mesh)."""
    intra = cluster.intra_node
    bw = np.full(k.shape, float(intra.bandwidth_GBps))
    if intra.topology == "full_mesh":
        # Multi-ring collectives use one direct link per local peer in parallel.
        bw = np.minimum(bw, np.maximum(1.0, k - 1) * float(intra.pair_bandwidth_GBps))
    return Link(n=k, bandwidth_GBps=bw, latency_s=np.full(k.shape, intra.latency_s),
                call_latency_s=np.full(k.shape, intra.call_latency_s),
                curve_id=np.full(k.shape, 1), curves=like.curves)


def hierarchical_all_reduce(cluster: Cluster, link: Link, nbytes: np.ndarray) -> np.ndarray:
    """Intra-node reduce-scatter + inter-node all-reduce of 1/k + intra-node all-gather. Groups
    inside one node (or an unknown layout) fall back to the ring."""
    if link.ranks_per_node is None or link.nodes_spanned is None:
        return link.all_reduce(nbytes)
    k, m = link.ranks_per_node, link.nodes_spanned
    intra = _intra_link(cluster, link, k)
    inter = Link(n=m, bandwidth_GBps=link.bandwidth_GBps, latency_s=link.latency_s,
                 call_latency_s=link.call_latency_s, curve_id=link.curve_id, curves=link.curves)
    shard = np.asarray(nbytes, dtype=float) / k
    hier = intra.reduce_scatter(nbytes) + inter.all_reduce(shard) + intra.all_gather(nbytes)
    return np.where(m > 1, hier, link.all_reduce(nbytes))


def ps_volume(nbytes: np.ndarray, n: np.ndarray, servers: np.ndarray,
              dedicated: np.ndarray) -> np.ndarray:
    """Bytes per direction on the busiest link (module docstring for the derivation)."""
    S = np.maximum(servers, 1).astype(float)
    colocated = nbytes * (n + S - 2.0) / S
    return np.where(dedicated, nbytes * np.maximum(1.0, n / S), colocated)


def parameter_server(link: Link, nbytes: np.ndarray, servers: np.ndarray,
                     dedicated: np.ndarray) -> np.ndarray:
    """Push gradient shards to S servers and pull updated weight shards back."""
    S = np.maximum(servers, 1).astype(float)
    vol = ps_volume(np.asarray(nbytes, dtype=float), link.n, S, dedicated)
    # Dedicated servers are separate machines: the traffic crosses the link even at n = 1.
    active = Link(n=np.where(dedicated, np.maximum(link.n, 2.0), link.n),
                  bandwidth_GBps=link.bandwidth_GBps, latency_s=link.latency_s,
                  call_latency_s=link.call_latency_s, curve_id=link.curve_id, curves=link.curves)
    return active._transfer(np.asarray(nbytes, dtype=float) / S, vol, np.full(link.n.shape, 2.0))


def grad_all_reduce(cluster: Cluster, P: PlanArrays, link: Link, nbytes: np.ndarray) -> np.ndarray:
    """Full-gradient synchronisation time for each plan's `grad_sync` (ring: `all_reduce`)."""
    ring = link.all_reduce(nbytes)
    if not (P.grad_sync != 0).any():
        return ring  # the search's common case: no extra work
    out = np.where(P.grad_sync == G_TREE, tree_all_reduce(link, nbytes), ring)
    out = np.where(P.grad_sync == G_HIER, hierarchical_all_reduce(cluster, link, nbytes), out)
    ps = parameter_server(link, nbytes, P.ps_servers, P.ps_placement == PS_DEDICATED)
    return np.where(P.grad_sync == G_PS, ps, out)
