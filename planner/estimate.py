"""The estimate sweep: for each GPU type, the smallest cluster that fits, and the best plan at each
cluster size asked for (or, with a deadline, at growing sizes until one meets it)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

from planner.hardware import Cluster, load_cluster
from planner.money import (Estimate, GoodputInputs, GoodputSettings, Option, best_option,
                           goodput_inputs)
from planner.search.shared import shared_space
from planner.stack import Stack, load_stack
from planner.schema import InputError
from planner.transformer import TransformerSpec

DEFAULT_GPUS = ("a100_80g", "h100", "h200", "b200", "mi300x")
DEFAULT_SIZES = (256, 512, 1024, 2048)
MAX_GPUS = 16384


def _powers_of_two_nodes(gpus_per_node: int, max_gpus: int = MAX_GPUS) -> list[int]:
    out, n = [], 1
    while n * gpus_per_node <= max_gpus:
        out.append(n)
        n *= 2
    return out


def check_sizes(sizes: list[int], gpus_per_node: int, name: str) -> list[int]:
    """GPU counts must be whole nodes."""
    bad = [s for s in sizes if s < 1 or s % gpus_per_node]
    if bad:
        raise InputError(f"--num-gpus {bad} for {name}: counts must be positive multiples of its "
                         f"{gpus_per_node} GPUs per node, e.g. {gpus_per_node * 32}")
    return sizes


def check_inputs(cluster_names: list[str], sizes: list[int] | None, precision: str) -> None:
    """User mistakes surface here, before any work."""
    for name in cluster_names:
        c = load_cluster(name)
        if sizes:
            check_sizes(sizes, c.gpus_per_node, name)
        if c.gpu.peak_flops(precision) is None:
            raise InputError(f"precision {precision} is not supported by {c.gpu.name}; drop it "
                             "from --gpus or choose another --precision")


def estimate(spec: TransformerSpec, cluster_names: list[str], tokens: float, global_batch: int,
             sizes: list[int] | None = None, deadline_days: float | None = None,
             rents: dict[str, float] | None = None, stack: "str | Stack | None" = None,
             precision: str = "bf16", progress: Callable[[str], None] | None = None,
             workers: int | None = None, max_gpus: int = MAX_GPUS,
             goodput: GoodputSettings | None = None) -> Estimate:
    """Options for every GPU type, each with its goodput figures (`goodput` overrides the
    reliability and storage data), computed by up to `workers` processes: one search per task
    (each GPU type's smallest-fit sweep, and each cluster size asked for), or with a deadline
    one task per GPU type (its sizes depend on each other)."""
    check_inputs(cluster_names, sizes, precision)
    # Resolved once, so a bad name or file fails before any work; None: each profile's own
    # stack, else the default (planner.hardware.load_cluster).
    stack = load_stack(stack) if stack is not None else None
    # Reliability and storage resolved here too, so a bad override fails before any search.
    losses = {name: goodput_inputs(load_cluster(name, stack=stack), goodput)
              for name in cluster_names}
    jobs = [(spec, name, tokens, global_batch, sizes, deadline_days, (rents or {}).get(name),
             stack, precision, max_gpus, losses[name]) for name in cluster_names]
    workers = workers or os.cpu_count() or 1
    est = Estimate(options=[], losses=losses)
    if deadline_days is None and workers > 1:
        results = _shared(jobs, workers, progress)
    elif min(len(jobs), workers) <= 1:
        results = [_one_gpu(*job) for job in jobs]
        if progress:
            progress(f"{len(jobs)} GPU types done")
    else:
        with ProcessPoolExecutor(min(len(jobs), workers)) as pool:
            futures = [pool.submit(_one_gpu, *job) for job in jobs]
            for done, fut in enumerate(as_completed(futures), 1):
                fut.result()
                if progress:
                    progress(f"{done}/{len(jobs)} GPU types done")
            results = [f.result() for f in futures]
    for name, (options, smallest) in zip(cluster_names, results):
        est.options.extend(options)
        if smallest is not None:
            est.smallest[name] = smallest
    return est


def _base(name: str, stack: Stack | None, rent: float | None) -> tuple[Cluster, float | None]:
    """A GPU type's cluster profile and its rent (the profile's price unless given)."""
    base = load_cluster(name, stack=stack)
    if rent is None and base.prices is not None:
        rent = base.prices.rent_per_gpu_hour_usd
    return base, rent


def _sweep(spec: TransformerSpec, name: str, tokens: float, global_batch: int,
           sizes: list[int] | None, deadline_days: float | None, rent: float | None,
           stack: Stack | None, precision: str, max_gpus: int,
           losses: GoodputInputs | None = None) -> tuple[dict[int, Option], Option | None]:
    """(every node count tried, the smallest that fits) of the powers-of-two-nodes sweep."""
    base, rent = _base(name, stack, rent)
    tried: dict[int, Option] = {}
    for nodes in _powers_of_two_nodes(base.gpus_per_node, max_gpus):
        tried[nodes] = best_option(spec, base.with_num_nodes(nodes), global_batch, tokens, rent,
                                   precision, losses)
        if tried[nodes].fits:
            return tried, tried[nodes]
    return tried, None


def _size(jobs: list[tuple], gpus: int) -> list[Option]:
    """The option of every job (_one_gpu's arguments) at `gpus` GPUs, in job order. The GPU
    types search one space, so they share its validity and memory (planner/search/shared.py)."""
    out = []
    with shared_space():
        for spec, name, tokens, global_batch, _, _, rent, stack, precision, _, losses in jobs:
            base, rent = _base(name, stack, rent)
            out.append(best_option(spec, base.with_num_nodes(gpus // base.gpus_per_node),
                                   global_batch, tokens, rent, precision, losses))
    return out


def _shared(jobs: list[tuple], workers: int,
            progress: Callable[[str], None] | None) -> list[tuple[list[Option], Option | None]]:
    """What _one_gpu gives for each job (no deadline), its searches shared among processes:
    each GPU type's sweep is a task, and each cluster size asked for (every GPU type at that
    size, sharing what does not depend on the GPU) is one, largest first, so the longest
    start first and the processes finish together. A size the sweep tried keeps the sweep's
    option, as in _one_gpu (the size task's is dropped)."""
    sizes = jobs[0][4] or DEFAULT_SIZES  # one list for every job
    order = sorted(set(sizes), reverse=True)
    with ProcessPoolExecutor(min(workers, len(jobs) + len(order))) as pool:
        sweeps = [pool.submit(_sweep, *job) for job in jobs]
        at = {g: pool.submit(_size, jobs, g) for g in order}
        for done, fut in enumerate(as_completed([*sweeps, *at.values()]), 1):
            fut.result()  # a failure surfaces here
            if progress:
                progress(f"{done}/{len(sweeps) + len(at)} tasks done (a smallest-fit sweep per "
                         "GPU type, then each size on every GPU type)")
        results = []
        for j, job in enumerate(jobs):
            tried, smallest = sweeps[j].result()
            gpn = load_cluster(job[1], stack=job[7]).gpus_per_node
            for g in sizes:
                tried.setdefault(g // gpn, at[g].result()[j])
            results.append(([tried[g // gpn] for g in sizes], smallest))
    return results


def _one_gpu(spec: TransformerSpec, name: str, tokens: float, global_batch: int,
             sizes: list[int] | None, deadline_days: float | None, rent: float | None,
             stack: Stack | None, precision: str, max_gpus: int,
             losses: GoodputInputs | None = None) -> tuple[list[Option], Option | None]:
    """The smallest fitting cluster and the options at the wanted sizes for one GPU type."""
    base, rent = _base(name, stack, rent)

    def run(nodes: int) -> Option:
        return best_option(spec, base.with_num_nodes(nodes), global_batch, tokens, rent, precision,
                           losses)

    tried: dict[int, Option] = {}
    smallest = None
    for nodes in _powers_of_two_nodes(base.gpus_per_node, max_gpus):
        tried[nodes] = run(nodes)
        if tried[nodes].fits:
            smallest = tried[nodes]
            break
    if sizes:
        wanted = [s // base.gpus_per_node for s in sizes]
    elif deadline_days is not None:
        wanted = _until_deadline(smallest, tried, run, deadline_days, base.gpus_per_node, max_gpus)
    else:
        wanted = [s // base.gpus_per_node for s in DEFAULT_SIZES]
    for nodes in wanted:
        if nodes not in tried:
            tried[nodes] = run(nodes)
    return [tried[n] for n in wanted], smallest


def _until_deadline(smallest: Option | None, tried: dict[int, Option], run, deadline: float,
                    gpus_per_node: int, max_gpus: int) -> list[int]:
    """Powers of two nodes from the smallest fitting cluster up, until one meets the deadline."""
    if smallest is None:
        return []
    out = []
    for nodes in _powers_of_two_nodes(gpus_per_node, max_gpus):
        if nodes * gpus_per_node < smallest.num_gpus:
            continue
        opt = tried.get(nodes) or run(nodes)
        tried[nodes] = opt
        out.append(nodes)
        if opt.fits and opt.days <= deadline:
            break
    return out
