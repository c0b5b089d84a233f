"""Plans as columns of numpy arrays, so one implementation of the cost model serves `predict`
(a batch of one) and the vectorized search (millions of candidates)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Sequence

import numpy as np

from planner.hardware import PRECISIONS
from planner.plan import GRAD_SYNCS, ORDERS, PS_PLACEMENTS, RECOMPUTE, SCHEDULES, Plan

# Integer codes for the categorical fields (index into the tuples above).
S_1F1B, S_GPIPE, S_INTERLEAVED = (SCHEDULES.index(s) for s in ("1f1b", "gpipe", "interleaved_1f1b"))
R_NONE, R_SELECTIVE, R_FULL = (RECOMPUTE.index(r) for r in ("none", "selective", "full"))
G_RING, G_TREE, G_HIER, G_PS = (GRAD_SYNCS.index(g) for g in GRAD_SYNCS)
PS_COLOCATED, PS_DEDICATED = (PS_PLACEMENTS.index(p) for p in PS_PLACEMENTS)


# The fields that fix a plan's parallel groups (its links: planner/cost/layout.py), in the order
# the layouts are numbered.
LAYOUT_FIELDS = ("tp", "cp", "pp", "dp", "order", "ep", "etp", "dp_shard")


# Fields whose values all lie in [0, _RAW) serve as their own (bounded, not dense) codes.
_RAW = 64


def _codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(code of each value, number of distinct values), codes numbered in value order. Small
    non-negative integers (every plan field) go through a table, O(n) without a sort."""
    x = np.asarray(x)
    if not len(x):
        return np.zeros(0, dtype=np.intp), 0
    lo, hi = int(x.min()), int(x.max())
    if lo == hi:
        return np.zeros(len(x), dtype=np.intp), 1
    if hi - lo <= 2 * len(x) + 4096:
        off = x - lo if lo else x
        seen = np.zeros(hi - lo + 1, dtype=bool)
        seen[off] = True
        code = np.cumsum(seen, dtype=np.intp) - 1
        return code[off], int(code[-1]) + 1
    values, inverse = np.unique(x, return_inverse=True)
    return inverse.reshape(-1).astype(np.intp), len(values)


def field_codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Order-preserving codes of one column and a bound on them: the values themselves when
    small (no table needed), else _codes."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.intp)
    if len(x) and int(x.min()) >= 0 and (hi := int(x.max())) < _RAW:
        return x, hi + 1
    return _codes(x)


def group_codes(cols: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Combine (codes, bound) pairs into one group per distinct tuple of codes, numbered 0..k-1
    in the tuples' lexicographic order (mixed radix, re-coded densely whenever the radix
    product would outgrow a table of a few times the rows)."""
    code, k = cols[0]
    limit = 2 * len(code) + 4096
    for c, kc in cols[1:]:
        if kc == 1:
            continue  # one value: no information
        if k * kc > limit:
            code, k = _codes(code)
        code, k = code * kc + c, k * kc
    return _codes(code)


def representatives(inverse: np.ndarray, k: int) -> np.ndarray:
    """One row of each of the k groups (any: every row of a group has the same values)."""
    rep = np.zeros(k, dtype=np.intp)
    rep[inverse] = np.arange(len(inverse), dtype=np.intp)
    return rep


@dataclass(frozen=True)
class PlanArrays:
    """Struct of arrays; every field has the same length n."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    cp: np.ndarray
    mbs: np.ndarray
    gbs: np.ndarray
    vpp: np.ndarray
    schedule: np.ndarray
    zero: np.ndarray
    recompute: np.ndarray
    sp: np.ndarray
    precision: np.ndarray
    order: np.ndarray
    # Optional columns (None -> ring, 0 servers, colocated) so older constructors stay valid.
    grad_sync: np.ndarray | None = None
    ps_servers: np.ndarray | None = None
    ps_placement: np.ndarray | None = None
    ep: np.ndarray | None = None   # None -> 1 (dense plans)
    etp: np.ndarray | None = None
    dp_shard: np.ndarray | None = None  # None -> dp (ZeRO shards over every dp rank)
    passes: np.ndarray | None = None    # None -> 1 (one pipeline schedule per step)

    def __post_init__(self) -> None:
        for name in ("grad_sync", "ps_servers", "ps_placement"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.dp), dtype=np.int64))
        for name in ("ep", "etp", "passes"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.ones(len(self.dp), dtype=np.int64))
        if self.dp_shard is None:
            object.__setattr__(self, "dp_shard", np.asarray(self.dp).copy())

    def __len__(self) -> int:
        return len(self.dp)

    @property
    def edp(self) -> np.ndarray:
        """Expert data-parallel width tp*cp*dp / (etp*ep), floored (validity checks it)."""
        return self.tp * self.cp * self.dp // (self.etp * self.ep)

    @property
    def hsdp(self) -> np.ndarray:
        """Plans whose ZeRO shard group is smaller than dp (hybrid sharding)."""
        return self.dp_shard < self.dp

    @cached_property
    def micro_batches(self) -> np.ndarray:
        """m = global batch / (dp * micro-batch), floored (validity checks divisibility).
        Computed once per PlanArrays (the cost model reads it a dozen times; integer division
        over 16k plans is not free). The fields are never rebound (frozen), so it stays right."""
        return self.gbs // (self.dp * self.mbs)

    @cached_property
    def pass_micro_batches(self) -> np.ndarray:
        """Micro-batches of one pipeline schedule: micro_batches / passes (floored)."""
        return self.micro_batches // self.passes

    @cached_property
    def _memo(self) -> dict:
        """Groupings of these plans, computed once (the fields are never rebound)."""
        return {}

    def _field_codes(self, name: str) -> tuple[np.ndarray, int]:
        key = ("codes", name)
        if key not in self._memo:
            self._memo[key] = (self.layout_groups[1], len(self.layout_groups[0])) \
                if name == "layout" else field_codes(getattr(self, name))
        return self._memo[key]

    @cached_property
    def layout_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """(one plan of each distinct layout, each plan's layout), layouts numbered in the
        order of their LAYOUT_FIELDS values."""
        inv, k = group_codes([self._field_codes(f) for f in LAYOUT_FIELDS])
        return representatives(inv, k), inv

    def groups(self, *names: str) -> tuple[np.ndarray, np.ndarray]:
        """(one plan of each distinct combination of the named fields, each plan's group);
        "layout" stands for LAYOUT_FIELDS. The cost model computes a term that reads only
        those fields once per group (planner/cost/shape_cache.py on_groups)."""
        key = ("groups",) + names
        if key not in self._memo:
            inv, k = group_codes([self._field_codes(n) for n in names])
            self._memo[key] = (representatives(inv, k), inv)
        return self._memo[key]

    def take(self, idx: np.ndarray, carry: bool = False) -> "PlanArrays":
        """Subset (boolean mask or index array). With `carry`, per-plan arrays derived and kept
        in the memo (keys starting "per_plan": (owner, {name: array})) come along, indexed."""
        out = PlanArrays(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})
        if carry:
            for key, (owner, arrays) in ((k, v) for k, v in self._memo.items()
                                         if k[0] == "per_plan"):
                out._memo[key] = (owner, {k: v[idx] for k, v in arrays.items()})
        return out

    def plan(self, i: int) -> Plan:
        """Row i as a validated Plan."""
        return Plan(
            dp=int(self.dp[i]), tp=int(self.tp[i]), pp=int(self.pp[i]), cp=int(self.cp[i]),
            micro_batch_size=int(self.mbs[i]), global_batch_size=int(self.gbs[i]),
            virtual_pipeline_stages=int(self.vpp[i]), schedule=SCHEDULES[int(self.schedule[i])],
            zero_stage=int(self.zero[i]), recompute=RECOMPUTE[int(self.recompute[i])],
            sequence_parallel=bool(self.sp[i]), precision=PRECISIONS[int(self.precision[i])],
            order=ORDERS[int(self.order[i])], grad_sync=GRAD_SYNCS[int(self.grad_sync[i])],
            ps_servers=int(self.ps_servers[i]),
            ps_placement=PS_PLACEMENTS[int(self.ps_placement[i])],
            ep=int(self.ep[i]), etp=int(self.etp[i]),
            dp_shard=int(self.dp_shard[i]) if self.dp_shard[i] < self.dp[i] else None,
            pipeline_passes=int(self.passes[i]),
        )

    @staticmethod
    def from_plans(plans: list[Plan]) -> "PlanArrays":
        """Columns from validated Plans."""
        def col(get, dtype=np.int64):
            return np.array([get(p) for p in plans], dtype=dtype)
        return PlanArrays(
            dp=col(lambda p: p.dp), tp=col(lambda p: p.tp), pp=col(lambda p: p.pp),
            cp=col(lambda p: p.cp), mbs=col(lambda p: p.micro_batch_size),
            gbs=col(lambda p: p.global_batch_size), vpp=col(lambda p: p.virtual_pipeline_stages),
            schedule=col(lambda p: SCHEDULES.index(p.schedule)), zero=col(lambda p: p.zero_stage),
            recompute=col(lambda p: RECOMPUTE.index(p.recompute)),
            sp=col(lambda p: p.sequence_parallel, bool),
            precision=col(lambda p: PRECISIONS.index(p.precision)),
            order=col(lambda p: ORDERS.index(p.order)),
            grad_sync=col(lambda p: GRAD_SYNCS.index(p.grad_sync)),
            ps_servers=col(lambda p: p.ps_servers),
            ps_placement=col(lambda p: PS_PLACEMENTS.index(p.ps_placement)),
            ep=col(lambda p: p.ep), etp=col(lambda p: p.etp),
            dp_shard=col(lambda p: p.zero_shard),
            passes=col(lambda p: p.pipeline_passes),
        )
