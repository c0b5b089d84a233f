"""Measure, fit, fit the per-kernel overhead against the probe steps, write profile + raw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from executor.calibrate import PROBE, measure
from planner.calibration import fit_linear, profile_dict
from planner.cost.evaluate import predict
from planner.hardware import Cluster
from planner.plan import Plan
from planner.schema import validate_as, write_json_atomic


def with_fit(profile: dict, k: float, slowdown: float, gpus: int | None = None) -> Cluster:
    """The profile with per-kernel overhead `k` and in-step slowdown `slowdown` of per-token
    work (GEMMs through gemm_sustained_fraction, element-wise traffic)."""
    data = json.loads(json.dumps(profile))
    data["gpu"]["kernel_overhead_s"] = k
    slowdown = max(slowdown, 1.0)
    data["gpu"]["gemm_sustained_fraction"] = 1.0 / slowdown
    data["software"]["elementwise_traffic"] = slowdown
    if gpus:
        data["gpus_per_node"] = gpus
    return validate_as(Cluster, data, "calibrated profile")


def calibrate(world: int, threads: int, quick: bool, name: str, out: Path,
              echo: Callable[[str], None] = print) -> tuple[Cluster, Path]:
    raw = measure(world, threads, quick)
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
    profile["notes"].append("software.elementwise_traffic " + note)
    for key in ("software.elementwise_traffic",):
        profile["sources"][key] = profile["sources"]["software.optimizer_tensor_overhead_s"]
    profile["gpu"]["sources"]["gemm_sustained_fraction"] = profile["gpu"]["sources"][
        "kernel_overhead_s"]
    cluster = validate_as(Cluster, profile, "calibrated profile")
    raw_path = out.with_name(out.stem + ".raw.json")
    write_json_atomic(raw_path, raw)
    write_json_atomic(out, cluster.model_dump())
    return cluster, raw_path
