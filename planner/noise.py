"""The measurement protocol's statistics (issue 15), torch-free: the order plans run in over
rounds, a plan's median and spread over its rounds, whether a prediction lies within that
spread, and the summary figures judged against the noise (the pick, the machine's own noise).

A round's value for a plan is the median of its timed steps (executor.validate_local.measured);
over rounds, the plan's measured step time is the median of those values and its spread is the
min, max and interquartile range (q25, q75; linear interpolation between order statistics, as
numpy's default) of them."""

from __future__ import annotations

import math
import statistics
from typing import Any

DEFAULT_TOLERANCE = 0.05
"""How far outside the measured [min, max] a prediction may lie and still count as within the
spread: the interval is widened to [min * (1 - tol), max * (1 + tol)]."""

PICK_TOLERANCE = 0.05
"""The pick's target: the search's first plan within 5% of the best measured median."""


def round_order(n: int, rounds: int, r: int) -> list[int]:
    """The plan indices (0..n-1, search order) in the order round `r` (0-based) runs them: the
    search order rotated by floor(r * n / rounds), so each plan runs at a different place in
    every round (no plan is always first in its launch, and a drift of the machine over a round
    hits early and late plans alike over the rounds)."""
    if n < 0 or rounds < 1 or not 0 <= r < rounds:
        raise ValueError(f"round_order needs n >= 0, rounds >= 1 and 0 <= r < rounds; got "
                         f"n={n}, rounds={rounds}, r={r}")
    shift = (r * n) // rounds if n else 0
    return [(shift + k) % n for k in range(n)]


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `values`, linear between order statistics."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def spread(values: list[float]) -> dict[str, float]:
    """{min, max, q25, q75} of one plan's per-round values (seconds)."""
    if not values:
        raise ValueError("spread of no rounds")
    return {"min": min(values), "max": max(values), "q25": quantile(values, 0.25),
            "q75": quantile(values, 0.75)}


def relative_spread(values: list[float]) -> float:
    """(max - min) / median of one plan's per-round values: 0 for a single round."""
    med = statistics.median(values)
    if med <= 0:
        raise ValueError(f"relative spread needs a positive median, got {med}")
    return (max(values) - min(values)) / med


def within_spread(predicted: float, band: dict[str, float],
                  tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether `predicted` lies in [min * (1 - tolerance), max * (1 + tolerance)]."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"spread tolerance must be in [0, 1), got {tolerance}")
    return band["min"] * (1 - tolerance) <= predicted <= band["max"] * (1 + tolerance)


def judge(predicted: float, rounds_s: list[float],
          tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The per-row keys of the protocol: the rounds, their spread and whether the prediction
    lies within it."""
    band = spread(rounds_s)
    return {"measured_rounds_s": list(rounds_s), "measured_spread_s": band,
            "within_spread": within_spread(predicted, band, tolerance)}


def machine_noise(rows: list[dict]) -> tuple[float | None, int]:
    """The median over plans measured in >= 2 rounds of (max - min) / median, and how many such
    plans there were; (None, 0) when none was (older files, or one round)."""
    spreads = [relative_spread(r["measured_rounds_s"]) for r in rows
               if len(r.get("measured_rounds_s") or []) >= 2]
    return (statistics.median(spreads) if spreads else None), len(spreads)


def within_spread_share(rows: list[dict], tolerance: float = DEFAULT_TOLERANCE) -> float | None:
    """Share of the rows with a measured spread whose prediction lies within it; None when no
    row has one (files written before the protocol)."""
    judged = [within_spread(r["predicted"]["step_time_s"], r["measured_spread_s"], tolerance)
              for r in rows if "measured_spread_s" in r]
    return sum(judged) / len(judged) if judged else None


def pick(rows: list[dict]) -> dict[str, Any]:
    """The search's first plan (the lowest `search_rank` among the rows that ran; in files
    without it, the lowest prediction) against the plan with the best measured median: how
    much slower it measured (%), whether that is within PICK_TOLERANCE, and whether its median
    lies inside the best plan's measured [min, max] (None without spreads)."""
    if not rows:
        raise ValueError("pick needs at least one row")
    if all("search_rank" in r for r in rows):
        first = min(rows, key=lambda r: r["search_rank"])
    else:
        first = min(rows, key=lambda r: r["predicted"]["step_time_s"])
    best = min(rows, key=lambda r: r["measured"]["step_time_s"])
    f, b = first["measured"]["step_time_s"], best["measured"]["step_time_s"]
    band = best.get("measured_spread_s")
    return {"first_plan": first["plan"], "first_search_rank": first.get("search_rank"),
            "first_measured_s": f, "best_plan": best["plan"], "best_measured_s": b,
            "first_vs_best_pct": 100 * (f / b - 1),
            "first_within_5_pct": f <= b * (1 + PICK_TOLERANCE),
            "first_within_best_spread": (band["min"] <= f <= band["max"]) if band else None}
