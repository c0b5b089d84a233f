"""`paraplan export`: a plan as another framework's configuration.

One module per target (`planner/export/<target>.py`), each with `problems(plan, spec)` (why the
target cannot run the plan at all: checked with the planner's own spec checks before anything is
written), `render(plan, spec, stack) -> (text, unexpressed)` (the configuration text, and the plan
fields the target has no setting for, which the command prints on stderr) and
`launcher(plan, spec, config_path, gpus_per_node)` (the line that starts it)."""

from __future__ import annotations

from types import ModuleType

from planner.export import deepspeed, megatron, torchtitan
from planner.plan import Plan
from planner.schema import InputError
from planner.stack import Stack
from planner.transformer import TransformerSpec
from planner.validity import spec_problems

TARGETS: dict[str, ModuleType] = {m.NAME: m for m in (megatron, torchtitan, deepspeed)}


def target(name: str) -> ModuleType:
    """The export module for a target name."""
    key = name.strip().lower()
    if key not in TARGETS:
        raise InputError(f"--to: unknown export target '{name}'; accepted: "
                         f"{', '.join(TARGETS)}")
    return TARGETS[key]


def export_problems(plan: Plan, spec: TransformerSpec, name: str) -> list[str]:
    """Every reason the target cannot run the plan: the planner's cluster-free validity checks
    (planner/validity.py `spec_problems`), then the target's own."""
    return spec_problems(plan, spec) + target(name).problems(plan, spec)


def export(plan: Plan, spec: TransformerSpec, stack: Stack | None,
           name: str) -> tuple[str, list[str]]:
    """The plan as the target's configuration text, and the fields it cannot express.
    Raises InputError (one line) when the target cannot run the plan at all."""
    found = export_problems(plan, spec, name)
    if found:
        raise InputError(f"{name} cannot run this plan: {'; '.join(found)}")
    return target(name).render(plan, spec, stack)
