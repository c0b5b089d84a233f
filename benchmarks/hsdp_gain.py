"""Where hybrid sharding pays, by the model: predicted step time and exposed data-parallel time of
ZeRO-3 with full sharding (every dp rank) and with hybrid sharding inside a node (Plan.dp_shard
= GPUs per node), by model, cluster, stack and micro-batches per step (ZeRO-3 gathers every
block again for each micro-batch's backward; hybrid sharding keeps those gathers on NVLink and
sends only the gradient shards' all-reduce across nodes).

Run: python benchmarks/hsdp_gain.py [--nodes 4,16,64] [--stacks torchtitan,fsdp]
(`fits`: the peak memory per GPU of each plan against the GPU's, full / hybrid.)
"""

from __future__ import annotations

import argparse

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.transformer import load_transformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="llama3-8b,llama3-70b")
    ap.add_argument("--clusters", default="dgx_a100_80g,dgx_h100")
    ap.add_argument("--nodes", default="4,16,64")
    ap.add_argument("--stacks", default="torchtitan")
    ap.add_argument("--micro-batches", default="1,4,16")
    args = ap.parse_args()
    print(f"{'model':11s} {'cluster':13s} {'stack':10s} {'nodes':>5s} {'m':>3s} "
          f"{'full s':>8s} {'hybrid s':>8s} {'gain':>7s} {'dp full':>8s} {'dp hybrid':>9s} "
          f"{'fits':>5s}")
    for model in args.models.split(","):
        spec = load_transformer(model)
        for name in args.clusters.split(","):
            for stack in args.stacks.split(","):
                for nodes in map(int, args.nodes.split(",")):
                    c = load_cluster(name, nodes, stack)
                    dp = c.num_gpus
                    for m in map(int, args.micro_batches.split(",")):
                        base = dict(dp=dp, tp=1, pp=1, micro_batch_size=1,
                                    global_batch_size=dp * m, zero_stage=3, recompute="full")
                        full = predict(spec, c, Plan(**base))
                        hyb = predict(spec, c, Plan(**base, dp_shard=c.gpus_per_node))
                        f, h = full["step_time_s"], hyb["step_time_s"]
                        print(f"{model:11s} {name:13s} {stack:10s} {nodes:5d} {m:3d} {f:8.2f} "
                              f"{h:8.2f} {100 * (f / h - 1):+6.1f}% "
                              f"{full['breakdown']['dp_comm_s']:8.3f} "
                              f"{hyb['breakdown']['dp_comm_s']:9.3f} "
                              f"{'yn'[not full['fits']]}/{'yn'[not hyb['fits']]}")


if __name__ == "__main__":
    main()
