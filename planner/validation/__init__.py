"""Predicted vs. published: measured training runs (model, cluster, plan, seconds per step) and
the error of the cost model on them.

`published_runs.json` is a copy of `../shared/validation/runs.json` (25 Megatron-LM and
DeepSpeed runs on A100 clusters, Narayanan et al. 2021 and Korthikanti et al. 2022, with their
sources and how each published figure became seconds per step); a test keeps the copy identical
to the shared file.
`current_runs.json` is a copy of `../shared/validation/runs_current.json` (35 runs of current
stacks, Megatron-Core, torchtitan and PyTorch FSDP, on A100 / A800, H100 / H800 and H200; a test
keeps it identical too). `held_out_runs.json` holds the 6 Narayanan et al. 2021 Table 2 PTD-P
rows that the shared README derives but leaves out (virtual stages not stated); they are never
used to fit anything. `moe_runs.json` is a copy of `../shared/validation/runs_moe.json` (13
mixture-of-experts runs: Megatron-Core ModelZoo and NeMo AutoModel on H100 and GB200; a test
keeps it identical); nothing is fitted on it.

Summaries by set, source, framework and GPU: `planner.validation.groups`; leave-one-source-out
refit of the fitted number: `planner.validation.cv`; error bands from it:
`planner.validation.bands` (read back by `planner.uncertainty`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.cost.evaluate import predict
from planner.hardware import Cluster, load_cluster
from planner.plan import Plan
from planner.schema import InputError, read_json, validate_as
from planner.stack import DEFAULT_STACK, Stack, stack_for_framework
from planner.validation.hardware_map import real_cluster
from planner.transformer import TransformerSpec

GiB = 2**30


class PublishedRun(BaseModel):
    """One published measurement. Metadata keys beyond these are ignored (sources vary); the
    nested spec and plan are strict."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1)
    """Identifier."""
    source: str = ""
    """Citation."""
    framework: str = ""
    """The training software the run was measured on, as the shared validation files name it
    (`megatron-lm-2021`, `deepspeed`, `megatron-core`, `torchtitan`, `fsdp`, or `other:<name>`;
    ../shared/validation/README.md, "Every run's `framework`"); it names the stack the run is
    predicted with (planner.stack.stack_for_framework); "" where a file does not say, which is
    predicted with the default stack."""
    transformer: TransformerSpec
    """Model shape."""
    cluster: str = Field(min_length=1)
    """Cluster preset (or profile path)."""
    num_nodes: int = Field(ge=1)
    """Nodes used."""
    plan: Plan
    """Parallel layout as published."""
    measured_step_time_s: float = Field(gt=0)
    """Seconds per optimizer step (converted from the published figure where needed)."""
    measured_peak_memory_gib: float | None = Field(default=None, gt=0)
    """Peak memory per GPU, where published."""
    stack: str = ""
    """The stack the run is predicted with where its file names one (a name, alias or stack
    file of planner.stack), e.g. a blind set whose benchmark recipe documents its token
    dispatcher; "" (the shipped sets): stack_map.json, else the one `framework` names."""
    recompute_stated: bool = True
    """False where the source does not say which activation recompute ran (`recompute:
    "unknown"` in the file): `run_plan` then takes the lightest setting that fits."""

    @model_validator(mode="before")
    @classmethod
    def _normalise_plan(cls, data: Any) -> Any:
        """The MoE set writes `schedule: "none"` for runs without pipelining (pp = 1: the plan
        contract's 1f1b runs the micro-batches back to back, the same thing) and `recompute:
        "unknown"` where the source does not say (../shared/validation/README.md, third set):
        kept as none here and marked, so that `run_plan` can pick the lightest recompute the
        run fits with."""
        if isinstance(data, dict) and isinstance(data.get("plan"), dict):
            plan = dict(data["plan"])
            if plan.get("schedule") == "none" and plan.get("pp", 1) == 1:
                plan["schedule"] = "1f1b"
            stated = True
            if plan.get("recompute") == "unknown":
                plan["recompute"], stated = "none", False
            data = {**data, "plan": plan, "recompute_stated": stated}
        return data


# The shipped sets, in the order `paraplan validate` prints them: name -> packaged file.
SHIPPED_SETS = {"published": "published_runs.json", "current": "current_runs.json",
                "held_out": "held_out_runs.json", "moe": "moe_runs.json"}
# The sets every fitted number may be chosen on (held_out is never fitted on).
FIT_SETS = ("published", "current")


def _validation_dir() -> Path:
    return Path(str(resources.files("planner"))) / "validation"


def default_runs_path() -> Path:
    """The packaged copy of the published runs."""
    return _validation_dir() / SHIPPED_SETS["published"]


def shipped_set_path(name: str) -> Path:
    """The packaged file of a shipped set (`published`, `current`, `held_out`)."""
    if name not in SHIPPED_SETS:
        raise InputError(f"unknown validation set '{name}'; accepted: {', '.join(SHIPPED_SETS)}")
    return _validation_dir() / SHIPPED_SETS[name]


def load_sets(path: str | Path | None = None,
              names: tuple[str, ...] = tuple(SHIPPED_SETS)) -> dict[str, list[PublishedRun]]:
    """Set name -> its runs: the shipped sets `names` by default, else the one file `path`
    (named by its file stem)."""
    if path:
        return {Path(path).stem: load_runs(path)}
    return {n: load_runs(shipped_set_path(n)) for n in names}


def load_runs(path: str | Path | None = None) -> list[PublishedRun]:
    """Runs from a JSON list (default: the shipped published runs)."""
    p = Path(path) if path else default_runs_path()
    data = read_json(p, f"runs {p}")
    if not isinstance(data, list) or not data:
        raise InputError(f"runs {p}: expected a non-empty JSON list of runs")
    return [validate_as(PublishedRun, r, f"runs {p} [{i}] {r.get('name', '') if isinstance(r, dict) else ''}")
            for i, r in enumerate(data)]


@dataclass(frozen=True)
class Comparison:
    """Prediction vs. measurement for one run."""

    run: PublishedRun
    prediction: dict[str, Any]
    plan: Plan
    """The plan predicted (`run_plan`: the run's, with an unstated recompute resolved)."""
    gpu: str = ""
    """The bound cluster's GPU profile name (e.g. `a100_80g`)."""

    @property
    def error(self) -> float:
        """Signed relative step-time error (predicted / measured - 1)."""
        return self.prediction["step_time_s"] / self.run.measured_step_time_s - 1

    @property
    def memory_error(self) -> float | None:
        if self.run.measured_peak_memory_gib is None:
            return None
        return self.prediction["memory"]["peak_bytes"] / GiB / self.run.measured_peak_memory_gib - 1


@lru_cache(maxsize=None)
def _run_map(name: str) -> dict[str, dict]:
    """A packaged run-name map, read once (`run_stack` and `run_transformer` are called for
    every run of every CV fold, like hardware_map.json): stack_map.json, runs whose documented
    software differs from their framework's default stack (torch.compile on, DeepEP, ...);
    spec_map.json, runs whose benchmark setting the spec keys cannot say (a forced round-robin
    MoE gate); plan_map.json, plan keys the shipped run files predate (hybrid sharding)."""
    path = Path(str(resources.files("planner"))) / "validation" / f"{name}.json"
    return read_json(path, f"{name} {path}") if path.is_file() else {}


def run_transformer(run: PublishedRun) -> TransformerSpec:
    """The spec a run is predicted with: its own, with the MoE routing its benchmark forced
    (spec_map.json) where that differs from a learned router, and the spec keys its file
    predates (gpt-oss's expert biases and attention sinks)."""
    mapped = _run_map("spec_map").get(run.name)
    if not mapped or run.transformer.moe is None:
        return run.transformer
    update = {"moe": run.transformer.moe.model_copy(update=mapped.get("moe", {}))}
    if "attention" in mapped and run.transformer.attention is not None:
        update["attention"] = run.transformer.attention.model_copy(update=mapped["attention"])
    return run.transformer.model_copy(update=update)


def run_published_plan(run: PublishedRun) -> Plan:
    """The run's plan as published, with the keys plan_map.json adds where the run's notes
    document a setting its file's plan has no key for (hybrid sharding: `dp_shard`; pipeline
    schedules per step: `pipeline_passes`)."""
    mapped = _run_map("plan_map").get(run.name)
    return run.plan.model_copy(update=mapped["plan"]) if mapped else run.plan


def run_stack(run: PublishedRun) -> str:
    """The stack a run is predicted with: its own `stack` where its file names one, else the
    one its notes document (stack_map.json), else the one its `framework` names."""
    if run.stack:
        return run.stack
    mapped = _run_map("stack_map").get(run.name)
    if mapped:
        return mapped["stack"]
    return stack_for_framework(run.framework) if run.framework else DEFAULT_STACK


def unplannable(runs: list[PublishedRun]) -> list[tuple[PublishedRun, str]]:
    """Runs whose published plan the plan contract cannot express for this model, with the
    reason (validity messages); `compare` leaves them out and `paraplan validate` lists them."""
    from planner.validity import spec_problems
    out = []
    for run in runs:
        problems = spec_problems(run_published_plan(run), run_transformer(run))
        if problems:
            out.append((run, "; ".join(problems)))
    return out


def compare(runs: list[PublishedRun], adjust: Callable[[Cluster], Cluster] | None = None,
            stack: "str | Stack | None" = None) -> list[Comparison]:
    """Predict every run with the default profile of its cluster and the stack its framework
    names (or `stack` for all; `adjust` rewrites the bound profile, for ablations). Runs the
    plan contract cannot express (`unplannable`) are left out."""
    out = []
    skip = {r.name for r, _ in unplannable(runs)}
    for run in runs:
        if run.name in skip:
            continue
        cluster = run_cluster(run, stack)
        if adjust:
            cluster = adjust(cluster)
        spec = run_transformer(run)
        plan, prediction = planned(run, spec, cluster)
        out.append(Comparison(run, prediction, plan, cluster.gpu.name))
    return out


def planned(run: PublishedRun, spec: TransformerSpec, cluster: Cluster) -> tuple[Plan, dict]:
    """The run's plan (see run_plan) and its prediction, each plan predicted once."""
    published = run_published_plan(run)
    if run.recompute_stated:
        return published, predict(spec, cluster, published)
    for mode in ("none", "selective", "full"):
        plan = published.model_copy(update={"recompute": mode})
        prediction = predict(spec, cluster, plan)
        if prediction["fits"]:
            break
    return plan, prediction


def run_plan(run: PublishedRun, spec: TransformerSpec, cluster: Cluster) -> Plan:
    """The run's plan; where its source does not state the recompute, the lightest of none,
    selective and full under which the model's memory estimate fits the GPU (the published run
    did fit: a framework that runs out of memory reports no step time), else full."""
    return planned(run, spec, cluster)[0]


def run_cluster(run: PublishedRun, stack: "str | Stack | None" = None) -> Cluster:
    """The run's cluster at its node count, bound to `stack` (else the one its framework
    names); loaded once per (cluster, nodes, stack name) and reused (clusters are frozen)."""
    chosen = stack or run_stack(run)
    # The machine the run really ran on where its `cluster` is only the closest preset
    # (hardware_map.json; benchmarks/validate_real_hardware.py prints both errors).
    ref = real_cluster(run.name) or run.cluster
    if isinstance(chosen, Stack):
        return load_cluster(ref, run.num_nodes, chosen)
    return _cached_cluster(ref, run.num_nodes, chosen)


@lru_cache(maxsize=256)
def _cached_cluster(ref: str, num_nodes: int, stack: str) -> Cluster:
    return load_cluster(ref, num_nodes, stack)


def summary(comps: list[Comparison]) -> dict[str, float]:
    """Mean absolute percentage error, maximum absolute error, mean signed error (all in %)."""
    errs = [c.error for c in comps]
    return {"count": len(errs), "mape_pct": 100 * sum(abs(e) for e in errs) / len(errs),
            "max_abs_error_pct": 100 * max(abs(e) for e in errs),
            "mean_error_pct": 100 * sum(errs) / len(errs)}
