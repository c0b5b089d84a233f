"""Markdown summary of a `paraplan validate-local` result: targets, errors by kind of plan, and
every plan's row (what docs/local_validation.md shows).

    python benchmarks/local_validation_table.py validate-local/predicted_vs_measured.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

from planner.report.compare_html import label


def kind(plan: dict) -> str:
    """The plan's parallel dimensions > 1 and its ZeRO stage, e.g. 'tp2' or 'dp2 zero3'."""
    dims = [f"{k}{plan[k]}" for k in ("dp", "tp", "pp", "cp") if plan[k] > 1]
    return " ".join(dims) + (f" zero{plan['zero_stage']}" if plan["zero_stage"] else "")


def main(path: str) -> None:
    data = json.load(open(path))
    s, rows = data["summary"], data["rows"]
    print(f"{s['plans']} plans of `{data['transformer']['name']}`, {data['world_size']} ranks x "
          f"{data['threads_per_rank']} thread(s), global batch {data['global_batch_size']}\n")
    print("| target | result |\n| --- | --- |")
    print(f"| every plan within 15% | {100 * s['within_15_pct']:.0f}% of plans; mean error "
          f"{s['step_mape_pct']:.1f}%, max {s['step_max_error_pct']:.1f}% |")
    print(f"| rank correlation >= 0.9 | {s['rank_correlation']:.3f} |")
    print(f"| predicted-best within 5% of measured-best | "
          f"{s['predicted_best_vs_measured_best_pct']:+.1f}% ({label(s['predicted_best'])}) |")
    for comp, m in s["memory"].items():
        print(f"| {comp} within 5% | mean {m['mean_error_pct']:.1f}%, max "
              f"{m['max_error_pct']:.1f}%, {100 * m['within_5_pct']:.0f}% of plans |")
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[kind(r["plan"])].append(r["step_error"])
        groups["recompute " + r["plan"]["recompute"]].append(r["step_error"])
    print("\n| plans | n | mean signed error | mean absolute error |\n| --- | --- | --- | --- |")
    for k, v in sorted(groups.items()):
        print(f"| {k} | {len(v)} | {100 * statistics.fmean(v):+.1f}% | "
              f"{100 * statistics.fmean(map(abs, v)):.1f}% |")
    print("\n| plan | predicted ms | measured ms | error | worst memory error |")
    print("| --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: r["measured"]["step_time_s"]):
        mem = max(r["memory_errors"].values())
        print(f"| {label(r['plan'])} | {1e3 * r['predicted']['step_time_s']:.1f} | "
              f"{1e3 * r['measured']['step_time_s']:.1f} | {100 * r['step_error']:+.1f}% | "
              f"{100 * mem:.1f}% |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
