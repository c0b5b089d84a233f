"""Accuracy on the published runs, and what each modelling choice contributes: every row turns
one choice of the default A100 profiles back to its earlier value and re-runs the validation.
Also a leave-one-source-out check of the one fitted number (gemm_sustained_fraction).

Run: python benchmarks/validation_ablation.py        (takes about 10 s)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from planner.hardware import Cluster
from planner.validation import compare, load_runs, summary


def adjust(stack: dict | None = None, fraction: float | None = None) -> Callable:
    def f(c: Cluster) -> Cluster:
        d = c.model_dump()
        d["stack"].update(stack or {})
        if fraction is not None:
            d["gpu"]["gemm_sustained_fraction"] = fraction
        return Cluster.model_validate(d)
    return f


VARIANTS = [
    ("default profiles", adjust()),
    ("attention fused (FlashAttention)", adjust({"attention_kernel": "flash_attention_2"})),
    ("gradient all-reduce overlapped", adjust({"grad_overlap": True})),
    ("NICs pooled across a node", adjust({"pool_nics": True})),
    ("ZeRO-3 as FSDP2 (no re-gather)", adjust({"zero_impl": "fsdp2"})),
    ("GEMMs at the MAMF curve (fraction 1.0)", adjust(fraction=1.0)),
    ("all of the above (first model)", adjust({"attention_kernel": "flash_attention_2", "grad_overlap": True,
                                               "pool_nics": True, "zero_impl": "fsdp2"}, 1.0)),
]


def groups(comps) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for c in comps:
        g = ("Narayanan T1" if "-t1-" in c.run.name else "Narayanan T2 ZeRO-3"
             if "zero3" in c.run.name else "Korthikanti")
        out.setdefault(g, []).append(100 * c.error)
    return out


def main() -> None:
    runs = load_runs()
    print(f"{len(runs)} published runs; error = predicted / measured - 1\n")
    print(f"{'variant':42s} {'MAPE':>6s} {'max':>6s} {'mean':>6s}   per source (mean signed)")
    for name, fn in VARIANTS:
        comps = compare(runs, fn)
        s = summary(comps)
        per = "  ".join(f"{g} {np.mean(v):+.1f}" for g, v in groups(comps).items())
        print(f"{name:42s} {s['mape_pct']:5.1f}% {s['max_abs_error_pct']:5.1f}% "
              f"{s['mean_error_pct']:+5.1f}%   {per}")
    print("\nleave-one-source-out for gemm_sustained_fraction (fit = least MAPE on one source's "
          "runs without ZeRO-3, evaluated on the other's):")
    fractions = np.round(np.arange(0.70, 1.001, 0.01), 2)
    sources = {"Narayanan T1": [r for r in runs if "-t1-" in r.name],
               "Korthikanti": [r for r in runs if r.name.startswith("korthikanti")]}
    for fit_name, fit_runs in sources.items():
        scores = [summary(compare(fit_runs, adjust(fraction=f)))["mape_pct"] for f in fractions]
        best = float(fractions[int(np.argmin(scores))])
        for test_name, test_runs in sources.items():
            if test_name != fit_name:
                s = summary(compare(test_runs, adjust(fraction=best)))
                print(f"  fit on {fit_name}: fraction {best:.2f} (MAPE {min(scores):.1f}%) -> "
                      f"{test_name}: MAPE {s['mape_pct']:.1f}%, max {s['max_abs_error_pct']:.1f}%")


if __name__ == "__main__":
    main()
