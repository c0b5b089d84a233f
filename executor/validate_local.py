"""Local validation: rank every valid plan of a small model for this machine with the planner,
run each with the executor (forked gloo world, one launch per batch of plans), and compare.
predicted_vs_measured.json is rewritten (atomically) as each plan finishes, so an interrupted
run keeps what it measured; a plan that fails is listed with its error under `failed`, kept out
of the rows and the statistics, and the others run on."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

from executor.local import run_plans
from executor.train import TrainConfig
from planner.compare import compare_one, summarize
from planner.cost.evaluate import predict
from planner.hardware import Cluster
from planner.plan import Plan
from planner.report import compare_html
from planner.schema import InputError, write_json_atomic
from planner.search.search import search
from planner.transformer import TransformerSpec


def measured(result: dict, warmup: int) -> dict:
    """A run_plans result as a measurement row (the timed steps' median), or its error."""
    if "error" in result:
        return {"error": result["error"]}
    timed = result["step_times_s"][warmup:]
    return {"step_time_s": statistics.median(timed), "step_times_s": timed,
            "memory": [{"rank": k, **m} for k, m in enumerate(result["memory"])]}


def measure(spec: TransformerSpec, plans: list[Plan], world: int, steps: int, warmup: int,
            threads: int, echo: Callable[[str], None], batch: int = 16, timeout_s: int = 120,
            on_plan: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Measured step time (median of the timed steps) and per-rank memory of every plan, or
    {"error": ...} for a plan that failed; each also passed to `on_plan(index, row)` as it
    lands."""
    cfg = TrainConfig(steps=steps, warmup=warmup)
    out: list[dict] = []

    def got(key: str, result: dict) -> None:
        out.append(measured(result, warmup))
        if on_plan:
            on_plan(int(key), out[-1])
        what = f"failed: {out[-1]['error']}" if "error" in out[-1] else "measured"
        echo(f"  plan {int(key) + 1}/{len(plans)} {what}")
    for start in range(0, len(plans), batch):
        jobs = [(str(i), spec, plans[i]) for i in range(start, min(start + batch, len(plans)))]
        run_plans(world, jobs, cfg, threads=threads, timeout_s=timeout_s, keep_going=True,
                  on_result=got)
    return out


def validate_local(spec: TransformerSpec, cluster: Cluster, global_batch: int, steps: int,
                   warmup: int, threads: int, out_dir: Path, limit: int | None,
                   echo: Callable[[str], None], timeout_s: int = 120) -> dict:
    """Search, run, compare; writes predicted_vs_measured.json as plans finish and report.html
    at the end (when any plan ran) in out_dir."""
    res = search(spec, cluster, global_batch, "fp32")
    if not res.fitting:
        raise InputError(f"no valid plan for {spec.name} on {cluster.num_gpus} ranks with "
                         f"global batch {global_batch}")
    plans = [res.plan(i) for i in range(res.fitting)]
    if limit:
        plans = plans[:limit]
    echo(f"{len(plans)} valid plans for {spec.name} on {cluster.num_gpus} ranks "
         f"(global batch {global_batch}); running each for {steps} steps ({warmup} untimed)")
    data = {"transformer": spec.model_dump(), "cluster": cluster.name,
            "world_size": cluster.num_gpus, "global_batch_size": global_batch,
            "threads_per_rank": threads, "profile": cluster.model_dump(), "plans_total": len(plans),
            "complete": False, "rows": [], "failed": [], "summary": None}
    path = out_dir / "predicted_vs_measured.json"

    def record(i: int, row: dict) -> None:
        if "error" in row:
            data["failed"].append({"plan": plans[i].to_json_dict(), "error": row["error"]})
        else:
            data["rows"].append(compare_one(plans[i], predict(spec, cluster, plans[i]), row))
            data["summary"] = summarize(data["rows"])  # the rows that ran, failures kept out
        write_json_atomic(path, data)
    measure(spec, plans, cluster.num_gpus, steps, warmup, threads, echo, timeout_s=timeout_s,
            on_plan=record)
    data["complete"] = True
    write_json_atomic(path, data)
    if data["rows"]:
        compare_html.write(out_dir / "report.html", data)
    return data
