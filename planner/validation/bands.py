"""Error bands from leave-one-source-out residuals: the content of
`planner/validation/error_bands.json` (written by benchmarks/error_bands.py, read by
planner/uncertainty.py). Every entry says how it was derived in its `how`."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from planner.uncertainty import FAMILIES, GENERATIONS
from planner.validation.cv import CVResult, Residual

PERCENTILES = (10.0, 90.0)
MIN_RUNS = 5
"""A group with fewer runs than this takes a wider group's band."""


def _percentiles(errs: Sequence[float]) -> tuple[float, float]:
    lo, hi = np.percentile(100 * np.asarray(errs), PERCENTILES)
    return float(lo), float(hi)


def _entry(errs: list[float], group: str, how: str, unvalidated: bool = False) -> dict:
    p_lo, p_hi = _percentiles(errs)
    return {"low_error_pct": min(p_lo, 0.0), "high_error_pct": max(p_hi, 0.0),
            "p10_error_pct": p_lo, "p90_error_pct": p_hi, "group": group, "runs": len(errs),
            "unvalidated": unvalidated, "how": how}


def _pct(group: str, n: int) -> str:
    return (f"{PERCENTILES[0]:g}th and {PERCENTILES[1]:g}th percentile (numpy linear "
            f"interpolation) of the {n} leave-one-source-out errors (predicted / measured - 1) of "
            f"the runs in {group}, clamped to <= 0 and >= 0 so the range holds the prediction")


def error_bands(residuals: list[Residual]) -> dict:
    """Per `family/generation` band; a group with fewer than MIN_RUNS runs takes its
    generation's band (any family), then its family's, then all runs'; a generation with no run
    at all takes the widest band, marked unvalidated."""
    if not residuals:
        raise ValueError("no residuals to derive error bands from")
    errs = {"all": [r.error for r in residuals]}
    for r in residuals:
        fam, gen = r.band_group.split("/")
        for key in (r.band_group, f"generation {gen}", f"family {fam}"):
            errs.setdefault(key, []).append(r.error)
    valid = {k: _entry(v, k, _pct(k, len(v))) for k, v in errs.items() if len(v) >= MIN_RUNS}
    lows = [e["low_error_pct"] for e in valid.values()]
    highs = [e["high_error_pct"] for e in valid.values()]
    widest = {"low_error_pct": min(lows), "high_error_pct": max(highs), "group": "widest",
              "runs": len(residuals), "unvalidated": True,
              "how": "the lowest low and highest high of every band taken over at least "
                     f"{MIN_RUNS} runs ({', '.join(sorted(valid))}): for a GPU generation or "
                     "stack no validation run covers"}
    groups = {}
    for fam in FAMILIES:
        for gen in GENERATIONS:
            key = f"{fam}/{gen}"
            n = len(errs.get(key, []))
            if key in valid:
                groups[key] = valid[key]
                continue
            if not errs.get(f"generation {gen}"):
                groups[key] = {**widest, "how": f"no validation run on {gen} "
                               f"GPUs: the widest band, unvalidated ({widest['how']})"}
                continue
            for wider in (f"generation {gen}", f"family {fam}", "all"):
                if wider in valid:
                    groups[key] = {**valid[wider], "how": f"only {n} run(s) in {key} (fewer "
                                   f"than {MIN_RUNS}): the band of {wider}: " + valid[wider]["how"]}
                    break
            else:  # fewer than MIN_RUNS runs in all: nothing to fall back on
                groups[key] = {**widest, "how": f"too few runs: {widest['how']}"}
    return {"groups": groups, "widest": widest}


def bands_document(cv: CVResult, runs_files: list[str]) -> dict:
    """The whole error_bands.json: the bands plus how and from what they were derived."""
    return {
        "how": ("Error bands of predicted step times. From `paraplan validate --cv` "
                "(planner/validation/cv.py): every run of " + ", ".join(runs_files) + " was "
                "predicted with gpu.gemm_sustained_fraction refitted (least mean absolute error, "
                "one value for every GPU) on the runs of every other source. Groups: stack "
                "family (2021 = megatron-lm-2021, deepspeed; current = the others) x GPU "
                "generation (planner/uncertainty.py). A prediction's true step time lies in "
                "[predicted / (1 + high_error_pct/100), predicted / (1 + low_error_pct/100)]. "
                "Written by benchmarks/error_bands.py; rerun it after any change to the cost "
                "model or the profiles."),
        "percentiles": list(PERCENTILES),
        "min_runs_per_group": MIN_RUNS,
        "cv": {"overall": cv.overall(), "all_sources_fraction": cv.all_sources_fraction,
               "folds": {f.source: {"fraction": f.fraction, "runs": len(f.residuals)}
                         for f in cv.folds}},
        **error_bands(cv.residuals),
    }
