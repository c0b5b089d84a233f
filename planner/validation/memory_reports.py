"""Memory that published runs report, where they report it, for checking the memory model:
the shipped run files leave measured_peak_memory_gib empty for these, because the figures are
reserved or nvidia-smi memory, not the allocator's peak (they bound it from above); and the one
published out-of-memory case. benchmarks/reported_memory.py prints the comparison.

Sources of the reported figures (GiB):
- FlagPerf training/nvidia/llama3_8B-megatron/README.md @0e0fc76 ('mem' column, used / 80 GiB);
- torchtitan's reported max reserved memory in the Trainy / WhiteFiber H200 logs (the runs'
  published_figure in ../shared/validation/runs_current.json);
- torchtitan docs/performance.md @0413364, footnote 1: Llama 2 70B with selective (op)
  checkpointing at local batch size 2 on 64 A100 80GB runs out of memory (batch size 1 runs).
"""

from __future__ import annotations

from planner.cost.evaluate import predict
from planner.validation import (load_runs, run_cluster, run_plan, run_transformer,
                                shipped_set_path)

GiB = 2**30
REPORTED_GIB = {
    "flagperf-llama3-8b-a800-8g-pp2dp4tp1": 76.0,
    "flagperf-llama3-8b-h100-8g-tp2-bf16": 71.0,
    "flagperf-llama3-8b-h100-8g-tp2-fp8": 74.0,
    "flagperf-llama3-8b-h100-16g-tp2-bf16": 62.0,
    "flagperf-llama3-8b-h100-16g-tp2-fp8": 64.0,
    "torchtitan-trainy-h200-l3-8b-32g-fp8": 47.96,
    "torchtitan-trainy-h200-l3-8b-64g-fp8": 46.97,
}
OOM_CASE = "torchtitan-a100-64g-l2-70b-selop-bs1"  # runs at local batch 1, OOM at 2


def rows() -> list[tuple[str, float, float, float]]:
    """(run, reported GiB, predicted peak GiB, GPU capacity GiB) for each reported figure."""
    out = []
    for run in load_runs(shipped_set_path("current")):
        if run.name in REPORTED_GIB:
            spec, cluster = run_transformer(run), run_cluster(run)
            r = predict(spec, cluster, run_plan(run, spec, cluster))
            out.append((run.name, REPORTED_GIB[run.name], r["memory"]["peak_bytes"] / GiB,
                        r["memory"]["capacity_bytes"] / GiB))
    return out


def oom_case() -> tuple[bool, bool]:
    """(fits at local batch 1, fits at local batch 2) of the torchtitan Llama 2 70B run."""
    run = next(r for r in load_runs(shipped_set_path("current")) if r.name == OOM_CASE)
    spec, cluster = run_transformer(run), run_cluster(run)
    plan = run_plan(run, spec, cluster)
    two = plan.model_copy(update={"micro_batch_size": 2,
                                  "global_batch_size": 2 * plan.global_batch_size})
    return predict(spec, cluster, plan)["fits"], predict(spec, cluster, two)["fits"]
