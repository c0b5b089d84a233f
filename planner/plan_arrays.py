"""Plans as columns of numpy arrays, so one implementation of the cost model serves `predict`
(a batch of one) and the vectorized search (millions of candidates)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from planner.hardware import PRECISIONS
from planner.plan import GRAD_SYNCS, ORDERS, PS_PLACEMENTS, RECOMPUTE, SCHEDULES, Plan

# Integer codes for the categorical fields (index into the tuples above).
S_1F1B, S_GPIPE, S_INTERLEAVED = (SCHEDULES.index(s) for s in ("1f1b", "gpipe", "interleaved_1f1b"))
R_NONE, R_SELECTIVE, R_FULL = (RECOMPUTE.index(r) for r in ("none", "selective", "full"))
G_RING, G_TREE, G_HIER, G_PS = (GRAD_SYNCS.index(g) for g in GRAD_SYNCS)
PS_COLOCATED, PS_DEDICATED = (PS_PLACEMENTS.index(p) for p in PS_PLACEMENTS)


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

    def __post_init__(self) -> None:
        for name in ("grad_sync", "ps_servers", "ps_placement"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.dp), dtype=np.int64))
        for name in ("ep", "etp"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.ones(len(self.dp), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.dp)

    @property
    def edp(self) -> np.ndarray:
        """Expert data-parallel width tp*cp*dp / (etp*ep), floored (validity checks it)."""
        return self.tp * self.cp * self.dp // (self.etp * self.ep)

    @cached_property
    def micro_batches(self) -> np.ndarray:
        """m = global batch / (dp * micro-batch), floored (validity checks divisibility).
        Computed once per PlanArrays (the cost model reads it a dozen times; integer division
        over 16k plans is not free). The fields are never rebound (frozen), so it stays right."""
        return self.gbs // (self.dp * self.mbs)

    def take(self, idx: np.ndarray) -> "PlanArrays":
        """Subset (boolean mask or index array)."""
        return PlanArrays(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

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
        )
