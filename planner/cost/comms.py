"""Alpha-beta collective times on the link a group crosses (ring algorithms, as NCCL uses for
large messages; Thakur et al. 2005, 'Optimization of Collective Communication Operations in
MPICH'). `bus` volume factors follow the nccl-tests convention: an all-reduce moves
2(n-1)/n of the buffer per rank, all-gather, reduce-scatter and all-to-all (n-1)/n (NVIDIA
nccl-tests doc/PERFORMANCE.md @03a204a, "Summary" of bus bandwidth factors).

`Link` holds per-plan arrays, so every function here is vectorized over plans."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from planner.cost.efficiency import curve


@dataclass(frozen=True)
class Link:
    """Per-plan link of one group kind: size n, bandwidth (GB/s, per rank per direction),
    latency (s per step) and which efficiency curve applies (index into `curves`)."""

    n: np.ndarray
    bandwidth_GBps: np.ndarray
    latency_s: np.ndarray
    call_latency_s: np.ndarray
    curve_id: np.ndarray
    curves: tuple[tuple[tuple[float, float], ...], ...]
    ranks_per_node: np.ndarray | None = None
    """Most group members on one node (hierarchical all-reduce); None: unknown."""
    nodes_spanned: np.ndarray | None = None
    """Most nodes one group spans; None: unknown."""
    # All-to-all split (planner/topology.py GroupLink); None: the whole group inside one
    # scale-up domain on this link's own bandwidth and curve.
    ranks_per_domain: np.ndarray | None = None
    """Most group members in one scale-up domain (NVLink domain; = ranks_per_node on 8-GPU
    servers)."""
    local_bandwidth_GBps: np.ndarray | None = None
    """Per-rank scale-up bandwidth to peers in the same domain."""
    local_curve_id: np.ndarray | None = None
    """Efficiency curve of the scale-up links (index into `curves`)."""
    remote_fraction: np.ndarray | None = None
    """Largest fraction of one rank's all-to-all message that leaves its domain."""
    remote_bandwidth_GBps: np.ndarray | None = None
    """That rank's share of its node's NICs while every rank sends out at once."""
    remote_curve_id: np.ndarray | None = None
    """Efficiency curve of the NICs (index into `curves`)."""
    domains_spanned: np.ndarray | None = None
    """Most scale-up domains one group spans; None: unknown (every ring step at latency_s)."""
    intra_latency_s: np.ndarray | None = None
    """Per-step latency of a ring hop inside a domain (NaN or None: latency_s)."""

    def take(self, idx: np.ndarray) -> "Link":
        """The link of plans `idx` (every per-plan array indexed; `curves` shared)."""
        return Link(**{f.name: (v if f.name == "curves" or v is None else v[idx])
                       for f in fields(self) for v in [getattr(self, f.name)]})

    def efficiency(self, nbytes: np.ndarray, curve_id: np.ndarray | None = None) -> np.ndarray:
        """Fraction of bandwidth reached for messages of `nbytes` (on `curve_id`'s curves,
        default this link's bounding one)."""
        nbytes = np.broadcast_to(np.asarray(nbytes, dtype=float), self.n.shape)
        ids = self.curve_id if curve_id is None else curve_id
        out = np.ones(self.n.shape)
        for cid, pts in enumerate(self.curves):
            sel = ids == cid
            if sel.any():
                out[sel] = curve(pts, nbytes[sel] / 1e6)
        return out

    def _transfer(self, nbytes: np.ndarray, volume: np.ndarray, steps: np.ndarray,
                  collective: bool = True, rounds: float | None = None) -> np.ndarray:
        """Latency + volume at the size's efficiency. `rounds` (ring collectives: 1 for an
        all-gather or reduce-scatter, 2 for an all-reduce) splits the steps by hop tier
        (ring_latency); None: every step at latency_s."""
        active = self.n > 1
        bw = np.where(active, self.bandwidth_GBps, 1.0) * 1e9 * self.efficiency(nbytes)
        fixed = self.call_latency_s if collective else 0.0
        lat = steps * self.latency_s if rounds is None else self.ring_latency(steps, rounds)
        return np.where(active, fixed + lat + volume / bw, 0.0)

    def ring_latency(self, steps: np.ndarray, rounds: float) -> np.ndarray:
        """Latency of a ring of `steps` steps in `rounds` passes round the ring. A ring laid
        out domain by domain crosses the network at m - 1 of each pass's steps (m the domains
        it spans); the rest are scale-up hops at their own latency. This is NCCL's tuning
        model: ring latency = (nsteps - nInterSteps) x intraLat + nInterSteps x interLat, with
        nInterSteps = nNodes - 1 for all-gather / reduce-scatter and 2 (nNodes - 1) for
        all-reduce (NVIDIA/nccl src/graph/tuning.cc, ncclTopoTuneModel, at 2.9.9-1
        3fec2fa, 2021-05). A chunk is forwarded hop by hop as it arrives, so the fill of the
        pipeline, not every step, pays the network hop's latency."""
        if self.domains_spanned is None or self.intra_latency_s is None:
            return steps * self.latency_s
        inter = np.minimum(steps, rounds * np.maximum(self.domains_spanned - 1.0, 0.0))
        intra = np.where(np.isnan(self.intra_latency_s), self.latency_s, self.intra_latency_s)
        return inter * self.latency_s + (steps - inter) * intra

    def all_reduce(self, nbytes: np.ndarray) -> np.ndarray:
        """Ring all-reduce of an `nbytes` buffer on every rank."""
        n = self.n
        return self._transfer(nbytes, 2.0 * (n - 1) / n * nbytes, 2.0 * (n - 1), rounds=2.0)

    def all_gather(self, nbytes: np.ndarray) -> np.ndarray:
        """Ring all-gather producing an `nbytes` buffer (each rank contributes nbytes/n)."""
        n = self.n
        return self._transfer(nbytes, (n - 1) / n * nbytes, n - 1.0, rounds=1.0)

    def reduce_scatter(self, nbytes: np.ndarray) -> np.ndarray:
        """Ring reduce-scatter of an `nbytes` buffer (each rank keeps nbytes/n)."""
        return self.all_gather(nbytes)

    def p2p(self, nbytes: np.ndarray) -> np.ndarray:
        """One point-to-point send of `nbytes` to a neighbour in the group."""
        return self._transfer(nbytes, np.asarray(nbytes, dtype=float), np.ones(self.n.shape),
                              collective=False)

    def all_to_all(self, msg_bytes: np.ndarray, remote_scale: np.ndarray | float = 1.0,
                   local_scale: np.ndarray | float = 1.0,
                   kernel_efficiency: float | None = None) -> np.ndarray:
        """All-to-all where each rank sends `msg_bytes` in total, msg/n to each of the n ranks
        (its own 1/n never leaves it). Bus volume (n-1)/n msg, as nccl-tests' alltoall busbw
        (doc/PERFORMANCE.md @03a204a). Efficiency: read at msg, the size nccl-tests reports an
        alltoall's busbw against and the convention all_gather / reduce_scatter follow here.
        The profile curves are ring-collective busbw by whole buffer, whose steps already move
        buffer/n chunks and whose small-size fall already holds the per-step latencies; reading
        them at the per-peer msg/n would count both twice (for ep=64 on NVLink 5 a 64 MiB and a
        256 MiB all-to-all would take the same 2.3 ms). Latency: n-1 steps, as the pairwise
        exchange MPICH uses for long messages (Thakur et al. 2005). A group spanning scale-up
        domains splits each rank's data: (ranks in its domain - 1)/n goes over NVLink,
        `remote_fraction` (worst rank: (n - ranks in its domain)/n) through its NIC share. The
        two paths are disjoint and NCCL issues all sends of one all-to-all together (one
        grouped call), so the slower part bounds the time (max, not sum). `remote_scale`
        shrinks the part that leaves the domain (a dispatcher that sends a token once per remote
        node: planner/cost/moe_cost.py). `kernel_efficiency` (a dispatcher's own kernels,
        stack.ep_link_efficiency) replaces the curves by one measured fraction of the link and
        the n-1 pairwise steps by one: every peer is written from one kernel."""
        n = self.n
        msg = np.broadcast_to(np.asarray(msg_bytes, dtype=float), n.shape)
        active = n > 1
        n_safe = np.where(active, n, 1.0)
        k = n if self.ranks_per_domain is None else np.minimum(self.ranks_per_domain, n)
        remote = ((n - k) / n_safe if self.remote_fraction is None
                  else np.asarray(self.remote_fraction, dtype=float)) * remote_scale
        local = np.maximum(k - 1.0, 0.0) / n_safe * local_scale
        bw_l = self.local_bandwidth_GBps
        bw_l = self.bandwidth_GBps if bw_l is None else bw_l
        bw_r = self.remote_bandwidth_GBps
        bw_r = self.bandwidth_GBps if bw_r is None else bw_r
        if kernel_efficiency is None:
            eff_l = self.efficiency(msg, self.local_curve_id)
            eff_r = self.efficiency(msg, self.remote_curve_id)
            steps = n - 1.0
        else:
            eff_l = eff_r = kernel_efficiency
            steps = 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            t_local = np.where(local > 0, local * msg / (np.asarray(bw_l) * 1e9 * eff_l), 0.0)
            t_remote = np.where(remote > 0, remote * msg / (np.asarray(bw_r) * 1e9 * eff_r),
                                0.0)
        t = self.call_latency_s + steps * self.latency_s + np.maximum(t_local, t_remote)
        return np.where(active, t, 0.0)
