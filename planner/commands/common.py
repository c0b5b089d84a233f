"""Argument helpers and output formatting shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from planner.hardware import Cluster, load_cluster
from planner.plan import Plan
from planner.schema import InputError, read_json, validate_as
from planner.stack import DEFAULT_STACK, stack_names
from planner.transformer import TransformerSpec, load_transformer

GiB = 2**30


def console(json_mode: bool = False) -> Console:
    """Human output goes to stdout, or to stderr when stdout carries JSON."""
    return Console(file=sys.stderr if json_mode else sys.stdout, highlight=False,
                   soft_wrap=False, width=max(120, Console().width))


def add_model_args(p: argparse.ArgumentParser, transformer: str | None,
                   cluster: str | None, required: bool = True) -> None:
    """--transformer, --cluster, --num-nodes (`required=False`: a command that can take them
    from a plan file instead, see load_model_args)."""
    p.add_argument("--transformer", "-t", default=transformer,
                   required=required and transformer is None,
                   help="preset name (see `paraplan presets`), spec JSON, or HF config.json"
                        + (f" (default: {transformer})" if transformer else ""))
    p.add_argument("--cluster", "-c", default=cluster, required=required and cluster is None,
                   help="cluster preset name or profile JSON" + (f" (default: {cluster})"
                                                                 if cluster else ""))
    p.add_argument("--num-nodes", "-n", type=int, default=None,
                   help="scale the cluster to this many nodes (default: the profile's)")
    add_stack_arg(p)


def add_stack_arg(p: argparse.ArgumentParser) -> None:
    """--stack NAME|FILE: the training framework the plan is for."""
    names = ", ".join(f"{n} ({', '.join(a)})" if a else n for n, a in stack_names().items())
    p.add_argument("--stack", "-s", default=None, metavar="NAME|FILE",
                   help=f"training stack: {names}, or a stack JSON (default: the cluster "
                        f"profile's own stack if it has one, as calibrated CPU profiles do, "
                        f"else {DEFAULT_STACK})")


def plan_transformer(ref: str | None, meta: dict) -> TransformerSpec:
    """The transformer `-t ref` names, else the one a plan file records (`meta`,
    load_plan_with_meta); InputError where neither is there."""
    if ref is not None:
        return load_transformer(ref)
    if isinstance(meta.get("transformer"), dict):
        return validate_as(TransformerSpec, meta["transformer"], "the plan's transformer")
    raise InputError("--transformer is required (-t): the plan file records no transformer")


def load_model_args(args: argparse.Namespace, meta: dict | None = None,
                    plan: Plan | None = None) -> tuple[TransformerSpec, Cluster]:
    """The spec and cluster named on the command line, the cluster bound to `--stack`. Where
    -t or -c is not given, the ones a plan file records (`meta`, load_plan_with_meta), the
    cluster at the plan's GPU count unless --num-nodes says otherwise."""
    meta = meta or {}
    spec = plan_transformer(args.transformer, meta)
    stack = getattr(args, "stack", None)
    if args.cluster is not None:
        return spec, load_cluster(args.cluster, args.num_nodes, stack)
    if not isinstance(meta.get("cluster"), str):
        raise InputError("--cluster is required (-c): the plan file records no cluster")
    cluster = load_cluster(meta["cluster"], args.num_nodes, stack)
    per_node = cluster.gpus_per_node
    if args.num_nodes is None and plan is not None and plan.world_size % per_node == 0:
        cluster = cluster.with_num_nodes(plan.world_size // per_node)
    return spec, cluster


# Keys a plan file may carry beside the flat plan contract keys: what the plan was searched for
# (`paraplan search` writes them, so `paraplan run best_plan.json` trains the same model).
PLAN_META_KEYS = ("transformer", "cluster")


def load_plan_with_meta(ref: str) -> tuple[Plan, dict]:
    """A plan from a JSON file path, or inline JSON text starting with '{', and the metadata the
    file records beside it: `transformer` (a TransformerSpec dict) and `cluster` (a name), each
    present only where the file has it."""
    text = ref.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"--plan: inline JSON is malformed ({err.msg} at column "
                             f"{err.colno})") from None
        where = "plan"
    else:
        path = Path(ref)
        where = f"plan {path}"
        data = read_json(path, where)
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object of plan keys, got "
                         f"{type(data).__name__}")
    meta = {k: data[k] for k in PLAN_META_KEYS if k in data}
    plan = validate_as(Plan, {k: v for k, v in data.items() if k not in PLAN_META_KEYS}, where)
    return plan, meta


def load_plan(ref: str) -> Plan:
    """A plan from a JSON file path, or inline JSON text starting with '{' (metadata keys such as
    the recorded transformer are accepted and ignored: see `load_plan_with_meta`)."""
    return load_plan_with_meta(ref)[0]


def gib(nbytes: float) -> str:
    """Bytes as GiB with one decimal."""
    return f"{nbytes / GiB:.1f}"


def seconds(s: float) -> str:
    """Seconds with sensible precision and their unit (s, ms or us)."""
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def plan_short(plan: Plan) -> str:
    """One-line plan summary."""
    extra = []
    if plan.ep > 1 or plan.etp > 1:
        extra.append(f"ep={plan.ep}" + (f" etp={plan.etp}" if plan.etp > 1 else ""))
    if plan.virtual_pipeline_stages > 1:
        extra.append(f"v={plan.virtual_pipeline_stages}")
    if plan.pipeline_passes > 1:
        extra.append(f"passes={plan.pipeline_passes}")
    if plan.zero_stage:
        extra.append(f"zero{plan.zero_stage}" + (f" dp_shard={plan.dp_shard}"
                                                  if plan.hsdp else ""))
    if plan.recompute != "none":
        extra.append(f"recompute={plan.recompute}")
    if plan.sequence_parallel:
        extra.append("sp")
    return (f"dp={plan.dp} tp={plan.tp} pp={plan.pp} cp={plan.cp} mbs={plan.micro_batch_size} "
            f"{plan.schedule} " + " ".join(extra)).strip()
