"""Reliability and checkpoint-storage data: how often a GPU generation interrupts a synchronous
training job, how long a restart takes, and how fast a node can write a checkpoint. Data lives in
`hardware_profiles/reliability/*.json` and `hardware_profiles/storage/*.json`, every number with
a source (the loaders refuse a file whose number has none).

Units are in the key: `_per_gpu_hour` (events per GPU-hour), `_s` (seconds), `_GBps` (1e9 bytes/s,
bytes not bits: a 400 Gb/s NIC is 50 GB/s), `_gpu_hours`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from planner.schema import FrozenModel, InputError, read_json, validate_as

Kind = Literal["reliability", "storage"]


def _require_sources(model: FrozenModel, numeric: tuple[str, ...]) -> None:
    """Every numeric field that is set needs a non-empty `sources` entry (hardware_profiles rule)."""
    sources: dict[str, str] = getattr(model, "sources")
    missing = [k for k in numeric
               if getattr(model, k) is not None and not sources.get(k, "").strip()]
    if missing:
        raise ValueError(f"sources has no entry for {', '.join(missing)} (every number needs one)")


def _check_band(model: FrozenModel, mid: str) -> None:
    low, high, value = (getattr(model, f"{mid}_low"), getattr(model, f"{mid}_high"),
                        getattr(model, mid))
    if not low <= value <= high:
        raise ValueError(f"{mid}_low <= {mid} <= {mid}_high must hold, got "
                         f"{low!r} <= {value!r} <= {high!r}")


class Reliability(FrozenModel):
    """Interruption rate and restart time of synchronous training on one GPU generation."""

    name: str = Field(min_length=1)
    """Profile name, e.g. `h100`."""
    description: str = ""
    """What the numbers describe and where they come from, in one line."""
    gpu_profiles: list[str] = Field(default_factory=list)
    """GPU preset names (`hardware_profiles/gpus/`) this profile applies to."""
    failures_per_gpu_hour: float = Field(gt=0)
    """Expected unexpected job interruptions per GPU-hour (cluster MTBF = 1 / (this x GPUs))."""
    failures_per_gpu_hour_low: float = Field(gt=0)
    """Low end of the failure rate's range (spread between published clusters)."""
    failures_per_gpu_hour_high: float = Field(gt=0)
    """High end of the failure rate's range."""
    restart_s: float = Field(gt=0)
    """Time from an interruption to training again: detection, requeue, rendezvous, load."""
    restart_s_low: float = Field(gt=0)
    """Low end of the restart time (fastest published recovery)."""
    restart_s_high: float = Field(gt=0)
    """High end of the restart time."""
    host_copy_GBps_per_gpu: float | None = Field(default=None, gt=0)
    """Device-to-host copy bandwidth per GPU, GB/s: what an asynchronous checkpoint's snapshot
    to host memory runs at (null: unknown; async saving is then modelled as synchronous)."""
    observed_gpu_hours: float | None = Field(default=None, gt=0)
    """GPU-hours the primary failure rate is based on (null if no source for this GPU)."""
    observed_interruptions: int | None = Field(default=None, ge=0)
    """Interruptions counted over `observed_gpu_hours` (null where the source gives a rate)."""
    interruptions_by_cause: dict[str, int] = Field(default_factory=dict)
    """Published split of `observed_interruptions` by root cause, counts as published."""
    cause_categories: dict[str, str] = Field(default_factory=dict)
    """Cause -> the source's category for it (GPU, Host, Network, Dependency, ...)."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Field name -> citation, how the number was derived and the GPU-hours it covers."""
    notes: list[str] = Field(default_factory=list)
    """Caveats: assumptions, in-sample use, what could not be sourced."""

    @model_validator(mode="after")
    def _consistent(self) -> "Reliability":
        _check_band(self, "failures_per_gpu_hour")
        _check_band(self, "restart_s")
        if self.interruptions_by_cause:
            total = sum(self.interruptions_by_cause.values())
            if self.observed_interruptions is not None and total != self.observed_interruptions:
                raise ValueError(f"interruptions_by_cause sums to {total}, but "
                                 f"observed_interruptions is {self.observed_interruptions}")
            if any(c < 0 for c in self.interruptions_by_cause.values()):
                raise ValueError("interruptions_by_cause counts must be >= 0")
        _require_sources(self, RELIABILITY_NUMBERS)
        if self.interruptions_by_cause and not self.sources.get("interruptions_by_cause"):
            raise ValueError("sources has no entry for interruptions_by_cause")
        return self

    def cause_shares(self) -> dict[str, float]:
        """Each cause's share of the counted interruptions (computed from the counts)."""
        total = sum(self.interruptions_by_cause.values())
        return {k: v / total for k, v in self.interruptions_by_cause.items()} if total else {}


RELIABILITY_NUMBERS: tuple[str, ...] = (
    "failures_per_gpu_hour", "failures_per_gpu_hour_low", "failures_per_gpu_hour_high",
    "restart_s", "restart_s_low", "restart_s_high", "host_copy_GBps_per_gpu", "observed_gpu_hours",
    "observed_interruptions")


class Storage(FrozenModel):
    """The tier checkpoints are written to, as seen from one node."""

    name: str = Field(min_length=1)
    """Preset name, e.g. `parallel_fs`."""
    description: str = ""
    """What the tier is."""
    write_GBps: float = Field(gt=0)
    """Sustained checkpoint write bandwidth per node, GB/s = 1e9 BYTES/s (not Gb/s)."""
    write_GBps_low: float | None = Field(default=None, gt=0)
    """Low end of the per-node write bandwidth, GB/s (null if only one figure is sourced)."""
    write_GBps_high: float | None = Field(default=None, gt=0)
    """High end of the per-node write bandwidth, GB/s."""
    latency_s: float | None = Field(default=None, ge=0)
    """Fixed seconds per checkpoint on top of bytes / write_GBps (null: not measured)."""
    per_tensor_s: float | None = Field(default=None, ge=0)
    """Seconds per saved tensor on top of bytes / write_GBps: torch.distributed.checkpoint's
    planning, metadata and serialisation per item (null: not measured). It dominates small
    checkpoints (calibrated CPU profiles); the planner's goodput does not count tensors."""
    durable: bool
    """True if a checkpoint here survives the loss of the node that wrote it (a shared file
    system); False for node-local disks, which need a copy elsewhere to restart without the node."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Field name -> where the number comes from."""
    notes: list[str] = Field(default_factory=list)
    """Caveats."""

    @model_validator(mode="after")
    def _consistent(self) -> "Storage":
        if (self.write_GBps_low is None) != (self.write_GBps_high is None):
            raise ValueError("write_GBps_low and write_GBps_high go together (both or neither)")
        if self.write_GBps_low is not None:
            _check_band(self, "write_GBps")
        _require_sources(self, STORAGE_NUMBERS)
        return self


STORAGE_NUMBERS: tuple[str, ...] = ("write_GBps", "write_GBps_low", "write_GBps_high",
                                     "latency_s", "per_tensor_s")


# ---------------------------------------------------------------------------------------------
# Loading presets and files (same conventions as planner.hardware)

def _profiles_dir(kind: Kind) -> Path:
    return Path(str(resources.files("hardware_profiles"))) / kind


def preset_names(kind: Kind) -> list[str]:
    """Names of the built-in reliability or storage profiles."""
    return sorted(p.stem for p in _profiles_dir(kind).glob("*.json"))


def _resolve(ref: str, kind: Kind) -> Path:
    p = Path(ref)
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise InputError(f"{kind} profile: file not found: {ref}")
        return p
    key = ref.strip().lower().replace("-", "_")
    cand = _profiles_dir(kind) / f"{key}.json"
    if cand.is_file():
        return cand
    if kind == "reliability":  # a GPU preset name (`h100_sxm`) finds the profile listing it
        for path in sorted(_profiles_dir(kind).glob("*.json")):
            data = read_json(path, f"reliability profile {path}")
            if isinstance(data, dict) and key in data.get("gpu_profiles", []):
                return path
    raise InputError(f"unknown {kind} preset '{ref}'; accepted: {', '.join(preset_names(kind))} "
                     "(or a path to a .json profile)")


def load_reliability(name_or_path: str) -> Reliability:
    """A reliability profile from a preset (`h100`), a GPU preset it lists (`h100_sxm`) or a path."""
    path = _resolve(name_or_path, "reliability")
    what = f"reliability profile {path}"
    return validate_as(Reliability, read_json(path, what), what)


def load_storage(name_or_path: str) -> Storage:
    """A checkpoint storage profile from a preset (`local_nvme`, `parallel_fs`) or a JSON path."""
    path = _resolve(name_or_path, "storage")
    what = f"storage profile {path}"
    return validate_as(Storage, read_json(path, what), what)


def resolve_storage(ref: "str | Storage") -> Storage:
    """A cluster's `storage` field as a Storage: inline profiles as they are, else loaded."""
    return ref if isinstance(ref, Storage) else load_storage(ref)
