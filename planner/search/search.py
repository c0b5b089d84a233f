"""The search loop: generate candidates block by block, prune invalid ones with reasons, evaluate
the rest in bulk with the same cost functions `predict` uses, rank by step time (tie-break
memory), and keep the Pareto front of step time vs. memory."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from planner.cost.layout import topology_for
from planner.hardware import Cluster
from planner.nvlink_domain import gpus_per_domain
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.search import shared
from planner.search.indexed import SpacePlans
from planner.search.prune import REDUNDANT  # noqa: F401  (re-exported: its old home)
from planner.search.prune import Grid, Rule, prune_grid, rules, sides
from planner.search.space import Space
from planner.search.steps import STEP_KEYS, first_in_order, peaks, sort_order, step_figures
from planner.topology import Topology
from planner.transformer import TransformerSpec

NO_FIT = "does not fit in GPU memory"
KEEP_NOT_FITTING = 1000  # plans that do not fit kept per block, smallest peak memory first
PARALLEL_MIN_CANDIDATES = 1_000_000  # smaller spaces take less than starting the processes


@dataclass
class SearchResult:
    """Everything the CLI prints: counts, reasons, ranked plans and the Pareto front."""

    candidates: int
    pruned: dict[str, int]
    """Reason summary -> candidates pruned for it (first failing rule counts)."""
    examples: dict[str, str]
    """Reason summary -> the full message for one pruned candidate."""
    valid: int
    fitting: int
    plans: PlanArrays
    """The fitting candidates sorted by (step time, peak memory), then the non-fitting ones
    kept (the smallest peak memory of each block: KEEP_NOT_FITTING) by peak memory (only the
    first of them all for search(best_only=True)); `valid` counts every valid candidate."""
    step_time_s: np.ndarray
    """Seconds per step (inf for plans that do not fit: not evaluated)."""
    peak_bytes: np.ndarray
    fits: np.ndarray
    mfu: np.ndarray
    tokens_per_s: np.ndarray
    pareto: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    """Indices into `plans` of the fitting plans no other fitting plan beats on both time and
    memory, fastest first."""
    seconds: float = 0.0
    ranked_by: str = "step_time_s"
    """What the fitting plans are sorted by (`goodput_step_time_s` after rerank_fitting)."""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-plan figures of a re-ranking (aligned with `plans`; fitting plans only)."""

    def plan(self, i: int) -> Plan:
        """Ranked plan i as a Plan."""
        return self.plans.plan(i)


def rerank_fitting(res: SearchResult, key: np.ndarray, name: str,
                   extra: dict[str, np.ndarray]) -> SearchResult:
    """`res` with its fitting plans re-sorted by `key` (one value per fitting plan, in the
    current order; tie-break memory) and the Pareto front recomputed on (`key`, memory); the
    plans that do not fit stay behind them. The vectorized search itself is untouched."""
    n = res.fitting
    order = np.concatenate([np.lexsort((res.peak_bytes[:n], key)), np.arange(n, len(res.plans))])
    pick = lambda a: a[order]  # noqa: E731
    out = SearchResult(
        candidates=res.candidates, pruned=res.pruned, examples=res.examples, valid=res.valid,
        fitting=n, plans=res.plans.take(order), step_time_s=pick(res.step_time_s),
        peak_bytes=pick(res.peak_bytes), fits=pick(res.fits), mfu=pick(res.mfu),
        tokens_per_s=pick(res.tokens_per_s), seconds=res.seconds, ranked_by=name,
        extra={k: np.asarray(v)[order[:n]] for k, v in {**extra, name: key}.items()})
    if n:
        out.pareto = pareto_front(out.extra[name], out.peak_bytes[:n])
    return out


def pareto_front(step: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Indices of points not dominated on (step, peak), sorted by step then peak."""
    order = np.lexsort((peak, step))
    best = np.minimum.accumulate(peak[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = peak[order][1:] < best[:-1]
    return order[keep]


def _front_of_sorted(peak: np.ndarray) -> np.ndarray:
    """pareto_front of points already sorted by (step, peak)."""
    keep = np.ones(len(peak), dtype=bool)
    keep[1:] = peak[1:] < np.minimum.accumulate(peak)[:-1]
    return np.flatnonzero(keep)


def _valid(spec: TransformerSpec, cluster: Cluster, grid: Grid,
           checks: tuple[list[Rule], list[str]]) -> tuple:
    """A block's GPU-independent part (planner/search/shared.py): (pruned counts, examples,
    rows and columns of the valid candidates, their peak memory or None)."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    r, c = prune_grid(spec, cluster, grid, *checks, counts, examples)
    # Memory first (cheap); step time only for plans that fit.
    peak = peaks(spec, cluster, grid.cells(r, c)) if len(r) else None
    return counts, examples, r, c, peak


def _evaluate_block(spec: TransformerSpec, cluster: Cluster, topo: Topology, grid: Grid,
                    valid: tuple, presort: bool) -> tuple:
    """One block of candidates: (pruned counts, examples, valid count, the kept plans as
    (grid rows, grid columns) or None, their figures or None). Indices, not plans, go back to
    the merge: a fraction of the bytes to copy between processes. `valid`: _valid's. With
    `presort` (blocks shared among processes) the kept plans come in the merge's order."""
    counts, examples, r, c, peak = valid
    counts, examples = dict(counts), dict(examples)
    if not len(r):
        return counts, examples, 0, None, None
    fits = peak <= cluster.gpu.memory_bytes
    # Of the plans that do not fit only the smallest few are kept (for "the smallest needs
    # ..."); copying millions of them is most of a large search's time.
    spare = np.flatnonzero(~fits)
    spare = spare[np.argsort(peak[spare], kind="stable")[:KEEP_NOT_FITTING]]
    sel = np.concatenate([np.flatnonzero(fits), spare])
    figs = {"step_time_s": np.full(len(sel), np.inf), "memory.peak_bytes": peak[sel],
            "fits": fits[sel], "mfu": np.zeros(len(sel)), "tokens_per_s": np.zeros(len(sel))}
    n_fit = int(fits.sum())
    if n_fit:
        ev = step_figures(spec, cluster, topo, grid.cells(r[fits], c[fits]))
        for k in STEP_KEYS:
            figs[k][:n_fit] = ev[k]
    n_valid, r, c = len(r), r[sel], c[sel]
    if presort:  # a stable sort of the block's part: the merge then sorts runs, in less time
        o = sort_order(figs["step_time_s"], figs["memory.peak_bytes"], figs["fits"])
        r, c, figs = r[o], c[o], {k: v[o] for k, v in figs.items()}
    return counts, examples, n_valid, (r.astype(np.int32), c.astype(np.int32)), figs


def _layouts_per_block(space: Space, block_candidates: int) -> int:
    return max(1, block_candidates // space.per_layout)


def _blocks(spec: TransformerSpec, cluster: Cluster, global_batch_size: int, precision: str,
            block_candidates: int, hybrid: bool, part: int, parts: int) -> Iterator[tuple]:
    """(block index, candidates, _evaluate_block's result) for blocks part, part + parts, ...
    of the space."""
    space = Space.build(cluster.num_gpus, spec.num_layers, global_batch_size, precision,
                        spec.moe, hsdp_node(cluster) if hybrid else None)
    topo = topology_for(cluster)
    key = shared.space_key(spec, cluster, global_batch_size, precision, block_candidates,
                           hybrid)
    checks = None
    for b, grid in enumerate(space.grids(global_batch_size,
                                         _layouts_per_block(space, block_candidates))):
        if b % parts == part:
            valid = shared.get(key, b)
            if valid is None:
                if checks is None:  # which side of the grid each rule reads, once per search
                    rs = rules(cluster)
                    checks = (rs, sides(spec, cluster, grid, rs))
                valid = _valid(spec, cluster, grid, checks)
                shared.put(key, b, valid)
            yield b, grid.shape[0] * grid.shape[1], _evaluate_block(spec, cluster, topo, grid,
                                                                    valid, parts > 1)


def hsdp_node(cluster: Cluster) -> int | None:
    """The scale-up domain size (GPUs of one node, or of an NVLink domain larger than a node)
    the search plans hybrid sharding in (planner/search/space.py), where the stack runs ZeRO
    as FSDP2 (torch FSDP2 / HSDP, Megatron-Core's distributed-optimizer instances and
    Megatron-FSDP); None for the DeepSpeed stacks and clusters of one domain."""
    domain = gpus_per_domain(cluster)
    if cluster.stack.zero_impl != "fsdp2" or cluster.num_gpus <= domain:
        return None
    return domain


def _worker(*args) -> list[tuple]:
    """A process's share of the blocks (see _blocks)."""
    return list(_blocks(*args))


def search(spec: TransformerSpec, cluster: Cluster, global_batch_size: int,
           precision: str = "bf16", progress: Callable[[int, int], None] | None = None,
           block_candidates: int = 400_000, workers: int = 1,
           best_only: bool = False, hybrid: bool = True) -> SearchResult:
    """Search the whole space (see planner/search/space.py) for `spec` on `cluster`. With
    `workers` > 1 the blocks are shared among that many processes (spaces of a million
    candidates or more); the result is the same, merged in block order. `best_only`: the
    result holds only the first plan of the ranking (the counts are all there), which is all
    `paraplan estimate` prices: sorting every kept plan was a tenth of its time. `hybrid`:
    search hybrid sharding too (dp_shard inside a scale-up domain, where the stack runs ZeRO
    as FSDP2: planner/search/space.py)."""
    t0 = time.perf_counter()
    space = Space.build(cluster.num_gpus, spec.num_layers, global_batch_size, precision,
                        spec.moe, hsdp_node(cluster) if hybrid else None)
    args = (spec, cluster, global_batch_size, precision, block_candidates, hybrid)
    blocks = _run(args, space.size, workers, progress)
    per_block = _layouts_per_block(space, block_candidates)
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    layout: list[np.ndarray] = []
    col: list[np.ndarray] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("step_time_s", "memory.peak_bytes", "fits", "mfu",
                                           "tokens_per_s")}
    valid = 0
    for b, _, (c, e, v, kept, r) in blocks:  # block order: the serial search's counts, examples
        for k, n in c.items():
            counts[k] = counts.get(k, 0) + n
        for k, msg in e.items():
            examples.setdefault(k, msg)
        valid += v
        if kept is not None:
            layout.append(kept[0] + np.int64(b * per_block))  # the block's rows in `layouts`
            col.append(kept[1])
            for k in cols:
                cols[k].append(np.asarray(r[k]))
    cat = lambda a, dtype: np.concatenate(a) if a else np.zeros(0, dtype=dtype)  # noqa: E731
    figs = {k: cat(v, bool if k == "fits" else float) for k, v in cols.items()}
    res = _rank(space, global_batch_size, counts, examples, cat(layout, np.int64),
                cat(col, np.int64), figs, valid, best_only)
    res.seconds = time.perf_counter() - t0
    return res


def _run(args: tuple, size: int, workers: int,
         progress: Callable[[int, int], None] | None) -> list[tuple]:
    """Every block's result, in block order (shared among `workers` processes if large)."""
    blocks: list[tuple] = []
    done = 0
    if workers > 1 and size >= PARALLEL_MIN_CANDIDATES:
        parts = 4 * workers  # more parts than workers: progress, and balance across blocks
        with ProcessPoolExecutor(workers) as pool:
            for fut in as_completed([pool.submit(_worker, *args, k, parts)
                                     for k in range(parts)]):
                got = fut.result()
                blocks += got
                done += sum(n for _, n, _ in got)
                if progress:
                    progress(done, size)
        blocks.sort(key=lambda b: b[0])
    else:
        for b, n, res in _blocks(*args, 0, 1):
            blocks.append((b, n, res))
            done += n
            if progress:
                progress(done, size)
    return blocks


def _rank(space: Space, global_batch: int, counts: dict[str, int], examples: dict[str, str],
          layout: np.ndarray, col: np.ndarray, c: dict[str, np.ndarray],
          valid: int, best_only: bool = False) -> SearchResult:
    """Sort the kept plans (`layout`, `col`: indices into the space's layouts and columns):
    fitting by step time, then memory; the rest by memory (`best_only`: only the first). The
    plans are built once, in the final order."""
    step, peak, fits = c["step_time_s"], c["memory.peak_bytes"], c["fits"].astype(bool)
    # np.lexsort((peak, step, ~fits)), or its first element
    order = first_in_order(step, peak, fits) if best_only else sort_order(step, peak, fits)
    fitting = int(fits.sum())
    if valid - fitting:
        counts[NO_FIT] = valid - fitting
    res = SearchResult(
        candidates=space.size, pruned=counts, examples=examples, valid=valid, fitting=fitting,
        plans=SpacePlans(space, global_batch, layout[order], col[order]), step_time_s=step[order],
        peak_bytes=peak[order], fits=fits[order], mfu=c["mfu"][order],
        tokens_per_s=c["tokens_per_s"][order])
    if fitting:
        # The fitting plans are sorted by (step, peak) already, ties in block order, which is
        # the order pareto_front's stable sort would give: only its scan is left to do.
        res.pareto = _front_of_sorted(res.peak_bytes[:fitting])
    return res
