"""Measure, fit, fit the per-kernel overhead against the probe steps, write profile + raw."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

from executor.calibrate import PROBE, measure, measure_write_bandwidth
from executor.local import run_plans
from executor.train import TrainConfig
from planner.calibration import fit_linear, median_raw, profile_dict, storage_dict
from planner.cost.evaluate import predict
from planner.hardware import Cluster
from planner.plan import Plan
from planner.schema import validate_as, write_json_atomic


# Calibration rounds: each benchmark and probe plan measured this many times, the median kept
# (the same protocol as validate-local's plans: executor/rounds.py).
ROUNDS = 3


def with_fit(profile: dict, k: float, slowdown: float, gpus: int | None = None) -> Cluster:
    """The profile with per-kernel overhead `k` and in-step slowdown `slowdown` of per-token
    work (GEMMs through gemm_sustained_fraction, element-wise traffic)."""
    data = json.loads(json.dumps(profile))
    data["gpu"]["kernel_overhead_s"] = k
    slowdown = max(slowdown, 1.0)
    data["gpu"]["gemm_sustained_fraction"] = 1.0 / slowdown
    data["stack"]["elementwise_traffic"] = slowdown
    if gpus:
        data["gpus_per_node"] = gpus
    return validate_as(Cluster, data, "calibrated profile")


def overhead_probes(world: int) -> list[tuple[str, Plan]]:
    """One probe plan per framework overhead, fitted in this order (each probe's other costs
    are already fitted when its own is; the JOINT ones together)."""
    half = world // 2

    def plan(**kw) -> Plan:
        base = {"dp": world, "tp": 1, "pp": 1, "micro_batch_size": 1, "precision": "fp32"}
        base.update(kw)
        m = kw.pop("m", 2)
        base.pop("m", None)
        return Plan(global_batch_size=base["dp"] * base["micro_batch_size"] * m, **base)
    return [("dp_step_overhead_s", plan()),
            ("recompute_block_overhead_s", plan(recompute="full")),
            ("fsdp_unit_overhead_s", plan(zero_stage=3)),
            ("fsdp_unit_step_overhead_s", plan(zero_stage=2)),
            ("tp_block_overhead_s", plan(dp=half, tp=2)),
            ("sp_block_overhead_s", plan(dp=half, tp=2, sequence_parallel=True)),
            ("pp_microbatch_overhead_s", plan(dp=half, pp=2, m=4)),
            ("cp_block_overhead_s", plan(dp=half, cp=2))]


# Overheads fitted together on their probes: at 2 micro-batches the ZeRO-3 probe makes 4
# FSDP calls per unit per step (3 gathers, 1 reduce-scatter) and the ZeRO-2 probe 2, and both
# one sharded update per unit (planner/cost/zero.py), so neither probe alone tells the per-call
# cost from the per-step one.
JOINT = (("fsdp_unit_overhead_s", "fsdp_unit_step_overhead_s"),)


def _set(profile: dict, key: str, value: float, plan: Plan) -> None:
    profile["stack"][key] = value
    src = profile["stack"]["sources"]
    src[key] = src["optimizer_tensor_overhead_s"] + \
        f"; fitted to the probe plan {plan.model_dump_json()}"


def _predictor(profile: dict, keys: tuple[str, ...], plans: list[Plan]
               ) -> Callable[[list[float]], list[float]]:
    def predict_all(x: list[float]) -> list[float]:
        trial = json.loads(json.dumps(profile))
        trial["stack"].update(dict(zip(keys, x)))
        cl = validate_as(Cluster, trial, "calibrated profile")
        return [predict(PROBE, cl, p)["step_time_s"] for p in plans]
    return predict_all


def _fit(profile: dict, keys: tuple[str, ...], plans: list[Plan],
         measured: list[float]) -> list[float]:
    """The overheads `keys` that make the model match their probes (linear in them, so one
    least-squares step is exact); one that would be negative is 0 and the others are refit
    alone on their own probes."""
    values = fit_linear(_predictor(profile, keys, plans), [0.0] * len(keys), measured,
                        [1e-3] * len(keys))
    if len(keys) > 1 and 0.0 in values:
        free = [i for i, v in enumerate(values) if v > 0.0]
        base = {k: 0.0 for k in keys}
        trial = json.loads(json.dumps(profile))
        trial["stack"].update(base)
        for i in free:
            values[i] = _fit(trial, (keys[i],), [plans[i]], [measured[i]])[0]
            trial["stack"][keys[i]] = values[i]
    return values


def fit_overheads(profile: dict, world: int, threads: int, rounds: int = ROUNDS) -> list[dict]:
    """Run the probe plans with the executor in `rounds` rounds (each its own launch, every
    probe once per round, as validate-local measures plans) and set each overhead so the cost
    model matches its probe's median over rounds (linear in the overhead; the JOINT ones
    together); returns the raw probe measurements."""
    probes = overhead_probes(world)
    per_round = []
    for _ in range(rounds):
        res = run_plans(world, [(k, PROBE, p) for k, p in probes],
                        TrainConfig(steps=7, warmup=2), threads=threads)
        per_round.append({k: statistics.median(r["step_times_s"][2:]) for k, r in res.items()})
    plan_of = dict(probes)
    out = []
    for key, _ in probes:
        if any(key in group[1:] for group in JOINT):
            continue  # fitted with the first of its group
        keys = next((g for g in JOINT if g[0] == key), (key,))
        plans = [plan_of[k] for k in keys]
        measured = [statistics.median(r[k] for r in per_round) for k in keys]
        for k, v, p in zip(keys, _fit(profile, keys, plans, measured), plans):
            _set(profile, k, v, p)
        predicted = _predictor(profile, (), plans)([])
        out += [{"overhead": k, "plan": p.to_json_dict(), "measured_s": m,
                 "rounds_s": [r[k] for r in per_round], "fitted_s": profile["stack"][k],
                 "predicted_s": got}
                for k, p, m, got in zip(keys, plans, measured, predicted)]
    return out


def calibrate(world: int, threads: int, quick: bool, name: str, out: Path,
              echo: Callable[[str], None] = print,
              rounds: int = ROUNDS) -> tuple[Cluster, Path]:
    """Measure in `rounds` rounds (each its own launch) and fit to the medians: one short
    measurement of a shared machine is a snapshot of its load (docs/local_validation.md).
    `quick` measures once."""
    rounds = 1 if quick else max(1, rounds)
    raws = []
    for i in range(rounds):
        if rounds > 1:
            echo(f"calibrate: micro-benchmark round {i + 1}/{rounds} ...")
        raws.append(measure(world, threads, quick, checkpoint_dir=out.resolve().parent))
    raw = median_raw(raws)
    profile = profile_dict(raw, name)
    probes = [Plan(**p["plan"]) for p in raw["ranks"][0]["probe"]]
    measured = [sum(r["probe"][i]["seconds"] for r in raw["ranks"]) / len(raw["ranks"])
                for i in range(len(probes))]

    def predict_steps(x: list[float]) -> list[float]:
        one = with_fit(profile, x[0], x[1], gpus=1)
        return [predict(PROBE, one, plan)["step_time_s"] for plan in probes]
    k, slowdown = fit_linear(predict_steps, [0.0, 1.0], measured, [1e-5, 0.1])
    fitted = predict_steps([k, slowdown])
    profile = with_fit(profile, k, slowdown).model_dump()
    note = ("fitted to the probe steps (measured / predicted s): " + ", ".join(
        f"{m:.4f}/{p:.4f}" for m, p in zip(measured, fitted)))
    profile["gpu"]["notes"].append("kernel_overhead_s and gemm_sustained_fraction " + note)
    profile["stack"]["notes"].append("elementwise_traffic " + note)
    src = profile["stack"]["sources"]
    src["elementwise_traffic"] = src["optimizer_tensor_overhead_s"] + "; " + note
    profile["gpu"]["sources"]["gemm_sustained_fraction"] = profile["gpu"]["sources"][
        "kernel_overhead_s"]
    echo("calibrate: distributed probe steps (framework overheads) ...")
    raw["overhead_probes"] = fit_overheads(profile, world, threads, rounds)
    echo("calibrate: checkpoint write bandwidth (write + fsync) ...")
    # Measured where the profile is written (paraplan run checkpoints beside it by default).
    raw["storage"] = measure_write_bandwidth(out.resolve().parent)
    # rank 0's: the save times are the slowest rank's on every rank, bytes are rank 0's
    profile["storage"] = storage_dict(raw["storage"], raw["ranks"][0]["checkpoint"], name,
                                      f"on {raw['host']} on {raw['date']}")
    cluster = validate_as(Cluster, profile, "calibrated profile")
    raw_path = out.with_name(out.stem + ".raw.json")
    write_json_atomic(raw_path, raw)
    write_json_atomic(out, cluster.model_dump())
    return cluster, raw_path
