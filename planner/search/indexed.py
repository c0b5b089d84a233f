"""A search's kept plans as indices into its Space. A large search keeps millions of plans
(every one that fits) and prints a few; building all eighteen columns of millions took a
second of the merge (fresh memory is slow to touch on these machines). SpacePlans holds the
(layout, column) index of each plan and gathers a field the first time it is read; `take` and
`plan` build only the rows asked for. Every field is what Space.cells gives, value and dtype."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.search.space import Space


class SpacePlans(PlanArrays):
    """PlanArrays of the candidates (layout[i], col[i]) of `space` (see module docstring)."""

    def __init__(self, space: Space, global_batch: int, layout: np.ndarray,
                 col: np.ndarray) -> None:
        object.__setattr__(self, "_source", (space, global_batch, layout, col))

    def __len__(self) -> int:
        return len(self._source[2])

    def _field(self, name: str) -> np.ndarray:
        got = self.__dict__.setdefault("_fields", {})
        if name not in got:
            space, gbs, layout, col = self._source
            got[name] = space.field(gbs, name, layout, col)
        return got[name]

    def take(self, idx: np.ndarray, carry: bool = False) -> PlanArrays:
        """Subset (boolean mask or index array), as plain PlanArrays."""
        space, gbs, layout, col = self._source
        return space.cells(gbs, layout[idx], col[idx])

    def plan(self, i: int) -> Plan:
        """Row i as a validated Plan."""
        return self.take(np.array([i])).plan(0)


def _getter(name: str) -> property:
    return property(lambda self: self._field(name), doc=f"The `{name}` column (built once).")


for _f in fields(PlanArrays):  # every dataclass field reads through the index
    setattr(SpacePlans, _f.name, _getter(_f.name))
