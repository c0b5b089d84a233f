"""How well can a handful of probe-like plans calibrate validate-local? For each stored run
(docs/local_validation_runs/runN.json with its .profile.json), refit the profile
(planner.refit.fit, the fields `paraplan calibrate --from-runs` fits) on a few of the run's own
measured plans that look like calibration probes (one per framework overhead at micro-batch 1,
and optionally the same at micro-batch 4), and predict the other plans with it. Prints the share
within 15% of the measured median and the mean error, before (the run's own probe-calibrated
profile) and after. Run: python benchmarks/probe_subsets.py run8 run9 run10"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from planner.hardware import Cluster
from planner.refit import errors, fit, predict_runs, runs_from

RUNS = Path(__file__).resolve().parents[1] / "docs" / "local_validation_runs"

# One plan per overhead the calibration probes fit (executor/calibration_run.py overhead_probes),
# as the nearest plan of the tiny model that validate-local measured.
PROBES = [dict(dp=2, tp=1, pp=1, cp=1, micro_batch_size=1, zero_stage=0, recompute="none"),
          dict(dp=2, micro_batch_size=1, zero_stage=0, recompute="full"),
          dict(dp=2, micro_batch_size=1, zero_stage=3, recompute="none"),
          dict(dp=2, micro_batch_size=1, zero_stage=2, recompute="none"),
          dict(tp=2, micro_batch_size=1, sequence_parallel=False, recompute="none"),
          dict(tp=2, micro_batch_size=1, sequence_parallel=True, recompute="none"),
          dict(pp=2, micro_batch_size=1, schedule="1f1b", recompute="none"),
          dict(cp=2, micro_batch_size=1, zero_stage=0, recompute="none")]
LARGE = [dict(dp=2, tp=1, pp=1, cp=1, micro_batch_size=4, zero_stage=0, recompute="none"),
         dict(pp=2, micro_batch_size=4, schedule="1f1b", recompute="none"),
         dict(tp=2, micro_batch_size=4, sequence_parallel=False, recompute="none"),
         dict(cp=2, micro_batch_size=4, zero_stage=0, recompute="none")]


def pick(runs: list, conds: list[dict]) -> list[int]:
    """The index of the first run matching each condition (fields of its plan)."""
    out = []
    for c in conds:
        i = next((i for i, r in enumerate(runs) if i not in out
                  and all(getattr(r.plan, k) == v for k, v in c.items())), None)
        if i is not None:
            out.append(i)
    return out


def main() -> None:
    for name in sys.argv[1:] or ["run8", "run9", "run10"]:
        data = json.loads((RUNS / f"{name}.json").read_text())
        profile = json.loads((RUNS / f"{name}.profile.json").read_text())
        runs = runs_from(data, name)
        for label, conds in (("probe-like, micro-batch 1", PROBES),
                             ("+ micro-batch 4 probes", PROBES + LARGE)):
            train = pick(runs, conds)
            test = [r for i, r in enumerate(runs) if i not in train]
            fitted, _ = fit(profile, [runs[i] for i in train])
            before = errors(predict_runs(Cluster.model_validate(profile), test), test)
            after = errors(predict_runs(Cluster.model_validate(fitted), test), test)
            print(f"{name}: {label}: fit on {len(train)}, predict {len(test)}: within 15% "
                  f"{before['within_15']:.0%} -> {after['within_15']:.0%}, mean error "
                  f"{before['mean_abs_pct']:.1f}% -> {after['mean_abs_pct']:.1f}%")


if __name__ == "__main__":
    main()
