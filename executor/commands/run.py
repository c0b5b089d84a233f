"""`paraplan run`, registered into the planner's CLI through the `paraplan.commands` entry point
(the planner never imports the executor). torch is imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train a plan for real with torch.distributed and measure it",
                       description="Launch one process per rank (torchrun; gloo on CPU, nccl on "
                                   "GPUs), train the plan on synthetic or file data, and write a "
                                   "Measurement JSON (step times, tokens/s, memory per rank).")
    p.add_argument("--plan", "-p", required=True, help="plan JSON file or inline JSON")
    p.add_argument("--transformer", "-t", default="tiny",
                   help="preset, spec JSON or HF config.json (default tiny)")
    p.add_argument("--steps", type=int, default=5, help="steps to run, warm-up included")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="token file (.npy, .bin uint16, or any file read as bytes)")
    p.add_argument("--out", default="run.json", help="Measurement path (default run.json)")
    p.add_argument("--save-every", type=int, default=0, metavar="K",
                   help="checkpoint every K steps into --checkpoint-dir")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--resume", metavar="DIR", help="continue from the newest checkpoint in DIR")
    p.add_argument("--timeout", type=int, default=120,
                   help="seconds a collective may wait before the run fails (default 120)")
    p.add_argument("--max-seconds", type=int, default=1800,
                   help="stop the whole run after this long (default 1800)")
    p.add_argument("--threads", type=int, help="CPU threads per rank (default cores / ranks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.commands.common import console, load_plan, plan_short
    from planner.schema import InputError
    from planner.transformer import load_transformer
    from planner.validity import spec_problems
    plan = load_plan(args.plan)
    spec = load_transformer(args.transformer)
    problems = spec_problems(plan, spec)
    if problems:
        raise InputError("plan cannot run this model: " + "; ".join(problems))
    for name, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                             ("--timeout", args.timeout, 1), ("--save-every", args.save_every, 0)):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    if args.warmup >= args.steps:
        raise InputError(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    if args.resume and not Path(args.resume).is_dir():
        raise InputError(f"--resume {args.resume}: not a directory")
    from executor.launch import RunError, check_runnable, launch
    check_runnable(plan)
    out = console()
    procs = f"{plan.world_size} process{'es' if plan.world_size > 1 else ''}"
    out.print(f"running {spec.name} on {procs} for {args.steps} steps: "
              f"{plan_short(plan)}, global batch {plan.global_batch_size}, {plan.precision}")
    try:
        m = launch(plan, spec, args.out, steps=args.steps, warmup=args.warmup, seed=args.seed,
                   data=args.data, save_every=args.save_every,
                   checkpoint_dir=args.checkpoint_dir if args.save_every else None,
                   resume=args.resume, timeout_s=args.timeout, max_seconds=args.max_seconds,
                   threads=args.threads, echo=out.print)
    except RunError as err:
        out.print(f"[red]run failed:[/] {err}")
        return 1
    out.print(f"step time {m.step_time_s:.4f} s (median of {len(m.step_times_s)}), "
              f"{m.tokens_per_s:,.0f} tokens/s; measurement written to [bold]{args.out}[/]")
    return 0
