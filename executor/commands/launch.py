"""`paraplan launch --slurm`: write an sbatch script that runs a plan over several nodes
(executor/slurm.py), registered through the `paraplan.commands` entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="write a cluster job script that runs a plan on N nodes",
                       description="Write an sbatch script: srun starts one `paraplan run` "
                                   "(one torchrun) per node, meeting at a c10d rendezvous on "
                                   "the first node; every step is explained in comments.")
    p.add_argument("--slurm", action="store_true", required=True,
                   help="write a SLURM sbatch script (the only scheduler so far)")
    p.add_argument("--nodes", type=int, required=True, help="nodes to run on")
    p.add_argument("--plan", "-p", required=True,
                   help="plan JSON file (on a filesystem every node sees) or inline JSON")
    p.add_argument("--transformer", "-t", help="passed to `paraplan run -t`")
    p.add_argument("--gpus-per-node", type=int, help="ranks per node (default world / nodes)")
    p.add_argument("--time", default="01:00:00", help="#SBATCH --time (default 01:00:00)")
    p.add_argument("--steps", type=int, default=5, help="passed to `paraplan run --steps`")
    p.add_argument("--result", default="run.json", help="Measurement path node 0 writes")
    p.add_argument("--out", "-o", default="paraplan.sbatch",
                   help="script path (default paraplan.sbatch; - for stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.commands.common import load_plan_with_meta
    from planner.schema import InputError
    from executor.slurm import node_layout, sbatch_script
    plan, _ = load_plan_with_meta(args.plan)
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    per_node = node_layout(plan, args.nodes, args.gpus_per_node)
    text = sbatch_script(args.plan, plan, args.nodes, per_node, time=args.time,
                         transformer=args.transformer, steps=args.steps, result=args.result)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    Path(args.out).write_text(text)
    print(f"wrote {args.out}: sbatch {args.out} runs the plan on {args.nodes} nodes x "
          f"{per_node} GPUs")
    return 0
