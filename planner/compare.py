"""Predicted vs. measured: pair each plan's prediction with its measurement, and the statistics
the targets are stated in (errors, rank correlation, best-plan check, memory by component),
and, for plans measured in rounds (validate-local --rounds), the spread and the figures judged
against it (planner/noise.py). Torch-free; the HTML is planner/report/compare_html.py."""

from __future__ import annotations

import statistics
from typing import Any

from planner.noise import DEFAULT_TOLERANCE, judge, machine_noise, pick, within_spread_share
from planner.plan import Plan
from planner.stages import pipeline_rank

# predicted memory key -> measured key
MEMORY = {"weights_bytes": "params_bytes", "gradients_bytes": "grads_bytes",
          "optimizer_bytes": "optimizer_bytes", "activations_bytes": "activations_bytes"}


# The pipeline rank (0..pp-1) a global rank runs; one definition, in planner/stages.py.
stage_index = pipeline_rank


def rank_stage(plan: Plan, rank: int) -> str:
    """'first', 'middle' or 'last': which kind of pipeline stage `rank` runs."""
    pos = pipeline_rank(plan, rank)
    return "first" if pos == 0 else "last" if pos == plan.pp - 1 else "middle"


def rank_memory(plan: Plan, predicted: dict[str, Any], rank: int) -> dict[str, int]:
    """The predicted bytes by component of `rank`'s own pipeline stage (stages in the middle
    differ: 1F1B keeps pp - s micro-batches in flight on stage s). Predictions written before
    `memory_per_stage` existed fall back to the first / middle / last stage."""
    per_stage = predicted.get("memory_per_stage")
    if per_stage and len(per_stage) == plan.pp:
        return per_stage[pipeline_rank(plan, rank)]
    return predicted["memory_by_stage"][rank_stage(plan, rank)]


def checkpoint_stall(measured: dict[str, Any], predicted_bytes: float | None,
                     write_GBps: float, per_tensor_s: float = 0.0,
                     fixed_s: float = 0.0) -> dict[str, Any]:
    """Measured checkpoint stall (median over saves, slowest rank) against the synchronous
    write the goodput model predicts, bytes / write bandwidth (planner.goodput
    checkpoint_write_s; the executor saves synchronously), plus the storage's fixed
    `latency_s` (`fixed_s`) and `per_tensor_s` times the tensors the run saved: from the bytes
    the run wrote, and from the planner's bytes."""
    stall = statistics.median(measured["checkpoint_stall_s"])
    got = measured.get("checkpoint_bytes")
    latency_s = fixed_s + per_tensor_s * (measured.get("checkpoint_tensors") or 0)
    out: dict[str, Any] = {"measured_stall_s": stall, "write_GBps": write_GBps,
                           "per_tensor_s": per_tensor_s, "latency_s": latency_s,
                           "measured_bytes": got, "predicted_bytes": predicted_bytes}
    if got:
        out["bandwidth_only_stall_s"] = got / (write_GBps * 1e9)
        out["predicted_stall_s"] = latency_s + out["bandwidth_only_stall_s"]
        out["stall_error"] = out["predicted_stall_s"] / stall - 1
    if predicted_bytes:
        out["predicted_stall_from_plan_s"] = latency_s + predicted_bytes / (write_GBps * 1e9)
        if got:
            out["bytes_error"] = predicted_bytes / got - 1
    return out


def compare_one(plan: Plan, predicted: dict[str, Any], measured: dict[str, Any],
                checkpoint: dict[str, Any] | None = None, *,
                rounds_s: list[float] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                search_rank: int | None = None) -> dict:
    """One row: step-time error and, per memory component, the worst error over ranks; with
    `checkpoint` (checkpoint_stall's result), the measured vs. predicted checkpoint stall.
    With `rounds_s` (one value per round, each the median of that round's timed steps),
    `measured["step_time_s"]` must be their median; the row adds `measured_rounds_s`,
    `measured_spread_s` {min, max, q25, q75} and `within_spread` (the prediction inside
    [min, max] widened by `tolerance`). `search_rank`: the plan's place in the search's order
    (0 = the search's first plan)."""
    step = measured["step_time_s"]
    if rounds_s:
        med = statistics.median(rounds_s)
        if abs(med - step) > 1e-12 * max(abs(med), 1e-30):
            raise ValueError(f"measured step_time_s {step} is not the median {med} of its "
                             f"{len(rounds_s)} rounds")
    row = {"plan": plan.to_json_dict(),
           "predicted": {k: predicted[k] for k in ("step_time_s", "breakdown", "memory",
                                                  "memory_by_stage", "memory_per_stage")
                         if k in predicted},
           "measured": measured,
           "step_error": predicted["step_time_s"] / step - 1,
           "predicted_step_time_s": predicted["step_time_s"], "measured_step_time_s": step}
    if search_rank is not None:
        row["search_rank"] = search_rank
    if rounds_s:
        row.update(judge(predicted["step_time_s"], rounds_s, tolerance))
    errors: dict[str, float] = {}
    for pkey, mkey in MEMORY.items():
        worst = 0.0
        for m in measured["memory"]:
            p = rank_memory(plan, predicted, m["rank"])[pkey]
            worst = max(worst, abs(p / m[mkey] - 1) if m[mkey] else (0.0 if p == 0 else 1.0))
        errors[pkey.removesuffix("_bytes")] = worst
    row["memory_errors"] = errors
    if checkpoint is not None:
        row["checkpoint"] = checkpoint
    return row


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (Pearson on ranks, ties averaged)."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / den if den else 0.0


def summarize(rows: list[dict], tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The targets' statistics over all rows (errors against the measured step time, which is
    the median over rounds where the rows carry rounds), plus the protocol's figures: the share
    within their spread (widened by `tolerance`), the pick (planner.noise.pick) and the
    machine's noise (median over plans of (max - min) / median; None for one round)."""
    if not rows:
        raise ValueError("summarize needs at least one row, got 0")
    pred = [r["predicted"]["step_time_s"] for r in rows]
    meas = [r["measured"]["step_time_s"] for r in rows]
    errs = [abs(r["step_error"]) for r in rows]
    best_pred = min(range(len(rows)), key=lambda i: pred[i])
    best_meas = min(meas)
    mem = {k: [r["memory_errors"][k] for r in rows] for k in rows[0]["memory_errors"]}
    noise, noise_plans = machine_noise(rows)
    counts = [len(r["measured_rounds_s"]) for r in rows if r.get("measured_rounds_s")]
    return {
        "plans": len(rows),
        "step_mape_pct": 100 * statistics.fmean(errs),
        "step_max_error_pct": 100 * max(errs),
        "within_15_pct": sum(e <= 0.15 for e in errs) / len(rows),
        "rank_correlation": spearman(pred, meas),
        "predicted_best": rows[best_pred]["plan"],
        "predicted_best_vs_measured_best_pct": 100 * (meas[best_pred] / best_meas - 1),
        "memory": {k: {"mean_error_pct": 100 * statistics.fmean(v),
                       "max_error_pct": 100 * max(v),
                       "within_5_pct": sum(e <= 0.05 for e in v) / len(v)}
                   for k, v in mem.items()},
        "within_spread_share": within_spread_share(rows, tolerance),
        "spread_tolerance": tolerance,
        "rounds_per_plan": {"min": min(counts), "max": max(counts)} if counts else None,
        "pick": pick(rows),
        "machine_noise": noise,
        "machine_noise_plans": noise_plans,
    }
