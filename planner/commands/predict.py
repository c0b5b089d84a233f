"""`paraplan predict`: step time, throughput, MFU, memory and breakdown of one plan."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from planner.commands.common import (add_model_args, console, gib, load_model_args,
                                     load_plan_with_meta, plan_short, seconds)
from planner.cost.evaluate import predict


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict step time, MFU and memory of one plan",
                       description="Predict one plan's step time, throughput, MFU, per-GPU "
                                   "memory and time breakdown.")
    add_model_args(p, None, None, required=False)
    p.add_argument("--plan", "-p", required=True,
                   help="plan JSON file (e.g. written by `paraplan search`) or inline JSON; "
                        "-t and -c default to the transformer and cluster it records")
    p.add_argument("--json", action="store_true", help="print one JSON object (the contract)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    plan, meta = load_plan_with_meta(args.plan)
    spec, cluster = load_model_args(args, meta, plan)
    for note in mismatches(meta, spec.model_dump(), cluster.name):
        console(True).print(f"[yellow]note[/]: {note}")
    result = predict(spec, cluster, plan)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result, plan)
    return 0


def mismatches(meta: dict, spec: dict, cluster: str) -> list[str]:
    """Where a plan file records a different transformer or cluster than the one asked for."""
    out = []
    recorded = meta.get("transformer")
    if isinstance(recorded, dict) and recorded != spec:
        out.append(f"the plan was searched for transformer {recorded.get('name')!r}; "
                   f"predicting {spec['name']!r} (-t)")
    if "cluster" in meta and meta["cluster"] != cluster:
        out.append(f"the plan was searched for cluster {meta['cluster']!r}; predicting "
                   f"{cluster!r} (-c)")
    return out


def show(r: dict[str, Any], plan) -> None:
    """Human-readable prediction."""
    out = console()
    out.print(f"[bold]{r['transformer']}[/] on [bold]{r['cluster']}[/] ({r['num_gpus']} GPUs): "
              f"{plan_short(plan)}, global batch {plan.global_batch_size}, {plan.precision}")
    step = r["step_time_s"]
    out.print(f"step time [bold]{seconds(step)}[/]   tokens/s {r['tokens_per_s']:,.0f}   "
              f"model TFLOP/s per GPU {r['model_tflops_per_gpu']:.1f}   MFU "
              f"[bold]{r['mfu'] * 100:.1f}%[/]")
    t = Table(title="step time breakdown", title_justify="left")
    t.add_column("part")
    t.add_column("time", justify="right")
    t.add_column("share", justify="right")
    for k, v in r["breakdown"].items():
        t.add_row(k.removesuffix("_s").replace("_", " "), seconds(v), f"{v / step * 100:.1f}%")
    out.print(t)
    host = r["breakdown"].get("host_s", 0.0)
    if host > 0.1 * step:  # planner/cost/host.py: the blocks run at the CPU's launch pace
        out.print(f"[yellow]host-bound[/]: the GPU waits {host / step * 100:.0f}% of the step "
                  "for the CPU to launch kernels (blocks too small for this GPU). Larger "
                  "micro-batches, less tensor parallelism, torch.compile or CUDA graphs (a "
                  "stack file with lower block_host_ops_fwd / _bwd) shorten it.")
    m = Table(title="memory per GPU (most loaded rank)", title_justify="left")
    m.add_column("component")
    m.add_column("GiB", justify="right")
    mem = r["memory"]
    for k, v in mem.items():
        if k not in ("peak_bytes", "capacity_bytes", "experts"):
            m.add_row(k.removesuffix("_bytes"), gib(v))
    for k, v in mem.get("experts", {}).items():  # the routed experts' share of the above
        m.add_row(f"  of which experts: {k.removesuffix('_bytes')}", gib(v))
    verdict = "[green]fits[/]" if r["fits"] else "[red]does NOT fit[/]"
    m.add_row("[bold]peak[/]", f"[bold]{gib(mem['peak_bytes'])}[/]")
    out.print(m)
    out.print(f"peak {gib(mem['peak_bytes'])} of {gib(mem['capacity_bytes'])} GiB: {verdict}")
    if r["links"]:
        lk = Table(title="communication groups", title_justify="left")
        for col in ("group", "size", "link", "GB/s per rank", "ranks/node", "nodes"):
            lk.add_column(col)
        for k, g in r["links"].items():
            lk.add_row(k, str(g["size"]), g["link"], f"{g['bandwidth_GBps']:.0f}",
                       str(g["ranks_per_node"]), str(g["nodes_spanned"]))
        out.print(lk)
