"""`paraplan run`, registered into the planner's CLI through the `paraplan.commands` entry point
(the planner never imports the executor). torch is imported only when the command runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from planner.transformer import TransformerSpec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train a plan for real with torch.distributed and measure it",
                       description="Launch one process per rank (torchrun; gloo on CPU, nccl on "
                                   "GPUs), train the plan on synthetic or file data, and write a "
                                   "Measurement JSON (step times, tokens/s, memory per rank).")
    p.add_argument("--plan", "-p", required=True, help="plan JSON file or inline JSON")
    p.add_argument("--transformer", "-t",
                   help="preset, spec JSON or HF config.json (default: the transformer the plan "
                        "file records, as `paraplan search` writes it; else tiny)")
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
                   help="wall-clock seconds before the whole run (every rank) is stopped, "
                        "silent hangs included (default 1800)")
    p.add_argument("--threads", type=int, help="CPU threads per rank (default cores / ranks)")
    p.add_argument("--allow-oversubscribe", action="store_true",
                   help="start more CPU ranks than max(8, 4 x cores) anyway")
    m = p.add_argument_group("multi-node (run the same command on every node, each with its "
                             "--node-rank)")
    m.add_argument("--nnodes", type=int, default=1, help="machines in the run (default 1)")
    m.add_argument("--node-rank", type=int, default=0,
                   help="this machine's number, 0..nnodes-1; node 0 hosts the rendezvous and "
                        "writes the Measurement; ranks r..r+K-1 run on node r/K")
    m.add_argument("--nproc-per-node", type=int, help="ranks per node (default world / nnodes)")
    m.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="node 0's address and a free port (torchrun's c10d rendezvous)")
    m.add_argument("--rdzv-id", default="paraplan", help="job id shared by all nodes")
    m.add_argument("--rdzv-timeout", type=int, default=300,
                   help="seconds to wait for every node to join (default 300)")
    p.set_defaults(func=run)


def choose_transformer(arg: str | None, meta: dict,
                       plan_ref: str) -> tuple[TransformerSpec, str, str | None]:
    """The model to train, where it came from, and a warning when `-t` overrides a different
    model the plan file records: `-t` if given, else the plan file's transformer (`paraplan
    search` records it), else tiny."""
    from planner.schema import InputError, validate_as
    from planner.transformer import load_transformer
    where = "plan" if plan_ref.lstrip().startswith("{") else f"plan {plan_ref}"
    recorded = None
    if "transformer" in meta:
        if not isinstance(meta["transformer"], dict):
            raise InputError(f"{where}: 'transformer' must be a TransformerSpec object (as "
                             f"`paraplan search` writes it), got "
                             f"{type(meta['transformer']).__name__}")
        recorded = validate_as(TransformerSpec, meta["transformer"], f"{where}: transformer")
    if arg:
        spec = load_transformer(arg)
        note = (f"note: the plan was searched for {recorded.name}; running {spec.name} from -t "
                f"{arg} instead" if recorded and recorded != spec else None)
        return spec, f"-t {arg}", note
    if recorded:
        return recorded, "recorded in the plan file", None
    return load_transformer("tiny"), "the default: the plan records no transformer, no -t", None


def run(args: argparse.Namespace) -> int:
    from planner.commands.common import console, load_plan_with_meta, plan_short
    from planner.schema import InputError
    from planner.validity import spec_problems
    plan, meta = load_plan_with_meta(args.plan)
    spec, source, note = choose_transformer(args.transformer, meta, args.plan)
    problems = spec_problems(plan, spec)
    if problems:
        raise InputError(f"plan cannot run {spec.name}: " + "; ".join(problems))
    for name, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                             ("--timeout", args.timeout, 1), ("--save-every", args.save_every, 0),
                             ("--max-seconds", args.max_seconds, 1)):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    if args.warmup >= args.steps:
        raise InputError(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    if args.resume and not Path(args.resume).is_dir():
        raise InputError(f"--resume {args.resume}: not a directory")
    from executor.launch import RunError, check_runnable, launch
    nodes = _nodes(args, plan)
    if nodes is None:
        check_runnable(plan, args.allow_oversubscribe)
    else:
        _check_node_runnable(plan, nodes.nproc_per_node, args.allow_oversubscribe)
    out = console()
    if note:
        out.print(note)
    procs = f"{plan.world_size} process{'es' if plan.world_size > 1 else ''}"
    if nodes:
        procs += (f" (node {nodes.node_rank} of {nodes.nnodes}: ranks "
                  f"{nodes.node_rank * nodes.nproc_per_node}.."
                  f"{(nodes.node_rank + 1) * nodes.nproc_per_node - 1})")
        for warning in _layout_warnings(plan, nodes.nproc_per_node):
            out.print(f"[yellow]warning:[/] {warning}")
    out.print(f"running {spec.name} ({source}) on {procs} for {args.steps} steps: "
              f"{plan_short(plan)}, global batch {plan.global_batch_size}, {plan.precision}")
    try:
        m = launch(plan, spec, args.out, steps=args.steps, warmup=args.warmup, seed=args.seed,
                   data=args.data, save_every=args.save_every,
                   checkpoint_dir=args.checkpoint_dir if args.save_every else None,
                   resume=args.resume, timeout_s=args.timeout, max_seconds=args.max_seconds,
                   threads=args.threads, echo=out.print, nodes=nodes)
    except RunError as err:
        out.print(f"[red]run failed:[/] {err}")
        return 1
    if m is None:
        out.print(f"node {nodes.node_rank} done; node 0 (rank 0's node) writes the measurement")
        return 0
    out.print(f"step time {m.step_time_s:.4f} s (median of {len(m.step_times_s)}), "
              f"{m.tokens_per_s:,.0f} tokens/s; measurement written to [bold]{args.out}[/]")
    return 0


def _nodes(args: argparse.Namespace, plan):
    """The multi-node layout from the flags, checked; None for one machine."""
    from executor.launch import Nodes, check_nodes
    from planner.schema import InputError
    if args.nnodes == 1:
        if args.node_rank or args.rdzv_endpoint:
            raise InputError("--node-rank and --rdzv-endpoint need --nnodes > 1")
        return None
    if args.nnodes < 1:
        raise InputError(f"--nnodes must be >= 1, got {args.nnodes}")
    if not args.rdzv_endpoint:
        raise InputError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address)")
    if args.nproc_per_node is None and plan.world_size % args.nnodes:
        raise InputError(f"plan has {plan.world_size} ranks, not a multiple of --nnodes "
                         f"{args.nnodes}")
    nodes = Nodes(nnodes=args.nnodes, node_rank=args.node_rank, endpoint=args.rdzv_endpoint,
                  nproc_per_node=args.nproc_per_node or plan.world_size // args.nnodes,
                  rdzv_id=args.rdzv_id, timeout_s=args.rdzv_timeout)
    check_nodes(plan, nodes)
    return nodes


def _check_node_runnable(plan, per_node: int, allow_oversubscribe: bool) -> None:
    """check_runnable's rank limits, per node: this node's ranks against its GPUs or cores.
    (check_runnable counts the whole world against this machine, so it cannot run here; its
    precision checks then happen in the worker, which names the failing rank.)"""
    from executor.launch import cpu_rank_limit, visible_gpus
    from planner.schema import InputError
    gpus, cores = visible_gpus(), os.cpu_count() or 1
    if gpus and per_node > gpus:
        raise InputError(f"this node runs {per_node} ranks, it has {gpus} GPUs")
    if not gpus and per_node > cpu_rank_limit(cores) and not allow_oversubscribe:
        raise InputError(f"this node runs {per_node} processes, this CPU machine runs at most "
                         f"{cpu_rank_limit(cores)}; pass --allow-oversubscribe")


def _layout_warnings(plan, per_node: int) -> list[str]:
    """Ranks r..r+K-1 share a node; with the default order tp-cp-dp-pp a tp group of size <= K
    stays inside one. Warn where it does not: its all-reduces would cross the network."""
    from executor.launch import groups_spanning_nodes
    spans = groups_spanning_nodes(plan, "tp", per_node) if plan.tp > 1 else 0
    if not spans:
        return []
    return [f"{spans} tp group(s) of size {plan.tp} span nodes of {per_node} ranks (order "
            f"{plan.order}): tensor-parallel all-reduces will cross the network"]
