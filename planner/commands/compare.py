"""`paraplan compare` (predictions with run measurements) and `paraplan report` (HTML from a
predicted_vs_measured.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from planner.commands.common import console, load_model_args
from planner.compare import checkpoint_stall, compare_one, summarize
from planner.cost.evaluate import predict
from planner.measurement import Measurement
from planner.plan import Plan
from planner.report import compare_html
from planner.report.compare_html import label
from planner.schema import InputError, read_json, validate_as, write_json_atomic


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="predicted vs. measured for runs of `paraplan run`",
                       description="Compare each measured run's step time and memory with a "
                                   "prediction for its plan: a `paraplan predict --json` file "
                                   "given beside it, or else the cluster's prediction; write "
                                   "JSON and an HTML report.")
    p.add_argument("files", nargs="+", metavar="PREDICTED_OR_MEASURED",
                   help="`paraplan predict --json` outputs and Measurement JSON files "
                        "(`paraplan run --out`), in any order")
    p.add_argument("--cluster", "-c", default=None,
                   help="cluster preset or (calibrated) profile that predicts runs without a "
                        "prediction file")
    p.add_argument("--num-nodes", "-n", type=int, default=None)
    p.add_argument("--out", default="predicted_vs_measured.json")
    p.add_argument("--html", default="report.html")
    p.set_defaults(func=run_compare)
    r = sub.add_parser("report", help="HTML report from a predicted_vs_measured.json")
    r.add_argument("input", help="predicted_vs_measured.json (validate-local or compare)")
    r.add_argument("--html", default="report.html")
    r.set_defaults(func=run_report)


def _is_prediction(data: object) -> bool:
    return isinstance(data, dict) and "memory_by_stage" in data and "breakdown" in data


def _plan_key(plan: dict) -> str:
    return json.dumps(Plan.model_validate(plan).to_json_dict(), sort_keys=True)


def run_compare(args: argparse.Namespace) -> int:
    loaded = {f: read_json(Path(f), f"input {f}") for f in args.files}
    given = {_plan_key(d["plan"]): d for d in loaded.values() if _is_prediction(d)}
    runs = {f: validate_as(Measurement, d, f"measurement {f}") for f, d in loaded.items()
            if not _is_prediction(d)}
    if not runs:
        raise InputError("no Measurement among the inputs (write one with paraplan run --out)")
    cluster = None
    if args.cluster:
        from planner.hardware import load_cluster
        cluster = load_cluster(args.cluster, args.num_nodes)
    rows = []
    for f, m in runs.items():
        pred = given.get(_plan_key(m.plan.to_json_dict()))
        if pred is None:
            if cluster is None:
                raise InputError(f"{f}: no prediction file has its plan; pass one "
                                 "(paraplan predict --json) or --cluster to predict it")
            if m.world_size != cluster.num_gpus:
                raise InputError(f"{f}: measured on {m.world_size} ranks, cluster {cluster.name} "
                                 f"has {cluster.num_gpus}; pass the profile it ran on")
            pred = predict(m.transformer, cluster, m.plan)
        measured = {"step_time_s": m.step_time_s, "step_times_s": m.step_times_s,
                    "memory": [r.model_dump() for r in m.memory]}
        ckpt = None
        if m.checkpoint_stall_s:
            measured.update(checkpoint_stall_s=m.checkpoint_stall_s,
                            checkpoint_bytes=m.checkpoint_bytes,
                            checkpoint_tensors=m.checkpoint_tensors)
            if cluster is not None:
                ckpt = _checkpoint(m, cluster, measured)
        rows.append(compare_one(m.plan, pred, measured, ckpt))
    first = next(iter(runs.values()))
    data = {"transformer": first.transformer.model_dump(),
            "cluster": cluster.name if cluster else next(iter(given.values()))["cluster"],
            "world_size": first.world_size, "rows": rows, "summary": summarize(rows)}
    write_json_atomic(args.out, data)
    compare_html.write(args.html, data)
    show(data)
    console().print(f"written: {args.out}, {args.html}")
    return 0


def _checkpoint(m: Measurement, cluster, measured: dict) -> dict:
    """Measured vs. predicted stall on the cluster's storage (a calibrated profile holds the
    write bandwidth `paraplan calibrate` measured)."""
    from planner.money import checkpoint_bytes
    from planner.plan_arrays import PlanArrays
    from planner.reliability import resolve_storage
    write, _ = checkpoint_bytes(m.transformer, cluster, PlanArrays.from_plans([m.plan]))
    storage = resolve_storage(cluster.storage)
    return checkpoint_stall(measured, float(write[0]), storage.write_GBps,
                            storage.per_tensor_s or 0.0, storage.latency_s or 0.0)


def run_report(args: argparse.Namespace) -> int:
    data = read_json(Path(args.input), f"report input {args.input}")
    if not isinstance(data, dict) or "rows" not in data or "summary" not in data:
        raise InputError(f"{args.input}: not a predicted_vs_measured.json (needs 'rows' and "
                         "'summary', as written by validate-local or compare)")
    console().print(f"report written to {compare_html.write(args.html, data)}")
    return 0


def _spread_cells(r: dict) -> list[str]:
    band = r.get("measured_spread_s")
    if not band:
        return ["", ""]
    return [f"{1e3 * band['min']:.1f}-{1e3 * band['max']:.1f} ({len(r['measured_rounds_s'])})",
            "yes" if r["within_spread"] else "no"]


def show(data: dict) -> None:
    """The table of plans and the summary against the targets (and, for rows measured in
    rounds, each plan's spread and the figures judged against it)."""
    out = console()
    rounds = any("measured_spread_s" in r for r in data["rows"])
    t = Table(title=f"predicted vs. measured ({data['world_size']} ranks)", title_justify="left")
    cols = ["plan", "predicted ms", "measured ms", "error", "worst memory error"]
    cols += ["spread ms (rounds)", "in spread"] if rounds else []
    for col in cols:
        t.add_column(col, justify="left" if col == "plan" else "right")
    for r in sorted(data["rows"], key=lambda r: r["measured"]["step_time_s"]):
        worst = max(r["memory_errors"].values())
        t.add_row(label(r["plan"]), f"{1e3 * r['predicted']['step_time_s']:.1f}",
                  f"{1e3 * r['measured']['step_time_s']:.1f}", f"{100 * r['step_error']:+.1f}%",
                  f"{100 * worst:.1f}%", *(_spread_cells(r) if rounds else []))
    out.print(t)
    for r in data["rows"]:
        c = r.get("checkpoint")
        if c and "predicted_stall_s" in c:
            out.print(f"{label(r['plan'])}: checkpoint stall measured {c['measured_stall_s']:.3f} s, "
                      f"predicted {c['predicted_stall_s']:.3f} s ({100 * c['stall_error']:+.0f}%) "
                      f"from {c['measured_bytes'] / 1e6:.1f} MB written at "
                      f"{c['write_GBps']:.2f} GB/s + {c['latency_s']:.3f} s fixed and per-tensor cost "
                      f"(bandwidth alone {c['bandwidth_only_stall_s']:.3f} s); the plan predicts "
                      f"{c['predicted_bytes'] / 1e6:.1f} MB ({100 * c['bytes_error']:+.0f}%)")
    s = data.get("summary")
    if not s:
        out.print("no plan ran to completion: nothing to summarise")
        return
    out.print(f"{s['plans']} plans: step time mean error {s['step_mape_pct']:.1f}%, max "
              f"{s['step_max_error_pct']:.1f}%, {100 * s['within_15_pct']:.0f}% within 15% "
              f"(target: >= 85% of the median); rank correlation {s['rank_correlation']:.3f} "
              f"(target >= 0.9); predicted-best plan "
              f"{s['predicted_best_vs_measured_best_pct']:+.1f}% from the measured best "
              f"(target within 5%)")
    for line in noise_lines(s):
        out.print(line)
    for k, v in s["memory"].items():
        out.print(f"  memory {k}: mean error {v['mean_error_pct']:.1f}%, max "
                  f"{v['max_error_pct']:.1f}%, {100 * v['within_5_pct']:.0f}% within 5%")
    out.print(json.dumps({"best": s["predicted_best"]}))


def noise_lines(s: dict) -> list[str]:
    """The protocol's summary figures (none for a file written before it)."""
    lines = []
    if s.get("within_spread_share") is not None:
        r = s["rounds_per_plan"]
        n = f"{r['min']}" if r["min"] == r["max"] else f"{r['min']}-{r['max']}"
        lines.append(f"  {100 * s['within_spread_share']:.0f}% of plans predicted within their "
                     f"measured spread over {n} round(s) (min-max widened by "
                     f"{100 * s['spread_tolerance']:g}%)")
    p = s.get("pick")
    if p:
        inside = {True: ", inside the best plan's spread", False: ", outside the best plan's "
                  "spread", None: ""}[p["first_within_best_spread"]]
        lines.append(f"  pick: the search's first plan ({label(p['first_plan'])}) measures "
                     f"{1e3 * p['first_measured_s']:.1f} ms, {p['first_vs_best_pct']:+.1f}% "
                     f"from the best measured median ({label(p['best_plan'])}, "
                     f"{1e3 * p['best_measured_s']:.1f} ms){inside}")
    if s.get("machine_noise") is not None:
        lines.append(f"  machine noise: {100 * s['machine_noise']:.1f}% (median over "
                     f"{s['machine_noise_plans']} plans of (max - min) / median over rounds)")
    return lines
