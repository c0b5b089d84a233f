"""The search loop: generate candidates block by block, prune invalid ones with reasons, evaluate
the rest in bulk with the same cost functions `predict` uses, rank by step time (tie-break
memory), and keep the Pareto front of step time vs. memory."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from planner.cost.evaluate import evaluate, peak_memory
from planner.hardware import Cluster
from planner.plan import Plan
from planner.plan_arrays import S_GPIPE, PlanArrays
from planner.search.space import Space
from planner.topology import Topology
from planner.transformer import TransformerSpec
from planner.validity import CHECKS, invalid_masks

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
        "stage 2 is kept"),
}
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
    kept (the smallest peak memory of each block: KEEP_NOT_FITTING) by peak memory; `valid`
    counts every valid candidate."""
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


def _prune(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, counts: dict[str, int],
           examples: dict[str, str]) -> np.ndarray:
    """Boolean keep-mask; tallies the first failing reason of every pruned candidate."""
    masks = invalid_masks(spec, cluster, P)
    masks["zero_without_dp"] = (P.zero > 0) & (P.dp * P.cp == 1)
    masks["gpipe_without_pp"] = (P.schedule == S_GPIPE) & (P.pp == 1)
    masks["zero1_under_fsdp2"] = (P.zero == 1) & (cluster.stack.zero_impl == "fsdp2")
    bad = np.zeros(len(P), dtype=bool)
    checks = {c.key: c for c in CHECKS}
    for key, mask in masks.items():
        first = mask & ~bad
        n = int(first.sum())
        if n:
            summary = checks[key].summary if key in checks else REDUNDANT[key][0]
            counts[summary] = counts.get(summary, 0) + n
            if summary not in examples:
                examples[summary] = (checks[key].message(spec, cluster, P, int(np.argmax(first)))
                                     if key in checks else REDUNDANT[key][1])
        bad |= mask
    return ~bad


def pareto_front(step: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Indices of points not dominated on (step, peak), sorted by step then peak."""
    order = np.lexsort((peak, step))
    best = np.minimum.accumulate(peak[order])
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = peak[order][1:] < best[:-1]
    return order[keep]


def _evaluate_block(spec: TransformerSpec, cluster: Cluster, topo: Topology,
                    P: PlanArrays) -> tuple:
    """One block of candidates: (pruned counts, examples, valid count, kept plans or None,
    their figures or None)."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    keep = _prune(spec, cluster, P, counts, examples)
    if not keep.any():
        return counts, examples, 0, None, None
    V = P.take(keep)
    # Memory first (cheap); step time only for plans that fit.
    peak = peak_memory(spec, cluster, V)
    fits = peak <= cluster.gpu.memory_bytes
    # Of the plans that do not fit only the smallest few are kept (for "the smallest needs
    # ..."); copying millions of them is most of a large search's time.
    spare = np.flatnonzero(~fits)
    spare = spare[np.argsort(peak[spare], kind="stable")[:KEEP_NOT_FITTING]]
    sel = np.concatenate([np.flatnonzero(fits), spare])
    r = {"step_time_s": np.full(len(sel), np.inf), "memory.peak_bytes": peak[sel],
         "fits": fits[sel], "mfu": np.zeros(len(sel)), "tokens_per_s": np.zeros(len(sel))}
    n_fit = int(fits.sum())
    if n_fit:
        ev = evaluate(spec, cluster, topo, V.take(fits), with_memory=False)
        for k in ("step_time_s", "mfu", "tokens_per_s"):
            r[k][:n_fit] = ev[k]
    return counts, examples, len(V), V.take(sel), r


def _blocks(spec: TransformerSpec, cluster: Cluster, global_batch_size: int, precision: str,
            block_candidates: int, part: int, parts: int) -> Iterator[tuple]:
    """(block index, candidates, _evaluate_block's result) for blocks part, part + parts, ...
    of the space."""
    space = Space.build(cluster.num_gpus, spec.num_layers, global_batch_size, precision,
                        spec.moe)
    topo = Topology(cluster)
    per_block = max(1, block_candidates // space.per_layout)
    for b, (_, P) in enumerate(space.blocks(global_batch_size, per_block)):
        if b % parts == part:
            yield b, len(P), _evaluate_block(spec, cluster, topo, P)


def _worker(*args) -> list[tuple]:
    """A process's share of the blocks (see _blocks)."""
    return list(_blocks(*args))


def search(spec: TransformerSpec, cluster: Cluster, global_batch_size: int,
           precision: str = "bf16", progress: Callable[[int, int], None] | None = None,
           block_candidates: int = 400_000, workers: int = 1) -> SearchResult:
    """Search the whole space (see planner/search/space.py) for `spec` on `cluster`. With
    `workers` > 1 the blocks are shared among that many processes (spaces of a million
    candidates or more); the result is the same, merged in block order."""
    t0 = time.perf_counter()
    space = Space.build(cluster.num_gpus, spec.num_layers, global_batch_size, precision,
                        spec.moe)
    args = (spec, cluster, global_batch_size, precision, block_candidates)
    if workers > 1 and space.size >= PARALLEL_MIN_CANDIDATES:
        parts = 4 * workers  # more parts than workers: progress, and balance across blocks
        blocks: list[tuple] = []
        done = 0
        with ProcessPoolExecutor(workers) as pool:
            for fut in as_completed([pool.submit(_worker, *args, k, parts)
                                     for k in range(parts)]):
                got = fut.result()
                blocks += got
                done += sum(n for _, n, _ in got)
                if progress:
                    progress(done, space.size)
        blocks.sort(key=lambda b: b[0])
    else:
        blocks = []
        done = 0
        for b, n, res in _blocks(*args, 0, 1):
            blocks.append((b, n, res))
            done += n
            if progress:
                progress(done, space.size)
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    kept: list[PlanArrays] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("step_time_s", "memory.peak_bytes", "fits", "mfu",
                                           "tokens_per_s")}
    valid = 0
    for _, _, (c, e, v, V, r) in blocks:  # block order: the serial search's counts, examples
        for k, n in c.items():
            counts[k] = counts.get(k, 0) + n
        for k, msg in e.items():
            examples.setdefault(k, msg)
        valid += v
        if V is not None:
            kept.append(V)
            for k in cols:
                cols[k].append(np.asarray(r[k]))
    return _rank(space.size, counts, examples, kept, cols, time.perf_counter() - t0, valid)


def _rank(total: int, counts: dict[str, int], examples: dict[str, str], kept: list[PlanArrays],
          cols: dict[str, list[np.ndarray]], seconds: float, valid: int) -> SearchResult:
    if kept:
        P = PlanArrays(**{f: np.concatenate([getattr(k, f) for k in kept])
                          for f in PlanArrays.__dataclass_fields__})
        c = {k: np.concatenate(v) for k, v in cols.items()}
    else:
        P = None
        c = {k: np.zeros(0) for k in cols}
    step, peak, fits = c["step_time_s"], c["memory.peak_bytes"], c["fits"].astype(bool)
    order = np.lexsort((peak, step, ~fits))
    fitting = int(fits.sum())
    if valid - fitting:
        counts[NO_FIT] = valid - fitting
    res = SearchResult(
        candidates=total, pruned=counts, examples=examples, valid=valid, fitting=fitting,
        plans=P.take(order) if P is not None else _empty(), step_time_s=step[order],
        peak_bytes=peak[order], fits=fits[order], mfu=c["mfu"][order],
        tokens_per_s=c["tokens_per_s"][order], seconds=seconds)
    if fitting:
        res.pareto = pareto_front(res.step_time_s[:fitting], res.peak_bytes[:fitting])
    return res


def _empty() -> PlanArrays:
    z = np.zeros(0, dtype=np.int64)
    return PlanArrays(dp=z, tp=z, pp=z, cp=z, mbs=z, gbs=z, vpp=z, schedule=z, zero=z,
                      recompute=z, sp=z.astype(bool), precision=z, order=z)
