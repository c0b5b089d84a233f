"""`paraplan search`: rank every valid plan, print the top and the Pareto front, write the best."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.commands.common import add_model_args, console, gib, load_model_args, seconds
from planner.hardware import Cluster
from planner.schema import InputError, write_json_atomic
from planner.search.search import SearchResult, rerank_fitting, search
from planner.search.space import DEFAULT_BATCH_TOKENS, batch_sequences
from planner.stack import DEFAULT_STACK, stack_names
from planner.transformer import TransformerSpec

DEFAULT_TRANSFORMER, DEFAULT_CLUSTER = "llama3-8b", "dgx_h100"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search every parallel plan and rank them",
                       description="Enumerate every dp/tp/pp/cp split, micro-batch, virtual "
                                   "stages, schedule, ZeRO stage, recompute and sequence-parallel "
                                   "setting; prune invalid ones with reasons; rank the rest by "
                                   "predicted step time (tie-break: memory).")
    add_model_args(p, DEFAULT_TRANSFORMER, DEFAULT_CLUSTER)
    p.add_argument("--global-batch-size", "-b", type=int, default=None,
                   help="sequences per step (default: 4M tokens over the sequence length, "
                        "rounded to a power of two, as `paraplan estimate`)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp8", "fp32"])
    p.add_argument("--top", type=int, default=10, help="plans to show (default 10)")
    p.add_argument("--out", default="best_plan.json",
                   help="where to write the best plan (default best_plan.json; '-' for none)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--goodput", action="store_true",
                   help="rank by goodput-adjusted step time (step time / goodput fraction): "
                        "failures, restarts and checkpoint stalls counted, the checkpoint "
                        "sized by each plan's sharding")
    from planner.commands.estimate import add_goodput_args
    add_goodput_args(p)
    p.set_defaults(func=run)


def rank_by_goodput(res: SearchResult, spec: TransformerSpec, cluster: Cluster,
                    settings) -> SearchResult:
    """The fitting plans re-ranked by step time / goodput fraction (vectorized over them)."""
    import numpy as np

    from planner.money import checkpoint_bytes, goodput_inputs, stall_and_interval
    g = goodput_inputs(cluster, settings)
    n = res.fitting
    if not n:
        return res
    step = res.step_time_s[:n]
    write, snap = checkpoint_bytes(spec, cluster, res.plans.take(np.arange(n)))
    f = stall_and_interval(g, cluster.num_gpus, cluster.gpus_per_node, step, write, snap)
    good = f["goodput_fraction"]
    key = np.where(good > 0, step / np.where(good > 0, good, 1.0), np.inf)
    return rerank_fitting(res, key, "goodput_step_time_s", {
        "goodput_fraction": good, "checkpoint_stall_s": f["stall_s"],
        "checkpoint_interval_s": f["interval_s"], "checkpoint_bytes_per_node": write})


def default_batch(spec: TransformerSpec) -> int:
    """DEFAULT_BATCH_TOKENS by the one rule `paraplan estimate` uses too (batch_sequences)."""
    return batch_sequences(DEFAULT_BATCH_TOKENS, spec.seq_len)


def plan_file(res: SearchResult, spec: TransformerSpec, cluster: Cluster) -> dict:
    """best_plan.json: the flat plan keys, plus the transformer and cluster it was searched for
    (planner.commands.common.PLAN_META_KEYS), so `paraplan run --plan` trains the same model."""
    return {**res.plan(0).to_json_dict(), "transformer": spec.model_dump(),
            "cluster": cluster.name}


def write_best(res: SearchResult, spec: TransformerSpec, cluster: Cluster,
               out: str) -> tuple[str | None, str]:
    """Write (or, when nothing fits, remove) the best-plan file; the path written and one line
    saying what happened to the file ('' when --out is '-')."""
    if out == "-":
        return None, ""
    path = Path(out)
    existed = path.exists()
    if res.fitting:
        written = str(write_json_atomic(path, plan_file(res, spec, cluster)))
        how = ", replacing the earlier file" if existed else ""
        # The file records the transformer and cluster, not the stack: name it where the
        # search ran on a built-in one other than the default.
        stack = (f" --stack {cluster.stack.name}" if cluster.stack.name != DEFAULT_STACK
                 and cluster.stack.name in stack_names() else "")
        return written, (f"best plan written to {written}{how} (try `paraplan predict --plan "
                         f"{written}{stack}`)")
    if existed:
        path.unlink()
        return None, f"removed {path}: it held an earlier search's plan and no plan fits this one"
    return None, f"wrote no {path}: no plan fits"


def run(args: argparse.Namespace) -> int:
    from planner.commands.estimate import goodput_settings
    settings = goodput_settings(args)
    spec, cluster = load_model_args(args)
    gbs = args.global_batch_size or default_batch(spec)
    if gbs < 1:
        raise InputError(f"--global-batch-size must be >= 1, got {gbs}")
    if cluster.gpu.peak_flops(args.precision) is None:
        raise InputError(f"--precision {args.precision} is not supported by {cluster.gpu.name}")
    if args.out != "-" and Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a directory; give a file, e.g. best_plan.json")
    out = console(args.json)
    out.print(f"searching plans for [bold]{spec.name}[/] on [bold]{cluster.name}[/] x "
              f"{cluster.num_nodes} nodes ({cluster.num_gpus} GPUs), global batch {gbs} "
              f"({gbs * spec.seq_len / 1e6:.2f}M tokens), {args.precision}")
    if args.goodput:  # resolve the reliability and storage data before the search
        from planner.money import goodput_inputs
        goodput_inputs(cluster, settings)
    res = _search_with_progress(spec, cluster, gbs, args.precision, args.quiet or args.json)
    if args.goodput:
        res = rank_by_goodput(res, spec, cluster, settings)
    best_path, file_note = write_best(res, spec, cluster, args.out)
    if args.json:
        print(json.dumps({"global_batch_size": gbs, **to_json(res, args.top, best_path),
                          "best_plan_note": file_note}, indent=2))
    else:
        show(res, args.top, cluster)
    if file_note:
        out.print(file_note)
    return 0 if res.fitting else 1


def _search_with_progress(spec, cluster, gbs, precision, quiet) -> SearchResult:
    if quiet or not sys.stderr.isatty():
        return search(spec, cluster, gbs, precision, workers=search_workers())
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed:,}/{task.total:,} candidates"), TimeElapsedColumn(),
            console=console(True), transient=True) as prog:
        task = prog.add_task("evaluating", total=None)

        def tick(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)
        return search(spec, cluster, gbs, precision, progress=tick, workers=search_workers())


def _moe(res: SearchResult) -> bool:
    """Whether the searched plans split experts (any ep or etp > 1): show those columns."""
    return bool(len(res.plans) and ((res.plans.ep > 1) | (res.plans.etp > 1)).any())


def search_workers() -> int:
    """Processes for one search: the machine's cores, at most 4 (the blocks are independent)."""
    return max(1, min(4, os.cpu_count() or 1))


def _row(res: SearchResult, i: int) -> list[str]:
    p = res.plan(i)
    cells = [str(p.dp), str(p.tp), str(p.pp), str(p.cp)]
    if _moe(res):
        cells += [str(p.ep), str(p.etp)]
    cells += [str(p.micro_batch_size),
             str(p.virtual_pipeline_stages), p.schedule, p.zero_label[1:], p.recompute,
             "on" if p.sequence_parallel else "-", seconds(res.step_time_s[i]),
             f"{res.tokens_per_s[i]:,.0f}", f"{res.mfu[i] * 100:.1f}%", gib(res.peak_bytes[i])]
    if "goodput_fraction" in res.extra:
        x = res.extra
        cells += [f"{100 * x['goodput_fraction'][i]:.2f}%", seconds(x["goodput_step_time_s"][i]),
                  f"{x['checkpoint_stall_s'][i]:.3g}"]
    return cells


def _table(title: str, res: SearchResult, rows) -> Table:
    t = Table(title=title, title_justify="left")
    cols = ["#", "dp", "tp", "pp", "cp"] + (["ep", "etp"] if _moe(res) else []) + [
        "mbs", "v", "schedule", "zero", "recompute", "sp", "step", "tokens/s", "MFU", "GiB"]
    if "goodput_fraction" in res.extra:
        cols += ["goodput", "adj. step", "stall s"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("schedule", "recompute") else "right")
    for rank, i in rows:
        t.add_row(str(rank), *_row(res, int(i)))
    return t


def show(res: SearchResult, top: int, cluster: Cluster) -> None:
    out = console()
    rate = res.candidates / res.seconds if res.seconds else 0
    out.print(f"{res.candidates:,} candidates in {res.seconds:.2f} s ({rate / 1e6:.2f}M/s): "
              f"{res.valid:,} valid, {res.fitting:,} fit in "
              f"{gib(cluster.gpu.memory_bytes)} GiB")
    if res.fitting:
        by = ("goodput-adjusted step time (step time / goodput)"
              if res.ranked_by == "goodput_step_time_s" else "step time")
        out.print(_table(f"top {min(top, res.fitting)} plans by {by}",
                         res, [(k + 1, k) for k in range(min(top, res.fitting))]))
        out.print(_table(f"Pareto front ({by.split(' (')[0]} vs. memory)", res,
                         [(int(i) + 1, i) for i in res.pareto]))
        shown = list(range(min(top, res.fitting))) + [int(i) for i in res.pareto]
        if any(res.plan(i).hsdp for i in shown):
            out.print("zero s/n: ZeRO stage s with its state sharded over n data-parallel ranks "
                      "(x cp) and replicated across the other dp / n groups (hybrid sharding, "
                      "plan key dp_shard)")
    else:
        explain_no_fit(res, cluster)
    t = Table(title="pruned candidates", title_justify="left")
    t.add_column("reason")
    t.add_column("count", justify="right")
    t.add_column("example")
    for reason, n in sorted(res.pruned.items(), key=lambda kv: -kv[1]):
        t.add_row(reason, f"{n:,}", res.examples.get(reason, ""))
    out.print(t)


def explain_no_fit(res: SearchResult, cluster: Cluster) -> None:
    """Why nothing fits, and what would."""
    out = console()
    cap = cluster.gpu.memory_bytes
    if res.valid == 0:
        out.print("[red]no valid plan[/]: every candidate breaks a rule below. Change the GPU "
                  "count (--num-nodes) or the global batch so that they divide the model's "
                  "heads, layers and batch.")
        return
    i = int(res.peak_bytes.argmin())
    out.print(f"[red]no plan fits[/] in {gib(cap)} GiB per GPU: the smallest needs "
              f"{gib(res.peak_bytes[i])} GiB ({res.plan(i).model_dump_json()}).")
    need = res.peak_bytes[i] / cap
    out.print(f"Try about {need:.1f}x the GPU memory: more nodes (--num-nodes "
              f"{int(cluster.num_nodes * need) + 1}) so ZeRO/tp/pp shard further, a GPU with "
              "more memory, or a smaller global batch.")


def to_json(res: SearchResult, top: int, best_path: str | None) -> dict:
    def entry(i: int) -> dict:
        return {"rank": i + 1, "plan": res.plan(i).to_json_dict(),
                "step_time_s": float(res.step_time_s[i]),
                "tokens_per_s": float(res.tokens_per_s[i]), "mfu": float(res.mfu[i]),
                "peak_bytes": int(res.peak_bytes[i]), "fits": bool(res.fits[i]),
                **{k: float(v[i]) for k, v in res.extra.items() if i < len(v)}}
    return {"candidates": res.candidates, "valid": res.valid, "fitting": res.fitting,
            "ranked_by": res.ranked_by,
            "seconds": res.seconds, "pruned": res.pruned, "examples": res.examples,
            "top": [entry(i) for i in range(min(top, res.fitting))],
            "pareto": [entry(int(i)) for i in res.pareto], "best_plan_path": best_path}

