"""How far off a predicted step time may be: an error band from the validation residuals.

`planner/validation/error_bands.json` (written by `benchmarks/error_bands.py` from the
leave-one-source-out errors of `paraplan validate --cv`, planner/validation/bands.py) holds, per
stack family and GPU generation, the 10th and 90th percentile of the error e = predicted /
measured - 1 of runs predicted with a fitted number chosen without their source. Since measured =
predicted / (1 + e), the true step time of a run like those lies in [predicted / (1 + e90),
predicted / (1 + e10)] for 8 in 10 of them. The percentiles are clamped to e10 <= 0 <= e90, so
the range always holds the point estimate.

Families: `2021` (megatron-lm-2021, deepspeed: the 2021-22 stacks of the published A100 runs)
and `current` (every other stack, calibrated CPU stacks included). Generations from the GPU
profile's name: ampere (A100, A800), hopper (H100, H800, H200), blackwell (B100, B200, GB200),
cdna3 (MI300X, MI325X), else `other`. A group without enough runs falls back as the file says;
one with none at all gets the widest band, marked `unvalidated`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from planner.hardware import Cluster
from planner.schema import InputError

FAMILIES = ("2021", "current")
GENERATIONS = ("ampere", "hopper", "blackwell", "cdna3", "other")
_2021_STACKS = ("megatron-lm-2021", "deepspeed")
_GENERATION_OF = (("ampere", r"a100|a800|a30\b|a40\b"), ("hopper", r"h100|h800|h200|h20\b|gh200"),
                  ("blackwell", r"b100|b200|gb200|b300"), ("cdna3", r"mi300|mi325"))


def stack_family(stack_name: str) -> str:
    """`2021` for the 2021-22 stacks the published runs used, else `current`."""
    return "2021" if stack_name in _2021_STACKS else "current"


def gpu_generation(gpu_name: str) -> str:
    """The GPU generation of a GPU profile name (`a100_80g` -> ampere), `other` if unknown."""
    key = gpu_name.lower()
    for gen, pattern in _GENERATION_OF:
        if re.search(pattern, key):
            return gen
    return "other"


@dataclass(frozen=True)
class Band:
    """Where a cluster's error band comes from. Errors are predicted / measured - 1."""

    low_error_pct: float
    """The 10th-percentile error (clamped to <= 0)."""
    high_error_pct: float
    """The 90th-percentile error (clamped to >= 0)."""
    group: str
    """The group whose residuals gave it (`current/hopper`, `hopper`, `all`, `widest`)."""
    runs: int
    """How many runs' residuals it was taken over."""
    unvalidated: bool
    """No validation run of this family and generation: the widest band, not a measured one."""

    @property
    def factors(self) -> tuple[float, float]:
        """(low, high) multipliers on a predicted step time for the true one; low <= 1 <= high."""
        return 1 / (1 + self.high_error_pct / 100), 1 / (1 + self.low_error_pct / 100)

    def as_json(self) -> dict:
        return {"low_error_pct": self.low_error_pct, "high_error_pct": self.high_error_pct,
                "group": self.group, "runs": self.runs, "unvalidated": self.unvalidated}


def bands_path() -> Path:
    """The packaged band file."""
    return Path(str(resources.files("planner"))) / "validation" / "error_bands.json"


@lru_cache(maxsize=4)
def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        groups = data["groups"]
        widest = data["widest"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"error bands {path}: unreadable or missing 'groups'/'widest' ({err}); "
                         "rerun benchmarks/error_bands.py") from err
    return {"groups": groups, "widest": widest}


def _band(entry: dict, unvalidated: bool = False) -> Band:
    lo, hi = min(float(entry["low_error_pct"]), 0.0), max(float(entry["high_error_pct"]), 0.0)
    if hi >= 100 or lo <= -100:
        raise InputError(f"error band {entry.get('group')}: errors must lie in (-100%, 100%)")
    return Band(lo, hi, str(entry["group"]), int(entry["runs"]),
                unvalidated or bool(entry.get("unvalidated", False)))


def band_for(stack_name: str, gpu_name: str, path: str | Path | None = None) -> Band:
    """The band of a stack family and GPU generation."""
    data = _load(str(path or bands_path()))
    key = f"{stack_family(stack_name)}/{gpu_generation(gpu_name)}"
    entry = data["groups"].get(key)
    if entry is None:
        return _band(data["widest"], unvalidated=True)
    return _band(entry)


def cluster_band(cluster: Cluster, path: str | Path | None = None) -> Band:
    """The band of a bound cluster (its stack's family, its GPU's generation)."""
    stack = cluster.stack.name if cluster.stack is not None else ""
    return band_for(stack, cluster.gpu.name, path)


def step_time_band(cluster: Cluster) -> tuple[float, float]:
    """(low, high) factors: the true step time lies in [low x predicted, high x predicted] for
    8 in 10 runs like the validated ones; low <= 1 <= high."""
    return cluster_band(cluster).factors
