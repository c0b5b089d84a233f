"""`paraplan calibrate`: measure this machine into a Cluster profile (raw numbers beside it).
A world of more threads (ranks x threads per rank) than the machine has cores is oversubscribed:
it measures the contention between the ranks, not the plan; calibrate warns and says so in the
profile's notes and in the raw file (`oversubscription`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable


MEASURE_FLAGS = {"backend": "--backend", "world_size": "--world-size", "threads": "--threads",
                 "quick": "--quick", "rounds": "--rounds", "name": "--name"}
REFIT_FLAGS = {"profile": "--profile", "folds": "--folds"}


def oversubscription(world: int, threads: int, cpus: int | None = None) -> dict:
    """{"oversubscribed", "world_size", "threads_per_rank", "threads", "cpu_count"}: whether
    `world` ranks of `threads` threads each ask for more threads than `cpus` (default
    os.cpu_count())."""
    if world < 1 or threads < 1:
        raise ValueError(f"world size and threads per rank must be >= 1, got {world} x {threads}")
    cpus = cpus or os.cpu_count() or 1
    return {"oversubscribed": world * threads > cpus, "world_size": world,
            "threads_per_rank": threads, "threads": world * threads, "cpu_count": cpus}


def oversubscribed_text(info: dict) -> str:
    """The warning (and profile note) for an oversubscribed world."""
    return (f"oversubscribed: true ({info['world_size']} ranks x {info['threads_per_rank']} "
            f"thread(s) per rank = {info['threads']} threads on {info['cpu_count']} CPU cores): "
            "the measurements include the ranks' contention for the cores, not the plan alone")


def warn_oversubscribed(info: dict, echo: Callable[[str], None]) -> None:
    """Print the warning when `info` (oversubscription()) is oversubscribed."""
    if info["oversubscribed"]:
        echo(f"[yellow]warning:[/] {oversubscribed_text(info)}")


def record_oversubscription(profile_path: Path, raw_path: Path | None, info: dict) -> None:
    """Write `info` into the raw calibration file (key `oversubscription`) and, when
    oversubscribed, a note into the profile's `notes` (the Cluster schema has no key for it)."""
    from planner.hardware import Cluster
    from planner.schema import validate_as, write_json_atomic
    if raw_path is not None and raw_path.is_file():
        raw = json.loads(raw_path.read_text())
        raw["oversubscription"] = info
        write_json_atomic(raw_path, raw)
    if info["oversubscribed"]:
        profile = json.loads(profile_path.read_text())
        note = oversubscribed_text(info)
        if note not in profile.setdefault("notes", []):
            profile["notes"].append(note)
        write_json_atomic(profile_path, validate_as(Cluster, profile, "calibrated profile")
                          .model_dump())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Two modes, each with its own flags (measure this machine; refit to measured runs), as
    argument groups and a two-line usage, so --help says which flag belongs to which."""
    p = sub.add_parser(
        "calibrate", help="measure this machine into a hardware profile, or refit one to runs",
        usage="paraplan calibrate [--world-size N] [--threads T] [--quick] [--rounds R] [--name NAME] "
              "[--backend {gloo,nccl}] --out F\n"
              "       paraplan calibrate --from-runs RUN [RUN ...] [--profile P] [--folds K] "
              "--out F",
        description="Measure: micro-benchmarks with the executor's own stack (GEMMs, "
                    "memory-bound ops, attention, optimizer, collectives and point-to-point in a "
                    "training-like loop, probe training steps), fitted to a Cluster profile. "
                    "Refit (--from-runs): fit an existing profile's efficiency, overhead and "
                    "link fields to measured runs. Each mode refuses the other's flags.")
    p.add_argument("--out", required=True, metavar="F",
                   help="profile to write, e.g. hardware_profiles/local.json (both modes)")
    m = p.add_argument_group("measure this machine (the default)")
    m.add_argument("--backend", choices=["gloo", "nccl"], help="default gloo")
    m.add_argument("--world-size", type=int, metavar="N", help="ranks on this machine (default 2)")
    m.add_argument("--threads", type=int, metavar="T",
                   help="threads per rank (default cores / world size)")
    m.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings, one round "
                                                         "(~1 min)")
    m.add_argument("--rounds", type=int, metavar="R",
                   help="measure every benchmark and probe plan R times, each round its own "
                        "launch, and fit to the medians (default 3)")
    m.add_argument("--name", help="profile name (default cpu_<world>x<threads>)")
    r = p.add_argument_group("refit a profile to measured runs (--from-runs)")
    r.add_argument("--from-runs", nargs="+", metavar="RUN",
                   help="`paraplan run --out` files, or validate-local / compare "
                        "predicted_vs_measured.json files")
    r.add_argument("--profile", metavar="P", help="the profile to refit (default: the one inside a "
                                     "validate-local predicted_vs_measured.json)")
    r.add_argument("--folds", type=int, metavar="K",
                   help="cross-validation folds for the held-out error (default 5; 0 to skip)")
    p.set_defaults(func=run)


def _refuse_other_mode(args: argparse.Namespace) -> None:
    """A flag of the mode not running would be ignored without a word: refuse it instead."""
    from planner.schema import InputError
    other = MEASURE_FLAGS if args.from_runs else REFIT_FLAGS
    given = [flag for dest, flag in other.items()
             if getattr(args, dest) is not None and getattr(args, dest) is not False]
    if given:
        why = ("only for measuring this machine, not with --from-runs" if args.from_runs else
               "only with --from-runs (refitting a profile), not when measuring this machine")
        raise InputError(f"{', '.join(given)}: {why}")


def run(args: argparse.Namespace) -> int:
    from planner.commands.common import console
    from planner.schema import InputError
    _refuse_other_mode(args)
    if args.from_runs:
        from planner.commands.refit import refit_command
        return refit_command(args.from_runs, args.profile, args.out,
                             5 if args.folds is None else args.folds)
    args.world_size = 2 if args.world_size is None else args.world_size
    if args.world_size not in (2, 4, 6, 8):
        raise InputError(f"--world-size must be 2, 4, 6 or 8 (ranks are measured in pairs), "
                         f"got {args.world_size}")
    if args.backend == "nccl":
        raise InputError("--backend nccl: GPU calibration is not implemented yet (no GPU to build "
                         "and test it on); calibrate runs gloo on CPU ranks")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.world_size)
    name = args.name or f"cpu_{args.world_size}x{threads}"
    out = console()
    info = oversubscription(args.world_size, threads)
    warn_oversubscribed(info, out.print)
    out.print(f"calibrating {args.world_size} gloo ranks x {threads} thread(s) "
              f"({'quick' if args.quick else 'full'}; a few minutes on 2 cores) ...")
    from executor.calibration_run import ROUNDS, calibrate
    if args.rounds is not None and args.rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {args.rounds}")
    cluster, raw_path = calibrate(args.world_size, threads, args.quick, name, Path(args.out),
                                  echo=out.print, rounds=args.rounds or ROUNDS)
    record_oversubscription(Path(args.out), raw_path, info)
    g, link = cluster.gpu, cluster.intra_node
    out.print(f"fp32 peak {g.peak_tflops.fp32 * 1e3:.1f} GFLOP/s, memory "
              f"{g.hbm_bandwidth_GBps:.1f} GB/s, kernel overhead {g.kernel_overhead_s * 1e6:.1f} us, "
              f"optimizer {cluster.stack.optimizer_tensor_overhead_s * 1e6:.0f} us/tensor; link "
              f"{link.bandwidth_GBps:.2f} GB/s, {link.latency_s * 1e6:.0f} us/step + "
              f"{link.call_latency_s * 1e6:.0f} us/call")
    out.print(f"profile written to [bold]{args.out}[/] (raw measurements: {raw_path})")
    warn_oversubscribed(info, out.print)
    return 0
