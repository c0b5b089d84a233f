"""Local validation: rank every valid plan of a small model for this machine with the planner,
run each with the executor (forked gloo world, one launch per batch of plans), and compare."""

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


def measure(spec: TransformerSpec, plans: list[Plan], world: int, steps: int, warmup: int,
            threads: int, echo: Callable[[str], None], batch: int = 16) -> list[dict]:
    """Measured step time (median of the timed steps) and per-rank memory of every plan."""
    cfg = TrainConfig(steps=steps, warmup=warmup)
    out: list[dict] = []
    for start in range(0, len(plans), batch):
        chunk = plans[start:start + batch]
        res = run_plans(world, [(str(i), spec, p) for i, p in enumerate(chunk)], cfg,
                        threads=threads)
        for i in range(len(chunk)):
            r = res[str(i)]
            timed = r["step_times_s"][warmup:]
            out.append({"step_time_s": statistics.median(timed), "step_times_s": timed,
                        "memory": [{"rank": k, **m} for k, m in enumerate(r["memory"])]})
        echo(f"  measured {min(start + batch, len(plans))}/{len(plans)} plans")
    return out


def validate_local(spec: TransformerSpec, cluster: Cluster, global_batch: int, steps: int,
                   warmup: int, threads: int, out_dir: Path, limit: int | None,
                   echo: Callable[[str], None]) -> dict:
    """Search, run, compare; writes predicted_vs_measured.json and report.html in out_dir."""
    res = search(spec, cluster, global_batch, "fp32")
    if not res.fitting:
        raise InputError(f"no valid plan for {spec.name} on {cluster.num_gpus} ranks with "
                         f"global batch {global_batch}")
    plans = [res.plan(i) for i in range(res.fitting)]
    if limit:
        plans = plans[:limit]
    echo(f"{len(plans)} valid plans for {spec.name} on {cluster.num_gpus} ranks "
         f"(global batch {global_batch}); running each for {steps} steps ({warmup} untimed)")
    measured = measure(spec, plans, cluster.num_gpus, steps, warmup, threads, echo)
    rows = [compare_one(p, predict(spec, cluster, p), m) for p, m in zip(plans, measured)]
    data = {"transformer": spec.model_dump(), "cluster": cluster.name,
            "world_size": cluster.num_gpus, "global_batch_size": global_batch,
            "threads_per_rank": threads, "profile": cluster.model_dump(), "rows": rows,
            "summary": summarize(rows)}
    write_json_atomic(out_dir / "predicted_vs_measured.json", data)
    compare_html.write(out_dir / "report.html", data)
    return data
