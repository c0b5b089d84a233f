"""Estimate speed: `paraplan estimate -t llama3-70b --tokens 15T` (every default GPU type, the
smallest-fit sweep and 256 to 2,048 GPUs) without the report. Prints the wall time (best of
--repeat) and the candidates searched. Run: python benchmarks/estimate_speed.py [--repeat 3]"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from planner.estimate import DEFAULT_GPUS, estimate
from planner.money import clusters_for, parse_count
from planner.search.space import DEFAULT_BATCH_TOKENS, batch_sequences
from planner.transformer import load_transformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transformer", "-t", default="llama3-70b")
    ap.add_argument("--tokens", default="15T")
    ap.add_argument("--gpus", default=",".join(DEFAULT_GPUS))
    args = ap.parse_args()
    spec = load_transformer(args.transformer)
    tokens = parse_count(args.tokens, "--tokens")
    gbs = batch_sequences(DEFAULT_BATCH_TOKENS, spec.seq_len)
    names = clusters_for(args.gpus.split(","))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{spec.name}, {args.tokens} tokens, global batch {gbs}, GPUs {','.join(names)}")
    walls = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        est = estimate(spec, names, tokens, gbs)
        walls.append(time.perf_counter() - t0)
        opts = {id(o): o for o in [*est.options, *est.smallest.values()]}
        searched = sum(o.candidates for o in opts.values())
        print(f"run {i + 1}: {len(est.options)} options; {searched:,} candidates in the "
              f"searches of the options and smallest fits (the sweep's misses not counted); "
              f"wall {walls[-1]:.2f} s")
    print(f"median of {args.repeat}: {statistics.median(walls):.2f} s")
    print(f"best of {args.repeat}: {min(walls):.2f} s")


if __name__ == "__main__":
    main()
