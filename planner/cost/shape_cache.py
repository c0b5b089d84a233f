"""Compute times once per distinct shape. Block, head and embedding times depend on a plan only
through its Shapes (tp, cp, micro-batch, sequence parallelism, precision, ep, etp), and a search
block of 16k plans holds a few hundred distinct ones: the kernels' roofline (efficiency curves,
np.interp) runs on those and the results are spread back to every plan. Every function timed
this way is element-wise over plans, so each plan's figures are bit-for-bit what the full call
gives (tests/test_search.py compares)."""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

import numpy as np

from planner.cost.compute import Shapes

T = TypeVar("T")
# The per-plan fields of Shapes (cast_bytes and attn_eff are one value for the whole call).
FIELDS = ("tp", "cp", "mbs", "sp", "peak", "attn_peak", "fp8", "act_bytes", "gemm_bytes", "ep",
          "etp")
BOOLS = ("sp", "fp8")
# Below this many plans the unique pass costs more than it saves.
MIN_PLANS = 64


def _spread(value, inverse: np.ndarray):
    """A result computed on the distinct shapes, indexed back to every plan."""
    if dataclasses.is_dataclass(value):
        return type(value)(**{f.name: _spread(getattr(value, f.name), inverse)
                              for f in dataclasses.fields(value)})
    if isinstance(value, tuple):
        return tuple(_spread(v, inverse) for v in value)
    arr = np.asarray(value)
    return arr[inverse] if arr.ndim else value


# The distinct rows of the last Shapes seen: one cost-model call times blocks, head and
# embedding on the same Shapes, so the uniques are found once (keyed by the object itself).
_last: list = [None, None]


def by_shape(fn: Callable[[Shapes], T], sh: Shapes) -> T:
    """fn(sh), computed on sh's distinct rows only."""
    n = len(np.asarray(sh.tp))
    if n < MIN_PLANS:
        return fn(sh)
    if _last[0] is not sh:
        _last[0], _last[1] = sh, _distinct(sh, n)
    found = _last[1]
    if found is None:
        return fn(sh)
    small, inverse = found
    return _spread(fn(small), inverse)


def _distinct(sh: Shapes, n: int) -> tuple[Shapes, np.ndarray] | None:
    """(the distinct rows as a Shapes, each plan's row in it), or None where sharing saves
    little (more than half the rows distinct) or the codes would overflow."""
    # One integer code per plan from each field's own codes (1-D uniques are fast sorts).
    code = np.zeros(n, dtype=np.int64)
    cols, span = [], 1
    for f in FIELDS:
        col = np.broadcast_to(np.asarray(getattr(sh, f), dtype=float), (n,))
        values, idx = np.unique(col, return_inverse=True)
        span *= len(values)
        if span > 2**62:  # the codes would overflow: no sharing to be had anyway
            return None
        code = code * len(values) + idx.reshape(-1)
        cols.append(col)
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    if len(first) > n // 2:
        return None
    small = dataclasses.replace(sh, **{
        f: (cols[i][first] > 0.5 if f in BOOLS else cols[i][first])
        for i, f in enumerate(FIELDS)})
    return small, inverse.reshape(-1)
