"""`paraplan calibrate`: measure this machine into a Cluster profile (raw numbers beside it)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="measure this machine into a hardware profile",
                       description="Micro-benchmarks with the executor's own stack (GEMMs, "
                                   "memory-bound ops, attention, optimizer, collectives and "
                                   "point-to-point in a training-like loop, probe training "
                                   "steps), fitted to a Cluster profile.")
    p.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    p.add_argument("--world-size", type=int, default=2, help="ranks on this machine (default 2)")
    p.add_argument("--threads", type=int, help="threads per rank (default cores / world size)")
    p.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings (~1 min)")
    p.add_argument("--name", help="profile name (default cpu_<world>x<threads>)")
    p.add_argument("--out", required=True, help="profile path, e.g. hardware_profiles/local.json")
    p.add_argument("--from-runs", nargs="+", metavar="RUN",
                   help="instead of measuring: refit --profile's efficiency and overhead fields to "
                        "measured runs (`paraplan run --out` files, or a validate-local / compare "
                        "predicted_vs_measured.json) and write the result to --out")
    p.add_argument("--profile", help="with --from-runs: the profile to refit (default: the one "
                                     "inside a validate-local predicted_vs_measured.json)")
    p.add_argument("--folds", type=int, default=5,
                   help="with --from-runs: cross-validation folds for the held-out error "
                        "(default 5; 0 to skip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.commands.common import console
    from planner.schema import InputError
    if args.from_runs:
        from planner.commands.refit import refit_command
        return refit_command(args.from_runs, args.profile, args.out, args.folds)
    if args.world_size not in (2, 4, 6, 8):
        raise InputError(f"--world-size must be 2, 4, 6 or 8 (ranks are measured in pairs), "
                         f"got {args.world_size}")
    if args.backend == "nccl":
        raise InputError("--backend nccl: GPU calibration is not implemented yet (no GPU to build "
                         "and test it on); calibrate runs gloo on CPU ranks")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.world_size)
    name = args.name or f"cpu_{args.world_size}x{threads}"
    out = console()
    out.print(f"calibrating {args.world_size} gloo ranks x {threads} thread(s) "
              f"({'quick' if args.quick else 'full'}; a few minutes on 2 cores) ...")
    from executor.calibration_run import calibrate
    cluster, raw_path = calibrate(args.world_size, threads, args.quick, name, Path(args.out),
                                  echo=out.print)
    g, link = cluster.gpu, cluster.intra_node
    out.print(f"fp32 peak {g.peak_tflops.fp32 * 1e3:.1f} GFLOP/s, memory "
              f"{g.hbm_bandwidth_GBps:.1f} GB/s, kernel overhead {g.kernel_overhead_s * 1e6:.1f} us, "
              f"optimizer {cluster.software.optimizer_tensor_overhead_s * 1e6:.0f} us/tensor; link "
              f"{link.bandwidth_GBps:.2f} GB/s, {link.latency_s * 1e6:.0f} us/step + "
              f"{link.call_latency_s * 1e6:.0f} us/call")
    out.print(f"profile written to [bold]{args.out}[/] (raw measurements: {raw_path})")
    return 0
