"""`paraplan validate-local`: calibrate (or reuse a profile), run every valid plan of a small
model on this machine in rounds, and report predicted vs. measured (the median over rounds and
its spread; docs/local_validation.md describes the protocol)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-local", help="check the predictions on this machine",
                       description="Calibrate this machine (or reuse --profile), rank every "
                                   "valid plan of a small model with the planner, run each with "
                                   "the executor in --rounds rounds (round-robin, each round "
                                   "its own launches), and write predicted_vs_measured.json "
                                   "(the median over rounds and its spread) and an HTML "
                                   "report.")
    p.add_argument("--transformer", "-t", default="tiny")
    p.add_argument("--world-size", type=int, default=2, choices=[2, 4, 6, 8])
    p.add_argument("--profile", help="calibrated profile to reuse (default: calibrate now; "
                                     "with --resume, the stopped run's)")
    p.add_argument("--global-batch-size", "-b", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="steps per plan and round (default 8)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps (default 3; memory is counted on the last of them)")
    p.add_argument("--threads", type=int, help="threads per rank (default cores / world size)")
    p.add_argument("--limit", type=int, help="run only the N best-ranked plans")
    p.add_argument("--timeout", type=int, default=120,
                   help="seconds a collective may wait before its plan fails (default 120, as "
                        "`paraplan run`)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over all plans (default 3); a plan's step time is the median "
                        "over rounds of each round's median timed step")
    p.add_argument("--spread-tolerance", type=float, default=0.05, metavar="F",
                   help="a prediction counts as within a plan's spread inside [min, max] "
                        "widened by this fraction (default 0.05)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop cleanly at a plan boundary after M minutes from the start "
                        "(calibration included), keeping what was measured")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped run in --out-dir (same settings)")
    p.add_argument("--out-dir", default="validate-local")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from planner.schema import InputError
    if args.timeout < 1:
        raise InputError(f"--timeout must be >= 1, got {args.timeout}")
    if args.warmup >= args.steps:
        raise InputError(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    if args.rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {args.rounds}")
    if not 0 <= args.spread_tolerance < 1:
        raise InputError(f"--spread-tolerance must be in [0, 1), got {args.spread_tolerance}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise InputError(f"--max-minutes must be > 0, got {args.max_minutes}")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from executor.commands.calibrate import oversubscription, record_oversubscription, \
        warn_oversubscribed
    from executor.validate_local import FILE, load_stopped, validate_local
    from planner.commands.common import console
    from planner.commands.compare import show
    from planner.hardware import Cluster, load_cluster
    from planner.report.compare_html import label
    from planner.schema import InputError, validate_as
    from planner.transformer import load_transformer
    _check(args)
    spec = load_transformer(args.transformer)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # calibration writes its probes there first
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.world_size)
    out = console()
    info = oversubscription(args.world_size, threads)
    warn_oversubscribed(info, out.print)
    stopped = load_stopped(out_dir / FILE) if args.resume else None
    if args.profile:
        cluster = load_cluster(args.profile)
        if cluster.num_gpus != args.world_size:
            raise InputError(f"--profile {args.profile} describes {cluster.num_gpus} ranks, not "
                             f"--world-size {args.world_size}")
    elif stopped is not None:
        cluster = validate_as(Cluster, stopped["profile"], f"{out_dir / FILE}: profile")
    else:
        from executor.calibration_run import calibrate
        path = out_dir / f"cpu_{args.world_size}x{threads}.json"
        out.print(f"calibrating {args.world_size} ranks x {threads} thread(s) -> {path}")
        _, raw = calibrate(args.world_size, threads, False, path.stem, path, echo=out.print)
        record_oversubscription(path, raw, info)
        cluster = load_cluster(str(path))
    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    data = validate_local(spec, cluster, args.global_batch_size, args.steps, args.warmup,
                          threads, out_dir, args.limit, out.print, args.timeout,
                          rounds=args.rounds, tolerance=args.spread_tolerance,
                          deadline=deadline, max_minutes=args.max_minutes, resume=stopped,
                          extra={"oversubscription": info})
    if data["rows"]:
        show(data)
    for f in data["failed"]:
        out.print(f"[red]failed:[/] {label(f['plan'])} (round {f['round']}): {f['error']}")
    written = [out_dir / FILE] + ([out_dir / "report.html"] if data["rows"] else [])
    out.print(f"{len(data['rows'])} of {data['plans_total']} plans ran, {len(data['failed'])} "
              f"failed, {data['rounds_done']} of {args.rounds} rounds done in "
              f"{(time.monotonic() - started) / 60:.1f} min; written: "
              f"{', '.join(map(str, written))}")
    if not data["complete"]:
        out.print("[yellow]stopped before the end[/] (complete: false): run the same command "
                  "with --resume to measure the rest")
    return 1 if data["failed"] else 0
