"""The search's calls into the cost model, in chunks of plans."""

from __future__ import annotations

import numpy as np

from planner.cost.evaluate import evaluate, peak_memory
from planner.hardware import Cluster
from planner.plan_arrays import PlanArrays
from planner.topology import Topology
from planner.transformer import TransformerSpec

# Plans per cost-model call. The figures are element-wise (each plan's own fields), so the
# chunking changes no number. The cost model computes most terms once per group of plans
# (planner/cost/shape_cache.py on_groups), so larger chunks share more; past this size the
# per-plan temporaries fall out of cache (measured: 32k a little faster than 16k or 64k).
CHUNK = 32_768
STEP_KEYS = ("step_time_s", "mfu", "tokens_per_s")


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def peaks(spec: TransformerSpec, cluster: Cluster, V: PlanArrays) -> np.ndarray:
    """Peak bytes per GPU of every plan in `V`."""
    return np.concatenate([peak_memory(spec, cluster, V.take(s)) for s in _chunks(len(V))]
                          or [np.zeros(0)])


def step_figures(spec: TransformerSpec, cluster: Cluster, topo: Topology,
                 V: PlanArrays) -> dict[str, np.ndarray]:
    """STEP_KEYS of every plan in `V` (plans that fit)."""
    parts = [evaluate(spec, cluster, topo, V.take(s), with_memory=False)
             for s in _chunks(len(V))]
    return {k: np.concatenate([p[k] for p in parts] or [np.zeros(0)]) for k in STEP_KEYS}


def sort_order(step: np.ndarray, peak: np.ndarray, fits: np.ndarray) -> np.ndarray:
    """np.lexsort((peak, step, ~fits)): the plans that fit first, each part by step time, then
    peak memory, then position (stable). Sorted as complex numbers step + i peak, whose order
    is that (real part, then imaginary) without NaNs: one stable sort, not lexsort's two, and a
    fast one on the already sorted runs the blocks send. With a NaN anywhere, lexsort itself."""
    if np.isnan(step).any() or np.isnan(peak).any():
        return np.lexsort((peak, step, ~fits))
    parts = []
    for idx in (np.flatnonzero(fits), np.flatnonzero(~fits)):
        z = np.empty(len(idx), dtype=np.complex128)
        z.real, z.imag = step[idx], peak[idx]
        parts.append(idx[np.argsort(z, kind="stable")])
    return np.concatenate(parts)


def first_in_order(step: np.ndarray, peak: np.ndarray, fits: np.ndarray) -> np.ndarray:
    """sort_order(step, peak, fits)[:1] without the sort: of the plans that fit (else of the
    rest) those of the least step time, of them the least peak memory, of them the first
    (lexicographic order, as the stable sort of step + i peak; -0.0 ties 0.0 in both)."""
    if np.isnan(step).any() or np.isnan(peak).any():
        return sort_order(step, peak, fits)[:1]
    idx = np.flatnonzero(fits)
    if not len(idx):
        idx = np.flatnonzero(~fits)
    if not len(idx):
        return idx
    tie = idx[step[idx] == step[idx].min()]
    return tie[[int(np.argmin(peak[tie]))]]
