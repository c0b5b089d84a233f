"""Compute a term once per distinct input and spread it back. Block, head and embedding times
depend on a plan only through its Shapes (tp, cp, micro-batch, sequence parallelism, precision,
ep, etp), and a search block of 16k plans holds a few hundred distinct ones (Shapes.distinct,
found once per Shapes): the kernels' roofline (efficiency curves, np.interp) runs on those and
the results are spread back to every plan. `on_groups` does the same for a term that also reads
plan fields and links (the per-block times, the expert FFN, the stage parameters): it runs on
one plan of each distinct combination of the fields it reads (PlanArrays.groups). Every
function timed this way is element-wise over plans, so each plan's figures are bit-for-bit what
the full call gives (tests/test_search.py and tests/test_search_speed_identity.py compare)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Callable, TypeVar

import numpy as np

from planner.cost.comms import Link
from planner.cost.compute import PER_PLAN_FIELDS, Shapes
from planner.plan_arrays import PlanArrays

T = TypeVar("T")
# Below this many plans the unique pass costs more than it saves (a huge value: never shared,
# which the identity tests use as the reference).
MIN_PLANS = 64


def _spread(value, inverse: np.ndarray):
    """A result computed on the distinct shapes, indexed back to every plan."""
    if dataclasses.is_dataclass(value):
        return type(value)(**{f.name: _spread(getattr(value, f.name), inverse)
                              for f in dataclasses.fields(value)})
    if isinstance(value, tuple):
        return tuple(_spread(v, inverse) for v in value)
    if isinstance(value, dict):
        return {k: _spread(v, inverse) for k, v in value.items()}
    arr = np.asarray(value)
    return arr[inverse] if arr.ndim else value


def by_shape(fn: Callable[[Shapes], T], sh: Shapes) -> T:
    """fn(sh), computed on sh's distinct rows only."""
    if len(np.asarray(sh.tp)) < MIN_PLANS or sh.distinct is None:
        return fn(sh)
    small, inverse = sh.distinct
    return _spread(fn(small), inverse)


def take_shapes(sh: Shapes, idx: np.ndarray, plans: PlanArrays | None = None) -> Shapes:
    """The Shapes of plans `idx` (the per-plan fields indexed; the rest as they are); `plans`:
    those plans' PlanArrays, if known."""
    n = len(np.asarray(sh.tp))
    return dataclasses.replace(sh, plans=plans, **{
        f: np.broadcast_to(np.asarray(getattr(sh, f)), (n,))[idx] for f in PER_PLAN_FIELDS})


def take_links(links: Mapping[str, Link], idx: np.ndarray) -> dict[str, Link]:
    """The links of plans `idx` (from the per-layout links where `links` holds them)."""
    if hasattr(links, "at"):  # planner/cost/layout.py PlanLinks
        return links.at(idx)
    return {k: link.take(idx) for k, link in links.items()}


def on_groups(fn: Callable[[PlanArrays, Shapes, Mapping[str, Link] | None], T], P: PlanArrays,
              sh: Shapes, links: Mapping[str, Link] | None,
              groups: tuple[np.ndarray, np.ndarray]) -> T:
    """fn(P, sh, links) computed on one plan of each group (`groups`: P.groups(...) over every
    field fn reads, directly or through sh and links) and spread back to every plan."""
    rep, inverse = groups
    if len(P) < MIN_PLANS or len(rep) > len(P) // 2:  # sharing would save little
        return fn(P, sh, links)
    Q = P.take(rep, carry=True)
    small = fn(Q, take_shapes(sh, rep, Q), None if links is None else take_links(links, rep))
    return _spread(small, inverse)
