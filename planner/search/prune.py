"""Validity pruning of one block of the search space, factored: a block is layouts (rows) x the
other settings (columns), and most rules read only one side (tp divides the heads: the layout;
sequence parallelism needs tp >= 2: both). Each rule is evaluated on the smallest arrays that
hold what it reads: the rows, the columns, or the cells of the rows still alive, instead of on
every candidate. The counts (first failing rule), the examples and the kept candidates are the
same as evaluating every rule on every candidate, in the same order.

Which fields a rule reads is recorded by running it on a small block through a recording proxy
(`_Recorder`). The rules are element-wise functions of the fields (validity.Check), so a rule
that reads only layout fields has the same verdict for every column of a row, and vice versa."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from planner.hardware import Cluster
from planner.plan_arrays import S_GPIPE, PlanArrays, field_codes, group_codes
from planner.transformer import TransformerSpec
from planner.validity import CHECKS

ROW_FIELDS = ("tp", "cp", "dp", "pp", "ep", "etp", "dp_shard")
COL_FIELDS = ("mbs", "vpp", "schedule", "zero", "recompute", "sp")
# One value for a whole search (Space.blocks: the batch, precision, order; the defaults).
CONST_FIELDS = ("gbs", "precision", "order", "grad_sync", "ps_servers", "ps_placement",
                "passes")

# Valid but pointless duplicates of another candidate, so not emitted: summary, and why.
REDUNDANT = {
    "zero_without_dp": ("ZeRO stage > 0 with dp*cp = 1 (same as stage 0)",
                        "nothing to shard over: one data-parallel replica"),
    "gpipe_without_pp": ("schedule gpipe with pp = 1 (same as 1f1b)",
                         "one stage: both schedules run the micro-batches back to back"),
    "zero1_under_fsdp2": (
        "ZeRO stage 1 under FSDP2 (same plan as stage 2)",
        "stack.zero_impl fsdp2 shards weights, gradients and optimizer state at stage 1 "
        "as at stage 2 (fully_shard, reshard_after_forward=False: executor/parallel/data.py); "
        "stage 2 is kept (not on stacks whose stage 2 reduces every backward)"),
}


@dataclass(frozen=True)
class Grid:
    """One block: `rows` layouts x `cols` settings, every pair a candidate (row-major)."""

    rows: dict[str, np.ndarray]
    cols: dict[str, np.ndarray]
    const: dict[str, int]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows["tp"]), len(self.cols["mbs"])

    def cells(self, r: np.ndarray, c: np.ndarray) -> PlanArrays:
        """Candidates (r[i], c[i]) as PlanArrays."""
        n = len(r)
        return PlanArrays(**{k: v[r] for k, v in self.rows.items()},
                          **{k: v[c] for k, v in self.cols.items()},
                          **{k: np.full(n, v, dtype=bool if k == "sp" else np.int64)
                             for k, v in self.const.items()})

    def row_cells(self, r: np.ndarray) -> PlanArrays:
        """Every column of rows `r`, row-major."""
        k = self.shape[1]
        return self.cells(np.repeat(r, k), np.tile(np.arange(k), len(r)))


class _Cells:
    """Every column of rows `r` of a grid as a rule reads it, without building the candidates:
    row fields as (n, 1) arrays, column fields as (1, k), constants as (1, 1). The rules are
    element-wise, so numpy broadcasting gives each its (n, k) verdicts."""

    def __init__(self, grid: Grid, r: np.ndarray) -> None:
        self._grid, self._r = grid, r

    def __getattr__(self, name: str):
        attr = getattr(PlanArrays, name, None)
        if isinstance(attr, (property, cached_property)):  # micro_batches, edp: once per cells
            v = (attr.fget if isinstance(attr, property) else attr.func)(self)
            setattr(self, name, v)
            return v
        g = self._grid
        if name in g.rows:
            v = g.rows[name][self._r][:, None]
        elif name in g.cols:
            v = g.cols[name][None, :]
        elif name in g.const:
            v = np.full((1, 1), g.const[name], dtype=np.int64)
        else:
            raise AttributeError(name)
        setattr(self, name, v)
        return v


class _Recorder:
    """Stands in for PlanArrays and notes which fields a rule reads (properties such as
    micro_batches are followed into the fields they read)."""

    def __init__(self, P: PlanArrays) -> None:
        self._P, self.read = P, set()

    def __getattr__(self, name: str):
        attr = getattr(PlanArrays, name, None)
        if isinstance(attr, (property, cached_property)):
            return (attr.fget if isinstance(attr, property) else attr.func)(self)
        self.read.add(name)
        return getattr(self._P, name)

    def __len__(self) -> int:
        return len(self._P)


Rule = tuple[str, str, Callable, Callable]  # key, summary, invalid mask, example message


def rules(cluster: Cluster) -> list[Rule]:
    """validity.CHECKS then the redundant duplicates, in the order the counts are taken."""
    out: list[Rule] = [(c.key, c.summary, c.invalid, c.message) for c in CHECKS]
    # Megatron-FSDP's stage 2 reduce-scatters every backward where stage 1 (the distributed
    # optimizer) defers: two plans there (stack.sharded_grads_reduce_each_backward).
    # With one micro-batch and one stage neither defers, so they are one plan again.
    fsdp2 = cluster.stack.zero_impl == "fsdp2"
    each = cluster.stack.sharded_grads_reduce_each_backward
    extra = {"zero_without_dp": lambda s, c, P: (P.zero > 0) & (P.dp * P.cp == 1),
             "gpipe_without_pp": lambda s, c, P: (P.schedule == S_GPIPE) & (P.pp == 1),
             "zero1_under_fsdp2": lambda s, c, P: (P.zero == 1) & fsdp2 & (
                 (not each) | ((P.micro_batches == 1) & (P.pp == 1)))}
    for key, fn in extra.items():
        why = REDUNDANT[key][1]
        out.append((key, REDUNDANT[key][0], fn, lambda s, c, P, i, why=why: why))
    return out


class Sides(list):
    """sides' answer: 'row', 'col' or 'cell' per rule, and the column fields any rule reads."""

    col_fields: frozenset = frozenset(COL_FIELDS)


def sides(spec: TransformerSpec, cluster: Cluster, grid: Grid, rs: list[Rule]) -> Sides:
    """'row', 'col' or 'cell' per rule: the fields it reads, recorded on a few candidates."""
    n_r, n_c = grid.shape
    sample = grid.row_cells(np.arange(min(n_r, 4)))
    out, cols = Sides(), set()
    for _, _, fn, _ in rs:
        rec = _Recorder(sample)
        fn(spec, cluster, rec)
        read = rec.read - set(CONST_FIELDS)
        cols |= read & set(COL_FIELDS)
        out.append("row" if read <= set(ROW_FIELDS) else
                   "col" if read <= set(COL_FIELDS) else "cell")
    out.col_fields = frozenset(cols)
    return out


def _column_classes(grid: Grid, fields) -> tuple[Grid, np.ndarray, np.ndarray, np.ndarray]:
    """Columns no rule tells apart (equal in every column field a rule reads; the others, such
    as recompute, no rule reads) are checked once: (the grid with one column per class, each
    column's class, the columns per class, each class's first column)."""
    n_c = grid.shape[1]
    names = [f for f in COL_FIELDS if f in fields]
    if not n_c:
        return grid, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), np.zeros(
            0, dtype=np.intp)
    if names:
        of_col, k = group_codes([field_codes(grid.cols[f]) for f in names])
    else:  # no rule reads a column field: one class
        of_col, k = np.zeros(n_c, dtype=np.intp), 1
    first = np.full(k, n_c, dtype=np.intp)
    np.minimum.at(first, of_col, np.arange(n_c, dtype=np.intp))
    cols = {f: v[first] for f, v in grid.cols.items()}
    return Grid(rows=grid.rows, cols=cols, const=grid.const), of_col, np.bincount(
        of_col, minlength=k), first


def prune_grid(spec: TransformerSpec, cluster: Cluster, grid: Grid, rs: list[Rule],
               kinds: list[str], counts: dict[str, int],
               examples: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the valid candidates, row-major; tallies the first failing rule of every
    pruned candidate into `counts` and one message per rule into `examples`. The rules run on
    column classes (_column_classes); `ok` marks the (alive row, class) pairs no rule has
    failed yet, and every alive row keeps one at least."""
    n_r, n_c = grid.shape
    red, of_col, mult, first_col = _column_classes(
        grid, getattr(kinds, "col_fields", COL_FIELDS))
    k = red.shape[1]
    alive = np.arange(n_r)                   # rows with a valid candidate left
    ok = np.ones((n_r, k), dtype=bool)       # per alive row
    rows_P = grid.cells(np.arange(n_r), np.zeros(n_r, dtype=np.int64))
    cols_P = red.cells(np.zeros(k, dtype=np.int64), np.arange(k))
    cells = None
    for (key, summary, fn, message), kind in zip(rs, kinds):
        if not len(alive) or not k:
            break
        if kind == "row":
            hit = _flags(fn(spec, cluster, rows_P), n_r)[alive]
            if not hit.any():
                continue
            first = ok & hit[:, None]
        elif kind == "col":
            m = _flags(fn(spec, cluster, cols_P), k)
            if not m.any():
                continue
            first = ok & m[None, :]
        else:
            if cells is None:
                cells = _Cells(red, alive)
            m = np.broadcast_to(np.asarray(fn(spec, cluster, cells), dtype=bool),
                                (len(alive), k))
            first = m & ok
        per_class = np.count_nonzero(first, axis=0)
        n = int(per_class @ mult)
        if not n:
            continue
        counts[summary] = counts.get(summary, 0) + n
        if summary not in examples:  # the first in row-major order of the whole block
            i = int(np.argmax(first.any(axis=1)))
            j = int(first_col[first[i]].min())
            examples[summary] = message(spec, cluster, grid.cells(alive[i:i + 1],
                                                                  np.array([j])), 0)
        ok &= ~first
        live = ok.any(axis=1)
        if not live.all():
            alive, ok, cells = alive[live], ok[live], None
    if not k:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    same = k == n_c and np.array_equal(of_col, np.arange(n_c))  # classes are the columns
    r, c = np.nonzero(ok if same else ok[:, of_col])
    return alive[r], c


def _flags(mask, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(mask, dtype=bool), (n,))
