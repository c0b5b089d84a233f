"""Residual decomposition: for every run of a validation set, the predicted breakdown
(planner.cost.evaluate.BREAKDOWN_KEYS, seconds per step), implied and measured MFU, and
the signed error, grouped by framework and GPU. Used to find mechanisms (docs/accuracy.md).

Run: python benchmarks/residuals.py [RUNS.json ...]   (default: shipped + runs_current)
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from planner.cost.evaluate import BREAKDOWN_KEYS as KEYS
from planner.validation import compare, load_runs


def main(paths: list[str]) -> None:
    for path in paths or [None, "../shared/validation/runs_current.json"]:
        comps = compare(load_runs(path))
        print(f"\n== {path or 'shipped'}")
        print(f"{'run':44s} {'err':>6s} {'mfu_p':>5s} {'mfu_m':>5s}  "
              + " ".join(f"{k[:4]:>6s}" for k in KEYS))
        groups = defaultdict(list)
        for c in comps:
            p = c.prediction
            mfu = p["mfu"]
            mfu_m = mfu * p["step_time_s"] / c.run.measured_step_time_s
            frac = [p["breakdown"][k] / p["step_time_s"] for k in KEYS] if "breakdown" in p \
                else [p.get(k, 0) / p["step_time_s"] for k in KEYS]
            print(f"{c.run.name[:44]:44s} {100 * c.error:+5.1f}% {100 * mfu:4.1f} "
                  f"{100 * mfu_m:4.1f}  " + " ".join(f"{f:6.2f}" for f in frac))
            groups[(c.run.framework, c.run.cluster, c.run.plan.precision)].append(c.error)
        for g, e in sorted(groups.items()):
            print(f"  {str(g):55s} n={len(e):2d} mean {100 * np.mean(e):+5.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
