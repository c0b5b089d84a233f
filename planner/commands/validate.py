"""`paraplan validate`: predicted vs. published step times, per run and summarised per set,
source, framework and GPU; `--cv`: the leave-one-source-out error of the fitted number."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from planner.commands.common import console
from planner.plan import Plan
from planner.validation import (FIT_SETS, SHIPPED_SETS, Comparison, compare, load_sets,
                                unplannable,
                                summary)
from planner.validation.cv import CVResult, leave_one_source_out
from planner.validation.groups import report, source_group


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare predictions with published training runs",
                       description="Predict every published run (model, cluster, plan) with the "
                                   "default profiles and the stack its framework names, and "
                                   "compare with its measured step time.")
    p.add_argument("--runs", default=None,
                   help="one runs JSON (default: every shipped set: "
                        f"{', '.join(SHIPPED_SETS)})")
    p.add_argument("--stack", default=None,
                   help="predict every run with this stack instead of its framework's")
    p.add_argument("--cv", action="store_true",
                   help="leave-one-source-out: refit gemm_sustained_fraction without each "
                        f"source and predict it (default runs: {' + '.join(FIT_SETS)})")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.cv:
        return _cv(args)
    loaded = load_sets(args.runs)
    sets = {name: compare(runs, stack=args.stack) for name, runs in loaded.items()}
    skipped = [{"set": name, "name": r.name, "reason": why}
               for name, runs in loaded.items() for r, why in unplannable(runs)]
    every = [c for comps in sets.values() for c in comps]
    groups = report(sets)
    if args.json:
        print(json.dumps({"runs": [_run_json(name, c) for name, comps in sets.items()
                                   for c in comps], **summary(every), **groups,
                          "not_predicted": skipped}, indent=2))
        return 0
    out = console()
    for s in skipped:
        out.print(f"[yellow]not predicted[/] ({s['set']}) {s['name']}: {s['reason']}")
    for name, comps in sets.items():
        out.print(_run_table(name, comps))
    t = _summary_table("per set and source", "set / source")
    for name, s in groups["sets"].items():
        _summary_row(t, f"[bold]{name}[/]", s)
        for src, ss in s["by_source"].items():
            _summary_row(t, f"  {src}", ss)
    out.print(t)
    for key, title in (("by_framework", "framework"), ("by_gpu", "GPU"),
                       ("by_band_group", "stack family / GPU generation")):
        t = _summary_table(f"per {title}", title)
        for k, s in groups[key].items():
            _summary_row(t, k, s)
        out.print(t)
    for name, s in groups["sets"].items():
        out.print(f"{name}: {s['count']} runs, mean absolute error [bold]{s['mape_pct']:.1f}%[/], "
                  f"max {s['max_abs_error_pct']:.1f}%, mean signed {s['mean_error_pct']:+.1f}%")
    return 0


def _cv(args: argparse.Namespace) -> int:
    sets = load_sets(args.runs, FIT_SETS)
    cv = leave_one_source_out([r for runs in sets.values() for r in runs], stack=args.stack)
    if args.json:
        print(json.dumps({"sets": list(sets), **cv.as_json()}, indent=2))
        return 0
    out = console()
    out.print(_cv_table(cv, list(sets)))
    o = cv.overall()
    out.print(f"leave-one-source-out over {o['count']} runs: mean absolute error "
              f"[bold]{o['mape_pct']:.1f}%[/], max {o['max_abs_error_pct']:.1f}%, mean signed "
              f"{o['mean_error_pct']:+.1f}% (in sample, every source: fraction "
              f"{cv.all_sources_fraction:.3f}, {cv.all_sources_mape_pct:.1f}%)")
    return 0


def _cv_table(cv: CVResult, sets: list[str]) -> Table:
    t = Table(title=f"leave-one-source-out ({' + '.join(sets)}): gemm_sustained_fraction "
                    "refitted without each source, that source predicted", title_justify="left")
    for col in ("source left out", "runs", "fraction", "fit err", "mean abs", "max", "signed"):
        t.add_column(col, justify="left" if col == "source left out" else "right", no_wrap=True)
    for f in cv.folds:
        errs = [100 * r.error for r in f.residuals]
        t.add_row(f.source, str(len(errs)), f"{f.fraction:.3f}", f"{f.fit_mape_pct:.1f}%",
                  f"{sum(map(abs, errs)) / len(errs):.1f}%", f"{max(map(abs, errs)):.1f}%",
                  f"{sum(errs) / len(errs):+.1f}%")
    return t


def _run_json(set_name: str, c: Comparison) -> dict:
    return {"name": c.run.name, "set": set_name, "source": source_group(c.run.source),
            "framework": c.run.framework, "stack": c.prediction["stack"], "gpu": c.gpu,
            "num_gpus": c.prediction["num_gpus"],
            "predicted_step_time_s": c.prediction["step_time_s"],
            "measured_step_time_s": c.run.measured_step_time_s, "error_pct": 100 * c.error,
            "memory_error_pct": None if c.memory_error is None else 100 * c.memory_error,
            "predicted_peak_bytes": c.prediction["memory"]["peak_bytes"],
            "fits": c.prediction["fits"], "breakdown": c.prediction["breakdown"]}


def _run_table(name: str, comps: list[Comparison]) -> Table:
    stacks = sorted({c.prediction["stack"] for c in comps})
    t = Table(title=f"{name}: predicted vs. published step time (stack: {', '.join(stacks)})",
              title_justify="left")
    t.add_column("run", no_wrap=True)
    for col in ("GPUs", "gpu", "dp.tp.pp mb v z rc", "pred s", "meas s", "error"):
        t.add_column(col, justify="left" if col in ("gpu", "dp.tp.pp mb v z rc") else "right",
                     no_wrap=True)
    for c in comps:
        err = f"{100 * c.error:+.1f}%"
        if abs(c.error) > 0.2:
            err = f"[red]{err}[/]"
        t.add_row(c.run.name, str(c.prediction["num_gpus"]), c.gpu, plan_compact(c.plan),
                  f"{c.prediction['step_time_s']:.2f}", f"{c.run.measured_step_time_s:.2f}", err)
    return t


def _summary_table(title: str, first: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(first, no_wrap=True)
    for col in ("runs", "mean abs error", "max", "mean signed"):
        t.add_column(col, justify="right")
    return t


def _summary_row(t: Table, label: str, s: dict) -> None:
    t.add_row(label, str(s["count"]), f"{s['mape_pct']:.1f}%", f"{s['max_abs_error_pct']:.1f}%",
              f"{s['mean_error_pct']:+.1f}%")


def plan_compact(p: Plan) -> str:
    """e.g. `16.8.8 mb1 v3 z0 full+sp` (`x4` after the micro-batch: four pipeline passes)."""
    rc = {"none": "-", "selective": "sel", "full": "full"}[p.recompute]
    passes = f"x{p.pipeline_passes}" if p.pipeline_passes > 1 else ""
    sp = "+sp" if p.sequence_parallel else ""
    return (f"{p.dp}.{p.tp}.{p.pp} mb{p.micro_batch_size}{passes} "
            f"v{p.virtual_pipeline_stages} {p.zero_label} {rc}{sp}")
