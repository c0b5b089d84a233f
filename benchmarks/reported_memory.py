"""Predicted peak memory per GPU against the memory published runs report
(planner/validation/memory_reports.py says where each figure comes from), and the published
out-of-memory case.

Run: python benchmarks/reported_memory.py
"""

from __future__ import annotations

from planner.validation.memory_reports import OOM_CASE, oom_case, rows


def main() -> None:
    print(f"{'run':42s} {'reported':>9s} {'predicted':>9s} {'diff':>7s} {'capacity':>8s}")
    for name, rep, pred, cap in rows():
        print(f"{name:42s} {rep:9.1f} {pred:9.1f} {100 * (pred / rep - 1):+6.1f}% {cap:8.0f}")
    one, two = oom_case()
    print(f"{OOM_CASE}: fits at local batch 1: {one} (ran); at 2: {two} (published: OOM)")


if __name__ == "__main__":
    main()
