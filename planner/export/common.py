"""Helpers the export targets share: which rank orders are the same layout, how the plan cuts
its pipeline, and a small argv / TOML writer (the planner stays free of framework imports)."""

from __future__ import annotations

import shlex

from planner.plan import Plan
from planner.stages import layer_split
from planner.transformer import TransformerSpec


def effective_order(plan: Plan) -> str:
    """The rank order restricted to the dimensions of size > 1: two orders that agree on these
    build the same process groups, so only this part of `plan.order` matters."""
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    return "-".join(d for d in plan.order.split("-") if sizes[d] > 1)


def order_problem(plan: Plan, target: str, orders: tuple[str, ...]) -> list[str]:
    """A problem line when the plan's order (where it matters) is none of `orders`."""
    mine = effective_order(plan)
    if any(effective_order(plan.model_copy(update={"order": o})) == mine for o in orders):
        return []
    return [f"rank order {plan.order}: {target} builds its groups only as "
            f"{' or '.join(orders)} (innermost first)"]


def chunk_layers(plan: Plan, spec: TransformerSpec) -> list[int]:
    """Blocks in each of the pp x v pipeline chunks, chunk order (planner/stages.py)."""
    return layer_split(spec.num_layers, plan.pp * plan.virtual_pipeline_stages)


def is_even_split(plan: Plan, spec: TransformerSpec) -> bool:
    """Whether every pipeline chunk holds the same number of blocks."""
    return len(set(chunk_layers(plan, spec))) == 1


def argv_text(args: list[tuple[str, object]]) -> str:
    """Flags as a shell-quoted argument list, one flag per line with `\\` continuations.
    A value of None is a bare switch; a list is several values after one flag."""
    lines = []
    for flag, value in args:
        if value is None:
            lines.append(flag)
        elif isinstance(value, list):
            lines.append(" ".join([flag] + [shlex.quote(str(v)) for v in value]))
        else:
            lines.append(f"{flag} {shlex.quote(str(value))}")
    return " \\\n".join(lines) + "\n"


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def toml_text(header: list[str], tables: dict[str, dict[str, object]]) -> str:
    """A TOML document: comment lines, then one `[table]` per entry (dotted names allowed)."""
    out = [f"# {line}" for line in header]
    for name, keys in tables.items():
        if not keys:
            continue
        out.append("")
        out.append(f"[{name}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in keys.items())
    return "\n".join(out) + "\n"
