"""Leave-one-source-out cross-validation of the cost model's one fitted number.

The model has one number fitted to whole training runs: `gpu.gemm_sustained_fraction`, the share
of the MAMF micro-benchmark curve GEMMs sustain inside a training step (docs/accuracy.md). Every
GPU profile carries the same value, so the refit here is one number for all GPUs too: the
fraction on a grid over [0.50, 1.00] (step 0.005) with the least mean absolute error over the
runs of every source but one; that source's runs are then predicted with it. The errors of the
left-out predictions are the figure that says how well the model generalises to a source it has
not seen (`paraplan validate --cv`), and their spread gives the error bands
(planner/validation/bands.py).

Every run is predicted once per grid point (the topology of its cluster built once), so a fold
costs only a column choice (about 3 ms per run and grid point in all: some 20 s for
the 60 shipped runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.cost.evaluate import evaluate
from planner.hardware import Cluster
from planner.plan_arrays import PlanArrays
from planner.schema import InputError
from planner.stack import Stack
from planner.topology import Topology
from planner.uncertainty import gpu_generation, stack_family
from planner.validation import (FIT_SETS, PublishedRun, load_sets, run_cluster, run_plan,
                               run_transformer)
from planner.validation.groups import source_group
from planner.validity import plan_problems

GRID = np.round(np.linspace(0.50, 1.00, 101), 3)
"""Candidate fractions (step 0.005)."""


def with_fraction(cluster: Cluster, fraction: float) -> Cluster:
    """The cluster with its GPU's `gemm_sustained_fraction` rewritten (validated)."""
    gpu = cluster.gpu.model_validate({**cluster.gpu.model_dump(), "gemm_sustained_fraction": fraction})
    return cluster.model_copy(update={"gpu": gpu})


def step_time_grid(runs: list[PublishedRun], grid: np.ndarray = GRID,
                   stack: "str | Stack | None" = None) -> np.ndarray:
    """Predicted step time of every run (rows) at every fraction of `grid` (columns)."""
    out = np.empty((len(runs), len(grid)))
    for i, run in enumerate(runs):
        base, spec = run_cluster(run, stack), run_transformer(run)
        problems = plan_problems(run.plan, spec, base)
        if problems:
            raise InputError(f"run {run.name}: plan is invalid for its model and cluster: "
                             + "; ".join(problems))
        # The spec and plan `compare` predicts (spec_map.json settings, an unstated recompute
        # resolved), so the folds predict what `paraplan validate` does.
        topo, P = Topology(base), PlanArrays.from_plans([run_plan(run, spec, base)])
        for j, f in enumerate(grid):
            out[i, j] = evaluate(spec, with_fraction(base, float(f)), topo, P,
                                 with_memory=False)["step_time_s"][0]
    return out


def fit_fraction(errors: np.ndarray, grid: np.ndarray = GRID) -> tuple[float, float]:
    """(fraction, mean absolute error in %) of the grid column with the least mean absolute
    error over the rows of `errors` (runs x grid, predicted / measured - 1)."""
    if errors.shape[0] == 0:
        raise InputError("cannot fit gemm_sustained_fraction on no runs")
    mape = np.abs(errors).mean(axis=0)
    j = int(np.argmin(mape))
    return float(grid[j]), float(100 * mape[j])


@dataclass(frozen=True)
class Residual:
    """One run predicted with the fraction fitted without its source."""

    name: str
    source: str
    framework: str
    gpu: str
    stack: str
    fraction: float
    predicted_step_time_s: float
    measured_step_time_s: float

    @property
    def error(self) -> float:
        """predicted / measured - 1."""
        return self.predicted_step_time_s / self.measured_step_time_s - 1

    @property
    def band_group(self) -> str:
        """`family/generation`, e.g. `current/hopper`."""
        return f"{stack_family(self.stack)}/{gpu_generation(self.gpu)}"


@dataclass(frozen=True)
class Fold:
    """One source left out."""

    source: str
    fraction: float
    """Fitted on every other source's runs."""
    fit_runs: int
    fit_mape_pct: float
    """Mean absolute error on the runs it was fitted on."""
    residuals: tuple[Residual, ...]
    """The left-out source's runs, predicted with `fraction`."""


def _stats(errs: list[float]) -> dict[str, float]:
    a = np.abs(np.array(errs))
    return {"count": len(errs), "mape_pct": float(100 * a.mean()),
            "max_abs_error_pct": float(100 * a.max()), "mean_error_pct": float(100 * np.mean(errs))}


@dataclass(frozen=True)
class CVResult:
    """Leave-one-source-out result."""

    folds: tuple[Fold, ...]
    all_sources_fraction: float
    """The fraction fitted on every run (in sample, for reference)."""
    all_sources_mape_pct: float

    @property
    def residuals(self) -> list[Residual]:
        return [r for f in self.folds for r in f.residuals]

    def overall(self) -> dict[str, float]:
        """Mean / max absolute and mean signed error (%) of every left-out prediction."""
        return _stats([r.error for r in self.residuals])

    def as_json(self) -> dict:
        return {"fitted": "gpu.gemm_sustained_fraction (one value for every GPU)",
                "grid": [float(GRID[0]), float(GRID[-1]), float(GRID[1] - GRID[0])],
                "all_sources_fraction": self.all_sources_fraction,
                "all_sources_mape_pct": self.all_sources_mape_pct,
                "overall": self.overall(),
                "folds": [{"source": f.source, "fraction": f.fraction, "fit_runs": f.fit_runs,
                           "fit_mape_pct": f.fit_mape_pct,
                           **_stats([r.error for r in f.residuals]),
                           "runs": [{"name": r.name, "gpu": r.gpu, "framework": r.framework,
                                     "predicted_step_time_s": r.predicted_step_time_s,
                                     "measured_step_time_s": r.measured_step_time_s,
                                     "error_pct": 100 * r.error} for r in f.residuals]}
                          for f in self.folds]}


def leave_one_source_out(runs: list[PublishedRun], stack: "str | Stack | None" = None,
                         grid: np.ndarray = GRID) -> CVResult:
    """Refit the fraction without each source in turn and predict that source with it."""
    sources = [source_group(r.source) for r in runs]
    distinct = list(dict.fromkeys(sources))
    if len(distinct) < 2:
        raise InputError(f"--cv needs runs of at least two sources; got {distinct}")
    steps = step_time_grid(runs, grid, stack)
    measured = np.array([r.measured_step_time_s for r in runs])
    errors = steps / measured[:, None] - 1
    src = np.array(sources)
    folds = []
    for s in distinct:
        test = src == s
        fraction, fit_mape = fit_fraction(errors[~test], grid)
        j = int(np.flatnonzero(grid == fraction)[0])
        left_out = []
        for i in np.flatnonzero(test):
            run, cluster = runs[i], run_cluster(runs[i], stack)
            left_out.append(Residual(run.name, s, run.framework, cluster.gpu.name,
                                     cluster.stack.name, fraction, float(steps[i, j]),
                                     run.measured_step_time_s))
        folds.append(Fold(s, fraction, int((~test).sum()), fit_mape, tuple(left_out)))
    all_fraction, all_mape = fit_fraction(errors, grid)
    return CVResult(tuple(folds), all_fraction, all_mape)


@lru_cache(maxsize=1)
def shipped_cv() -> CVResult:
    """`leave_one_source_out` over the shipped fit sets (published + current), computed once
    per process (the error bands and their tests read it)."""
    return leave_one_source_out([r for rs in load_sets(names=FIT_SETS).values() for r in rs])
