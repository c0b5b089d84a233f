"""`paraplan validate-local`: calibrate (or reuse a profile), run every valid plan of a small
model on this machine, and report predicted vs. measured."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-local", help="check the predictions on this machine",
                       description="Calibrate this machine (or reuse --profile), rank every "
                                   "valid plan of a small model with the planner, run each with "
                                   "the executor, and write predicted_vs_measured.json and an "
                                   "HTML report.")
    p.add_argument("--transformer", "-t", default="tiny")
    p.add_argument("--world-size", type=int, default=2, choices=[2, 4, 6, 8])
    p.add_argument("--profile", help="calibrated profile to reuse (default: calibrate now)")
    p.add_argument("--global-batch-size", "-b", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="steps per plan (default 8)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps (default 3; memory is counted on the last of them)")
    p.add_argument("--threads", type=int, help="threads per rank (default cores / world size)")
    p.add_argument("--limit", type=int, help="run only the N best-ranked plans")
    p.add_argument("--timeout", type=int, default=120,
                   help="seconds a collective may wait before its plan fails (default 120, as "
                        "`paraplan run`)")
    p.add_argument("--out-dir", default="validate-local")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.commands.common import console
    from planner.commands.compare import show
    from planner.report.compare_html import label
    from planner.hardware import load_cluster
    from planner.schema import InputError
    from planner.transformer import load_transformer
    if args.timeout < 1:
        raise InputError(f"--timeout must be >= 1, got {args.timeout}")
    if args.warmup >= args.steps:
        raise InputError(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    spec = load_transformer(args.transformer)
    out_dir = Path(args.out_dir)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.world_size)
    out = console()
    if args.profile:
        cluster = load_cluster(args.profile)
        if cluster.num_gpus != args.world_size:
            raise InputError(f"--profile {args.profile} describes {cluster.num_gpus} ranks, not "
                             f"--world-size {args.world_size}")
    else:
        from executor.calibration_run import calibrate
        path = out_dir / f"cpu_{args.world_size}x{threads}.json"
        out.print(f"calibrating {args.world_size} ranks x {threads} thread(s) -> {path}")
        cluster, _ = calibrate(args.world_size, threads, False, path.stem, path, echo=out.print)
    from executor.validate_local import validate_local
    data = validate_local(spec, cluster, args.global_batch_size, args.steps, args.warmup,
                          threads, out_dir, args.limit, out.print, args.timeout)
    if data["rows"]:
        show(data)
    for f in data["failed"]:
        out.print(f"[red]failed:[/] {label(f['plan'])}: {f['error']}")
    written = [out_dir / "predicted_vs_measured.json"] + (
        [out_dir / "report.html"] if data["rows"] else [])
    out.print(f"{len(data['rows'])} of {data['plans_total']} plans ran, {len(data['failed'])} "
              f"failed; written: {', '.join(map(str, written))}")
    return 1 if data["failed"] else 0
