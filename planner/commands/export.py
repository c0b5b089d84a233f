"""`paraplan export`: write a plan as Megatron-LM arguments, a torchtitan TOML job config or a
DeepSpeed JSON config (planner/export/). The configuration goes to stdout or `--out`; the plan
fields the target cannot express and the launcher line go to stderr."""

from __future__ import annotations

import argparse
import sys

from planner.commands.common import add_stack_arg, load_plan_with_meta, plan_transformer
from planner.export import TARGETS, export, target
from planner.hardware import load_cluster
from planner.schema import InputError, write_text_atomic
from planner.stack import load_stack

# The stack each target's flags describe when --stack is not given (hardware_profiles/stacks/).
DEFAULT_STACKS = {"megatron": "megatron-core", "torchtitan": "torchtitan",
                  "deepspeed": "deepspeed"}
DEFAULT_GPUS_PER_NODE = 8


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a plan as Megatron-LM, torchtitan or DeepSpeed "
                                      "configuration",
                       description="Write a plan as another framework's configuration: "
                                   "Megatron-LM arguments, a torchtitan TOML job config or a "
                                   "DeepSpeed JSON config. Fields the target cannot express "
                                   "are listed on stderr.")
    p.add_argument("--plan", "-p", required=True,
                   help="plan JSON file (e.g. written by `paraplan search`) or inline JSON")
    p.add_argument("--transformer", "-t", default=None,
                   help="preset name, spec JSON or HF config.json (default: the transformer "
                        "the plan file records)")
    add_stack_arg(p)
    p.add_argument("--to", required=True, metavar="TARGET",
                   help=f"export target: {', '.join(TARGETS)}")
    p.add_argument("--out", "-o", default=None, help="write the configuration here "
                                                     "(atomically) instead of stdout")
    p.set_defaults(func=run)


def _gpus_per_node(meta: dict) -> int:
    """GPUs per node of the cluster the plan file records, else 8."""
    name = meta.get("cluster")
    if isinstance(name, str):
        try:
            return load_cluster(name).gpus_per_node
        except (InputError, ValueError):
            pass
    return DEFAULT_GPUS_PER_NODE


def run(args: argparse.Namespace) -> int:
    module = target(args.to)
    plan, meta = load_plan_with_meta(args.plan)
    spec = plan_transformer(args.transformer, meta)
    stack = load_stack(args.stack or DEFAULT_STACKS[module.NAME])
    text, unexpressed = export(plan, spec, stack, module.NAME)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"paraplan: wrote {module.DESCRIPTION} to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for field in unexpressed:
        print(f"paraplan: {module.NAME} cannot express: {field}", file=sys.stderr)
    print(f"paraplan: launch: {module.launcher(plan, spec, args.out, _gpus_per_node(meta))}",
          file=sys.stderr)
    return 0
