"""The search's calls into the cost model, in chunks of plans."""

from __future__ import annotations

import numpy as np

from planner.cost.evaluate import evaluate, peak_memory
from planner.hardware import Cluster
from planner.plan_arrays import PlanArrays
from planner.topology import Topology
from planner.transformer import TransformerSpec

# Plans per cost-model call. The figures are element-wise (each plan's own fields), so the
# chunking changes no number; at this size the cost model's temporaries stay in cache: about a
# third faster than whole blocks of 100k plans or more.
CHUNK = 16_384
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
