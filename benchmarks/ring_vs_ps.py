"""Ring all-reduce vs parameter server, predicted and measured on the same runs: for each local
world (tiny model, gloo, 2 and 4 processes) this machine is calibrated first (`paraplan
calibrate`'s code, profile written under --out-dir), then every plan is predicted on that
profile and run by the executor (executor.local.run_plans). Then the planner's numbers for a real
cluster (Llama-3 8B data-parallel on 16 DGX H100 nodes: ring, tree, hierarchical and PS with
8/16/64/128 servers; the full-gradient synchronisation time and the predicted step time).

    .venv/bin/python benchmarks/ring_vs_ps.py [--worlds 2 4] [--steps 8] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np

from executor.calibration_run import calibrate
from executor.local import run_plans
from executor.train import TrainConfig
from planner.cost.evaluate import predict
from planner.cost.grad_sync import grad_all_reduce
from planner.cost.layout import link_arrays
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.topology import Topology
from planner.transformer import load_transformer


def local(world: int, steps: int, out_dir: Path) -> list[float]:
    """Calibrate `world` ranks, predict and run ring and PS plans; print both, return the
    signed relative errors."""
    threads = max(1, (os.cpu_count() or 1) // world)
    prof = out_dir / f"cpu_{world}x{threads}.json"
    print(f"calibrating {world} ranks x {threads} thread(s) -> {prof}")
    cluster, _ = calibrate(world, threads, False, prof.stem, prof, echo=lambda m: None)
    spec = load_transformer("tiny")
    base = dict(dp=world, tp=1, pp=1, micro_batch_size=1, global_batch_size=2 * world,
                precision="fp32")
    plans = {"ring": Plan(**base)} | {
        f"ps{s}": Plan(grad_sync="parameter_server", ps_servers=s, **base)
        for s in sorted({1, world})}
    res = run_plans(world, [(k, spec, p) for k, p in plans.items()],
                    TrainConfig(steps=steps, warmup=2), threads=threads)
    errs = []
    for key, plan in plans.items():
        pred = predict(spec, cluster, plan)["step_time_s"]
        t = res[key]["step_times_s"][2:] or res[key]["step_times_s"]
        meas = statistics.median(t)
        errs.append(pred / meas - 1.0)
        print(f"  {world} procs {key:>5}: predicted {pred * 1e3:8.2f} ms  measured "
              f"{meas * 1e3:8.2f} ms  error {errs[-1]:+6.1%}")
    return errs


def cluster_table() -> None:
    spec, c = load_transformer("llama3-8b"), load_cluster("dgx_h100", num_nodes=16)
    base = dict(dp=128, tp=1, pp=1, micro_batch_size=1, global_batch_size=512,
                precision="bf16", recompute="full")
    topo = Topology(c)
    grad = 2.0 * 8.03e9  # bf16 gradient of the whole model
    print(f"{spec.name} on {c.num_nodes} x {c.name}, dp=128: full-gradient sync, step time")
    for gs, S in [("ring", 0), ("tree", 0), ("hierarchical", 0), ("parameter_server", 8),
                  ("parameter_server", 16), ("parameter_server", 64),
                  ("parameter_server", 128)]:
        plan = Plan(grad_sync=gs, ps_servers=S, **base)
        P = PlanArrays.from_plans([plan])
        links, _ = link_arrays(topo, P)
        sync = float(grad_all_reduce(c, P, links["dpcp"], np.array([grad]))[0])
        step = predict(spec, c, plan)["step_time_s"]
        print(f"  {gs:>16} S={S:<3}: sync {sync * 1e3:8.1f} ms   step {step:7.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out-dir", default="ring_vs_ps")
    a = ap.parse_args()
    cluster_table()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    errs = [e for w in a.worlds for e in local(w, a.steps, out)]
    print(f"local runs: mean |error| {statistics.mean(map(abs, errs)):.1%}, "
          f"max {max(map(abs, errs)):.1%} over {len(errs)} runs")


if __name__ == "__main__":
    main()
