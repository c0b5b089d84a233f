"""Compute times once per distinct shape. Block, head and embedding times depend on a plan only
through its Shapes (tp, cp, micro-batch, sequence parallelism, precision, ep, etp), and a search
block of 16k plans holds a few hundred distinct ones (Shapes.distinct, found once per Shapes):
the kernels' roofline (efficiency curves, np.interp) runs on those and the results are spread
back to every plan. Every function timed this way is element-wise over plans, so each plan's
figures are bit-for-bit what the full call gives (tests/test_search.py compares)."""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

import numpy as np

from planner.cost.compute import Shapes

T = TypeVar("T")
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


def by_shape(fn: Callable[[Shapes], T], sh: Shapes) -> T:
    """fn(sh), computed on sh's distinct rows only."""
    if len(np.asarray(sh.tp)) < MIN_PLANS or sh.distinct is None:
        return fn(sh)
    small, inverse = sh.distinct
    return _spread(fn(small), inverse)
