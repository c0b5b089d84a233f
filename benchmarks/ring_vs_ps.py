"""Ring all-reduce vs parameter server: measured step times (tiny model, gloo, 2 and 4 local
processes, executor.local.run_plans) and the planner's numbers for a real cluster (Llama-3 8B
data-parallel on 16 DGX H100 nodes: ring, tree, hierarchical and PS with 8/16/64/128 servers;
the full-gradient synchronisation time and the predicted step time).

    .venv/bin/python benchmarks/ring_vs_ps.py [--worlds 2 4] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

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


def measured(world: int, steps: int) -> None:
    spec = load_transformer("tiny")
    base = dict(dp=world, tp=1, pp=1, micro_batch_size=1, global_batch_size=2 * world,
                precision="fp32")
    jobs = [("ring", spec, Plan(**base))] + [
        (f"ps{s}", spec, Plan(grad_sync="parameter_server", ps_servers=s, **base))
        for s in sorted({1, world})]
    res = run_plans(world, jobs, TrainConfig(steps=steps, warmup=2))
    for key, r in res.items():
        t = r["step_times_s"][2:] or r["step_times_s"]
        print(f"  measured {world} procs {key:>5}: {statistics.median(t) * 1e3:8.2f} ms/step")


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
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    cluster_table()
    for w in a.worlds:
        measured(w, a.steps)


if __name__ == "__main__":
    main()
