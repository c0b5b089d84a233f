"""Refit a Cluster profile's efficiency and overhead fields to measured training runs (the loop
back from measurement to profile). Torch-free: the runs are `paraplan run` Measurements or the
rows of a `predicted_vs_measured.json` (validate-local, compare).

The fitted fields are the ones calibration can only estimate from micro-benchmarks: per-kernel
time, the GEMM sustain fraction, element-wise traffic, the framework overheads, and each link's
latencies and bandwidth. Step time is close to linear in each of them (or in its inverse, for a
fraction or a bandwidth), so the fit is Levenberg-Marquardt on the relative error
pred / measured - 1, with finite-difference derivatives of the cost model itself and each field
kept within MAX_FACTOR of its starting value. A field the
runs do not exercise (its derivative is 0 on every run) keeps its value. K-fold cross-validation
reports the error on runs left out of the fit: the figure to trust, since the in-sample error of
a fit always looks good.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.cost.evaluate import evaluate
from planner.hardware import Cluster
from planner.measurement import Measurement
from planner.noise import DEFAULT_TOLERANCE, within_spread
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.schema import InputError, validate_as
from planner.topology import Topology
from planner.transformer import TransformerSpec
from planner.validity import plan_problems


@dataclass(frozen=True)
class Run:
    """One measured plan. `measured_s`: its step time (for a validate-local file, the median
    over rounds); `spread_s`: (min, max) over rounds where it was measured in rounds, and the
    `tolerance` that widens it (the run's --spread-tolerance)."""

    spec: TransformerSpec
    plan: Plan
    measured_s: float
    source: str
    spread_s: tuple[float, float] | None = None
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Field:
    """A profile field the fit may move. `inverse`: step time is linear in 1/value."""

    path: str
    inverse: bool = False
    low: float = 0.0
    high: float = float("inf")


FIELDS: tuple[Field, ...] = (
    Field("gpu.kernel_overhead_s"),
    Field("gpu.gemm_sustained_fraction", inverse=True, low=1e-3, high=1.0),
    Field("stack.elementwise_traffic", low=1e-3),
    Field("stack.optimizer_tensor_overhead_s"),
    Field("stack.dp_step_overhead_s"),
    Field("stack.fsdp_unit_overhead_s"),
    Field("stack.fsdp_unit_step_overhead_s"),
    Field("stack.tp_block_overhead_s"),
    Field("stack.sp_block_overhead_s"),
    Field("stack.pp_microbatch_overhead_s"),
    Field("stack.cp_block_overhead_s"),
    Field("stack.recompute_block_overhead_s"),
    Field("intra_node.latency_s"),
    Field("intra_node.call_latency_s"),
    Field("intra_node.bandwidth_GBps", inverse=True, low=1e-6),
    Field("inter_node.latency_s"),
    Field("inter_node.call_latency_s"),
    Field("inter_node.nic_bandwidth_GBps", inverse=True, low=1e-6),
)


def runs_from(data: Any, source: str) -> list[Run]:
    """Runs in one loaded JSON file: a Measurement, or a predicted_vs_measured.json (whose
    rows' measured step time is the median over rounds, `measured_step_time_s`, in files
    written with rounds; older files have only `measured.step_time_s`, the same figure)."""
    if isinstance(data, dict) and "rows" in data and "transformer" in data:
        spec = validate_as(TransformerSpec, data["transformer"], f"{source}: transformer")
        tol = float((data.get("protocol") or {}).get("spread_tolerance", DEFAULT_TOLERANCE))
        out = []
        for r in data["rows"]:
            band = r.get("measured_spread_s")
            out.append(Run(spec, validate_as(Plan, r["plan"], f"{source}: plan"),
                           float(r.get("measured_step_time_s", r["measured"]["step_time_s"])),
                           source, (band["min"], band["max"]) if band else None, tol))
        return out
    m = validate_as(Measurement, data, f"measurement {source}")
    return [Run(m.transformer, m.plan, m.step_time_s, source)]


def _get(d: dict, path: str) -> Any:
    for key in path.split("."):
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _set(d: dict, path: str, value: float) -> None:
    *head, last = path.split(".")
    for key in head:
        d = d[key]
    d[last] = value


def fittable(profile: dict) -> list[Field]:
    """The FIELDS this profile has (a single-node profile has no inter_node)."""
    return [f for f in FIELDS if isinstance(_get(profile, f.path), (int, float))]


def _theta(f: Field, value: float) -> float:
    return 1.0 / value if f.inverse else value


def _value(f: Field, theta: float) -> float:
    return 1.0 / theta if f.inverse else theta


# A refit may move a field that has a value by at most this factor either way: the value was
# measured (micro-benchmarks) or sourced, and that is evidence too. Without the bound, fields
# that step time barely separates trade off against each other and run to absurd values (an
# unbounded 4-rank CPU fit took the link to 1e12 GB/s). Fields at 0 (overheads a GPU profile
# leaves out) may grow freely.
MAX_FACTOR = 4.0


def _bounds(f: Field, theta0: float) -> tuple[float, float]:
    """Bounds on theta (the parameter step time is linear in), given its starting value."""
    if f.inverse:
        lo, hi = 1.0 / f.high, (1.0 / f.low if f.low > 0 else np.inf)
    else:
        lo, hi = f.low, f.high
    if theta0 > 0:
        lo, hi = max(lo, theta0 / MAX_FACTOR), min(hi, theta0 * MAX_FACTOR)
    return lo, hi


def with_values(profile: dict, fields: list[Field], theta: np.ndarray) -> Cluster:
    data = json.loads(json.dumps(profile))
    for f, t in zip(fields, theta):
        _set(data, f.path, _value(f, float(t)))
    return validate_as(Cluster, data, "refitted profile")


def predict_runs(cluster: Cluster, runs: list[Run]) -> np.ndarray:
    """Predicted step time of every run, evaluated in bulk per model."""
    out = np.empty(len(runs))
    topo = Topology(cluster)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.spec.model_dump_json(), []).append(i)
    for idx in groups.values():
        P = PlanArrays.from_plans([runs[i].plan for i in idx])
        out[idx] = evaluate(runs[idx[0]].spec, cluster, topo, P, with_memory=False)["step_time_s"]
    return out


def check_runs(cluster: Cluster, runs: list[Run]) -> None:
    """Every run must be a valid plan on this profile (same rank count)."""
    for r in runs:
        problems = plan_problems(r.plan, r.spec, cluster)
        if problems:
            raise InputError(f"{r.source}: plan is not valid on profile {cluster.name} "
                             f"({cluster.num_gpus} ranks): {'; '.join(problems)}")


def _jacobian(profile: dict, fields: list[Field], theta: np.ndarray, runs: list[Run],
              base: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """d(pred/measured)/d(theta), by forward differences (the model is near linear)."""
    cols = []
    for j in range(len(fields)):
        h = 1e-3 * abs(theta[j]) or 1e-7  # a field at 0 is a time: 0.1 us
        t = theta.copy()
        t[j] += h
        cols.append((predict_runs(with_values(profile, fields, t), runs) - base) / h / measured)
    return np.stack(cols, axis=1)


def _bounded_step(J: np.ndarray, resid: np.ndarray, theta: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray, active: np.ndarray, damping: float) -> np.ndarray:
    """Levenberg-Marquardt step for J step = -resid over the active fields (columns scaled to
    unit norm, `damping` added to the diagonal); a field the step would push past a bound is
    set to that bound and the rest re-solved (active-set projection)."""
    fixed = np.zeros(len(theta))
    free = active.copy()
    step = fixed
    for _ in range(len(theta)):
        A = J[:, free]
        scale = np.maximum(np.linalg.norm(A, axis=0), 1e-30)
        A = A / scale
        rhs = A.T @ (-resid - J @ fixed)
        step = fixed.copy()
        step[free] = np.linalg.solve(A.T @ A + damping * np.eye(A.shape[1]), rhs) / scale
        out = free & ((theta + step < lo) | (theta + step > hi))
        if not out.any():
            break
        fixed[out] = np.clip(theta + step, lo, hi)[out] - theta[out]
        free &= ~out
    return step


def fit(profile: dict, runs: list[Run], iterations: int = 30) -> tuple[dict, list[Field]]:
    """The profile with FIELDS refitted to `runs` (least squares on relative error, each field
    within MAX_FACTOR of its value); returns it and the fields the runs exercise."""
    fields = fittable(profile)
    theta = np.array([_theta(f, float(_get(profile, f.path))) for f in fields])
    lo, hi = map(np.array, zip(*(_bounds(f, t) for f, t in zip(fields, theta))))
    measured = np.array([r.measured_s for r in runs])
    pred = predict_runs(with_values(profile, fields, theta), runs)
    J = _jacobian(profile, fields, theta, runs, pred, measured)
    active = np.abs(J).max(axis=0) > 1e-9  # fields these runs exercise
    damping = 1e-3
    for _ in range(iterations):
        resid = pred / measured - 1.0
        for _ in range(8):  # raise the damping until the step helps (the model is near linear)
            new = np.clip(theta + _bounded_step(J, resid, theta, lo, hi, active, damping),
                          lo, hi)
            new_pred = predict_runs(with_values(profile, fields, new), runs)
            if np.sum((new_pred / measured - 1) ** 2) < np.sum(resid ** 2) * (1 - 1e-6):
                damping = max(damping / 10, 1e-9)
                break
            damping *= 10
        else:
            break
        theta, pred = new, new_pred
        J = _jacobian(profile, fields, theta, runs, pred, measured)
    moved = [f for f, a in zip(fields, active) if a]
    return with_values(profile, fields, theta).model_dump(), moved


def errors(pred: np.ndarray, runs: list[Run]) -> dict[str, float]:
    """Mean absolute, max and mean signed error (%) and the share within 15% of the measured
    step time (the median over rounds); with runs measured in rounds, also `within_spread`:
    the share of those whose prediction lies in their [min, max] widened by their
    tolerance, and `spread_runs`, how many there were."""
    e = pred / np.array([r.measured_s for r in runs]) - 1.0
    out = {"mean_abs_pct": 100 * float(np.mean(np.abs(e))),
           "max_abs_pct": 100 * float(np.max(np.abs(e))),
           "mean_signed_pct": 100 * float(np.mean(e)),
           "within_15": float(np.mean(np.abs(e) <= 0.15))}
    inside = [within_spread(float(p), {"min": r.spread_s[0], "max": r.spread_s[1]},
                            r.tolerance) for p, r in zip(pred, runs) if r.spread_s]
    if inside:
        out["within_spread"] = float(np.mean(inside))
        out["spread_runs"] = len(inside)
    return out


def cross_validate(profile: dict, runs: list[Run], folds: int) -> np.ndarray:
    """Predicted step time of each run by a profile fitted without its fold (runs i, i + k,
    i + 2k, ... form fold i)."""
    out = np.empty(len(runs))
    for k in range(folds):
        test = list(range(k, len(runs), folds))
        train = [r for i, r in enumerate(runs) if i % folds != k]
        fitted, _ = fit(profile, train)
        out[test] = predict_runs(Cluster.model_validate(fitted), [runs[i] for i in test])
    return out


def refit(profile: dict, runs: list[Run], folds: int = 5) -> tuple[dict, dict]:
    """(refitted profile with sources and a note, report: field values and errors before,
    in-sample after, and out-of-fold)."""
    if not runs:
        raise InputError("no measured runs to refit from")
    before = Cluster.model_validate(profile)
    check_runs(before, runs)
    fitted, moved = fit(profile, runs)
    report = {"runs": len(runs), "before": errors(predict_runs(before, runs), runs),
              "after": errors(predict_runs(Cluster.model_validate(fitted), runs), runs),
              "fields": {f.path: {"before": _get(profile, f.path), "after": _get(fitted, f.path)}
                         for f in moved}}
    if folds >= 2 and len(runs) >= 2 * folds:
        report["cross_validated"] = errors(cross_validate(profile, runs, folds), runs)
        report["folds"] = folds
    _annotate(fitted, moved, runs, report)
    return fitted, report


def _annotate(fitted: dict, moved: list[Field], runs: list[Run], report: dict) -> None:
    """Sources for every moved field, and a note with the before/after errors."""
    files = sorted({r.source for r in runs})
    today = datetime.date.today().isoformat()
    for f in moved:
        was = report["fields"][f.path]["before"]
        text = (f"refitted by `paraplan calibrate --from-runs` to {len(runs)} measured runs "
                f"({', '.join(files)}) on {today}; was {was:.6g}")
        if f.path.startswith("gpu."):
            fitted["gpu"]["sources"][f.path.removeprefix("gpu.")] = text
        elif f.path.startswith("stack."):
            fitted["stack"]["sources"][f.path.removeprefix("stack.")] = text
        else:
            fitted["sources"][f.path] = text
    b, a = report["before"], report["after"]
    cv = report.get("cross_validated")
    spread = "" if "within_spread" not in a else (
        f"; within the spread over rounds {100 * b['within_spread']:.0f}% -> "
        f"{100 * a['within_spread']:.0f}%" + (f" ({100 * cv['within_spread']:.0f}% held out)"
                                              if cv else ""))
    fitted["notes"].append(
        f"Refitted to {len(runs)} runs on {today}: step-time mean error {b['mean_abs_pct']:.1f}% "
        f"-> {a['mean_abs_pct']:.1f}% in sample" + (
            f", {cv['mean_abs_pct']:.1f}% on runs left out of the fit ({report['folds']}-fold)"
            if cv else "") + spread)

