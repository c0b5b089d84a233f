"""Alpha-beta collective times on the link a group crosses (ring algorithms, as NCCL uses for
large messages; Thakur et al. 2005, 'Optimization of Collective Communication Operations in
MPICH'). `bus` volume factors follow the nccl-tests convention: an all-reduce moves
2(n-1)/n of the buffer per rank, all-gather and reduce-scatter (n-1)/n.

`Link` holds per-plan arrays, so every function here is vectorized over plans."""

from __future__ import annotations

from dataclasses import dataclass

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

    def efficiency(self, nbytes: np.ndarray) -> np.ndarray:
        """Fraction of bandwidth reached for messages of `nbytes`."""
        nbytes = np.broadcast_to(np.asarray(nbytes, dtype=float), self.n.shape)
        out = np.ones(self.n.shape)
        for cid, pts in enumerate(self.curves):
            sel = self.curve_id == cid
            if sel.any():
                out[sel] = curve(pts, nbytes[sel] / 1e6)
        return out

    def _transfer(self, nbytes: np.ndarray, volume: np.ndarray, steps: np.ndarray,
                  collective: bool = True) -> np.ndarray:
        active = self.n > 1
        bw = np.where(active, self.bandwidth_GBps, 1.0) * 1e9 * self.efficiency(nbytes)
        fixed = self.call_latency_s if collective else 0.0
        return np.where(active, fixed + steps * self.latency_s + volume / bw, 0.0)

    def all_reduce(self, nbytes: np.ndarray) -> np.ndarray:
        """Ring all-reduce of an `nbytes` buffer on every rank."""
        n = self.n
        return self._transfer(nbytes, 2.0 * (n - 1) / n * nbytes, 2.0 * (n - 1))

    def all_gather(self, nbytes: np.ndarray) -> np.ndarray:
        """Ring all-gather producing an `nbytes` buffer (each rank contributes nbytes/n)."""
        n = self.n
        return self._transfer(nbytes, (n - 1) / n * nbytes, n - 1.0)

    def reduce_scatter(self, nbytes: np.ndarray) -> np.ndarray:
        """Ring reduce-scatter of an `nbytes` buffer (each rank keeps nbytes/n)."""
        return self.all_gather(nbytes)

    def p2p(self, nbytes: np.ndarray) -> np.ndarray:
        """One point-to-point send of `nbytes` to a neighbour in the group."""
        return self._transfer(nbytes, np.asarray(nbytes, dtype=float), np.ones(self.n.shape),
                              collective=False)
