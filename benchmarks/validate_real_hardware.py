"""Every run named in planner/validation/hardware_map.json predicted on its closest preset (the
run's `cluster`) and on the sourced preset of its real hardware; prints both errors, and each
set's summary with the mapped runs on their real hardware.

Run: python benchmarks/validate_real_hardware.py [RUNS.json ...]   (default: shipped + runs_current)
"""

from __future__ import annotations

import sys
from collections import defaultdict

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.validation import compare, load_runs, run_stack, summary
from planner.validation.hardware_map import hardware_map, real_cluster


def _fmt(s: dict) -> str:
    return f"{s['mape_pct']:.1f}% mean / {s['max_abs_error_pct']:.1f}% max / {s['mean_error_pct']:+.1f}% signed"


def main(paths: list[str]) -> None:
    for path in paths or [None, "../shared/validation/runs_current.json"]:
        runs = load_runs(path)
        closest = compare(runs)
        errs_real, by_source = [], defaultdict(list)
        print(f"\n== {path or 'shipped'}")
        print(f"{'run':46s} {'closest':>14s} {'err':>7s}  {'real':>22s} {'err':>7s}")
        for c in closest:
            ref = real_cluster(c.run.name)
            e = c.error
            if ref is not None:
                cl = load_cluster(ref, c.run.num_nodes, run_stack(c.run))
                p = predict(c.run.transformer, cl, c.plan)
                e = p["step_time_s"] / c.run.measured_step_time_s - 1
                print(f"{c.run.name[:46]:46s} {c.run.cluster:>14s} {100 * c.error:+6.1f}%  "
                      f"{ref:>22s} {100 * e:+6.1f}%")
            errs_real.append(e)
            by_source[c.run.name.split("-")[0]].append(e)
        n = len(errs_real)
        real = {"mape_pct": 100 * sum(map(abs, errs_real)) / n,
                "max_abs_error_pct": 100 * max(map(abs, errs_real)),
                "mean_error_pct": 100 * sum(errs_real) / n}
        print(f"closest presets:            {_fmt(summary(closest))}")
        print(f"mapped runs on real presets: {_fmt(real)}")
        for src, es in sorted(by_source.items()):
            print(f"  {src:12s} n={len(es):2d} {100 * sum(map(abs, es)) / len(es):5.1f}% mean "
                  f"{100 * max(map(abs, es)):5.1f}% max {100 * sum(es) / len(es):+5.1f}% signed")
    unknown = set(hardware_map()) - {r.name for p in paths or [None, "../shared/validation/runs_current.json"] for r in load_runs(p)}
    if unknown:
        print("mapped runs not in these sets:", ", ".join(sorted(unknown)))


if __name__ == "__main__":
    main(sys.argv[1:])
