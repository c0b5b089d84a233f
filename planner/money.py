"""Time-to-train and money: for a model and a token budget, the best plan per GPU type and
cluster size (from the search), and what it takes in days, GPU-hours and dollars.

Pure arithmetic on top of the search: days = tokens / (tokens per second) / 86,400;
GPU-hours = days x 24 x GPUs; cost = GPU-hours x rent per GPU-hour. Failures, restarts and
evaluation are not included (published GPU-hour totals include them)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from planner.cost.evaluate import predict
from planner.hardware import Cluster, load_cluster, preset_names
from planner.plan import Plan
from planner.schema import InputError
from planner.search.search import search
from planner.search.space import batch_sequences  # noqa: F401  (the one batch rule; re-exported)
from planner.transformer import TransformerSpec

SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_count(text: str, what: str, params: float | None = None) -> float:
    """'15T', '300B', '4M', '1.5e12', or (with `params`) '20x' = 20 tokens per parameter."""
    t = str(text).strip().upper().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([+-]?[0-9]*\.?[0-9]+(?:E[+-]?[0-9]+)?)\s*([KMBGTP]?)", t)
    if m:
        value = float(m.group(1)) * SUFFIX[m.group(2)]
    elif params is not None and re.fullmatch(r"[+-]?[0-9]*\.?[0-9]+X", t):
        value = float(t[:-1]) * params
    else:
        extra = ", or '20x' (tokens per parameter, Chinchilla-style)" if params else ""
        raise InputError(f"{what}: cannot read {text!r}; use a number with an optional K/M/B/T "
                         f"suffix, e.g. 15T or 300B{extra}")
    if not value > 0 or not math.isfinite(value):
        raise InputError(f"{what} must be > 0, got {text!r}; e.g. 15T, 300B"
                         + (" or 20x" if params else ""))
    return value


def clusters_for(gpus: list[str]) -> list[str]:
    """Cluster presets for GPU names: a preset name, its GPU's name, or a prefix of it
    ('h100' -> dgx_h100)."""
    presets = {name: load_cluster(name) for name in preset_names("clusters")}
    out = []
    for g in gpus:
        key = g.strip().lower().replace("-", "_")
        hits = [n for n, c in presets.items()
                if key in (n, c.gpu.name) or c.gpu.name.startswith(key + "_")]
        if len(hits) != 1:
            accepted = ", ".join(sorted({c.gpu.name for c in presets.values()}))
            why = "ambiguous" if hits else "unknown"
            raise InputError(f"{why} GPU '{g}'" + (f" (matches {', '.join(hits)})" if hits else "")
                             + f"; accepted: {accepted} (or a cluster preset name)")
        out.append(hits[0])
    return out


@dataclass
class Option:
    """The best plan for one GPU type at one cluster size, and what the run takes."""

    cluster: Cluster
    plan: Plan | None
    prediction: dict[str, Any] | None
    tokens: float
    rent_per_gpu_hour_usd: float | None
    candidates: int = 0
    why_not: str = ""

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def fits(self) -> bool:
        return self.plan is not None

    @property
    def days(self) -> float:
        return self.tokens / self.prediction["tokens_per_s"] / 86400 if self.fits else math.inf

    @property
    def gpu_hours(self) -> float:
        return self.days * 24 * self.num_gpus

    @property
    def cost_usd(self) -> float | None:
        if not self.fits or self.rent_per_gpu_hour_usd is None:
            return None
        return self.gpu_hours * self.rent_per_gpu_hour_usd


def best_option(spec: TransformerSpec, cluster: Cluster, global_batch: int, tokens: float,
                rent: float | None, precision: str = "bf16") -> Option:
    """Search `cluster` and price its best plan."""
    res = search(spec, cluster, global_batch, precision)
    if not res.fitting:
        why = ("no valid plan" if res.valid == 0 else
               f"needs {res.peak_bytes.min() / 2**30:.0f} GiB per GPU at best")
        return Option(cluster, None, None, tokens, rent, res.candidates, why)
    plan = res.plan(0)
    return Option(cluster, plan, predict(spec, cluster, plan), tokens, rent, res.candidates)


@dataclass
class Estimate:
    """All options, plus the smallest cluster (in powers of two nodes) that fits per GPU type."""

    options: list[Option]
    smallest: dict[str, Option] = field(default_factory=dict)

    def cheapest(self, deadline_days: float | None = None) -> Option | None:
        ok = [o for o in self.options if o.fits and o.cost_usd is not None
              and (deadline_days is None or o.days <= deadline_days)]
        return min(ok, key=lambda o: (o.cost_usd, o.days)) if ok else None

    def fastest(self) -> Option | None:
        ok = [o for o in self.options if o.fits]
        return min(ok, key=lambda o: o.days) if ok else None

    def pareto(self) -> list[Option]:
        """Options no other option beats on both cost and days (priced options only)."""
        ok = sorted((o for o in self.options if o.fits and o.cost_usd is not None),
                    key=lambda o: (o.days, o.cost_usd))
        front, best = [], math.inf
        for o in ok:
            if o.cost_usd < best:
                front.append(o)
                best = o.cost_usd
        return front
