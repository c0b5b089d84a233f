"""`paraplan validate`: predicted vs. published step times, with the mean and maximum error."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from planner.commands.common import console
from planner.plan import Plan
from planner.validation import compare, default_runs_path, load_runs, summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare predictions with published training runs",
                       description="Predict every published run (model, cluster, plan) with the "
                                   "default profiles and compare with its measured step time.")
    p.add_argument("--runs", default=None,
                   help=f"runs JSON (default: the shipped set, {default_runs_path().name})")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    comps = compare(load_runs(args.runs))
    stats = summary(comps)
    if args.json:
        print(json.dumps({"runs": [{
            "name": c.run.name, "num_gpus": c.prediction["num_gpus"],
            "predicted_step_time_s": c.prediction["step_time_s"],
            "measured_step_time_s": c.run.measured_step_time_s, "error_pct": 100 * c.error,
            "memory_error_pct": None if c.memory_error is None else 100 * c.memory_error,
            "predicted_peak_bytes": c.prediction["memory"]["peak_bytes"],
            "fits": c.prediction["fits"], "breakdown": c.prediction["breakdown"]}
            for c in comps], **stats}, indent=2))
        return 0
    t = Table(title="predicted vs. published step time", title_justify="left")
    t.add_column("run", no_wrap=True)
    t.add_column("GPUs", justify="right")
    t.add_column("dp.tp.pp mbs v zero recompute", no_wrap=True)
    for col in ("predicted s", "measured s", "error"):
        t.add_column(col, justify="right")
    for c in comps:
        err = f"{100 * c.error:+.1f}%"
        if abs(c.error) > 0.2:
            err = f"[red]{err}[/]"
        t.add_row(c.run.name, str(c.prediction["num_gpus"]), plan_compact(c.run.plan),
                  f"{c.prediction['step_time_s']:.2f}", f"{c.run.measured_step_time_s:.2f}", err)
    out = console()
    out.print(t)
    out.print(f"{stats['count']} runs: mean absolute error [bold]{stats['mape_pct']:.1f}%[/], "
              f"max {stats['max_abs_error_pct']:.1f}%, mean signed {stats['mean_error_pct']:+.1f}%")
    return 0


def plan_compact(p: Plan) -> str:
    """e.g. `16.8.8 mb1 v3 z0 full+sp`."""
    rc = {"none": "-", "selective": "sel", "full": "full"}[p.recompute]
    return (f"{p.dp}.{p.tp}.{p.pp} mb{p.micro_batch_size} v{p.virtual_pipeline_stages} "
            f"z{p.zero_stage} {rc}{'+sp' if p.sequence_parallel else ''}")
