"""Search speed: the whole plan space of GPT-3 175B on 1,024 A100 GPUs (128 DGX A100 nodes),
global batch 1536. Prints candidates, wall time and candidates per second (target: <= 10 s on a
2-core machine). Run: python benchmarks/search_speed.py [--repeat 3]

Other cases the issues name:
    --transformer llama3-405b --cluster dgx_h100 --num-nodes 2048 --global-batch-size 1024
    --transformer deepseek-v3 --cluster dgx_h100 --num-nodes 256 --global-batch-size 1024
(the mixture-of-experts space adds ep and etp: issue 13's target is 10 s for DeepSeek-V3)"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from planner.commands.search import search_workers
from planner.hardware import load_cluster
from planner.search.search import search
from planner.transformer import load_transformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transformer", default="gpt3-175b")
    ap.add_argument("--cluster", default="dgx_a100_80g")
    ap.add_argument("--num-nodes", type=int, default=128)
    ap.add_argument("--global-batch-size", type=int, default=1536)
    ap.add_argument("--workers", type=int, default=search_workers(),
                    help="processes sharing the blocks (default: the cores, at most 4; "
                         "paraplan search uses the same)")
    args = ap.parse_args()
    spec = load_transformer(args.transformer)
    cluster = load_cluster(args.cluster, args.num_nodes)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{spec.name} on {cluster.name} x {cluster.num_nodes} ({cluster.num_gpus} GPUs), "
          f"global batch {args.global_batch_size}, {args.workers} worker process(es)")
    walls = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        res = search(spec, cluster, args.global_batch_size, workers=args.workers)
        wall = time.perf_counter() - t0
        walls.append(wall)
        print(f"run {i + 1}: {res.candidates:,} candidates, {res.valid:,} valid, "
              f"{res.fitting:,} fit; wall {wall:.2f} s; {res.candidates / wall / 1e6:.2f}M "
              "candidates/s")
    best = min(walls)
    print(f"median of {args.repeat}: {statistics.median(walls):.2f} s")
    print(f"best of {args.repeat}: {best:.2f} s, {res.candidates / best / 1e6:.2f}M candidates/s; "
          f"best plan: {res.plan(0).model_dump_json()} at {res.step_time_s[0]:.2f} s/step")


if __name__ == "__main__":
    main()
