"""Time-to-train and money: for a model and a token budget, the best plan per GPU type and
cluster size (from the search), and what it takes in days, GPU-hours and dollars.

Pure arithmetic on top of the search: days = tokens / (tokens per second) / 86,400;
GPU-hours = days x 24 x GPUs; cost = GPU-hours x rent per GPU-hour. Each option also carries
the same figures after failures, restarts and checkpoint stalls (planner.goodput: Young/Daly
interval, goodput fraction), with the checkpoint sized from the plan's own sharding.
Evaluation runs are not included (published GPU-hour totals include them)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner import goodput as gp
from planner.cost.evaluate import predict
from planner.cost.memory import memory_by_stage
from planner.cost.step_time import shapes
from planner.plan_arrays import PlanArrays
from planner.reliability import load_reliability, load_storage, resolve_storage
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
    ('h100' -> dgx_h100). Where several presets carry that GPU (dgx_h100, ibm_h100_800g, ...),
    the NVIDIA reference system `dgx_<name>` / `hgx_<name>` is meant, if there is one."""
    presets = {name: load_cluster(name) for name in preset_names("clusters")}
    out = []
    for g in gpus:
        key = g.strip().lower().replace("-", "_")
        hits = [n for n, c in presets.items()
                if key in (n, c.gpu.name) or c.gpu.name.startswith(key + "_")]
        reference = [n for n in hits if n in (f"dgx_{key}", f"hgx_{key}")]
        hits = reference if len(hits) > 1 and len(reference) == 1 else hits
        if len(hits) != 1:
            accepted = ", ".join(sorted({c.gpu.name for c in presets.values()}))
            why = "ambiguous" if hits else "unknown"
            raise InputError(f"{why} GPU '{g}'" + (f" (matches {', '.join(hits)})" if hits else "")
                             + f"; accepted: {accepted} (or a cluster preset name)")
        out.append(hits[0])
    return out


# ---------------------------------------------------------------------------------------------
# Goodput of a plan: checkpoint bytes from its sharding, the cluster's reliability and storage

@dataclass(frozen=True)
class GoodputSettings:
    """Overrides of the reliability and storage data from the command line (None: the data's)."""

    mtbf_gpu_hours: float | None = None
    """Per-GPU mean time between interruptions, hours (failure rate = 1 / this, no range)."""
    checkpoint_GBps: float | None = None
    """Checkpoint write bandwidth per node, GB/s (bytes)."""
    restart_minutes: float | None = None
    """Time from an interruption to training again."""
    checkpoint_every: int | None = None
    """Checkpoint every this many steps instead of at the Young/Daly optimum."""
    storage: str | None = None
    """A storage preset or JSON replacing the cluster's `storage`."""

    def __post_init__(self) -> None:
        for flag, value in (("--mtbf-gpu-hours", self.mtbf_gpu_hours),
                            ("--checkpoint-gbps", self.checkpoint_GBps),
                            ("--restart-minutes", self.restart_minutes),
                            ("--checkpoint-every", self.checkpoint_every)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{flag} must be > 0, got {value!r}")


@dataclass(frozen=True)
class GoodputInputs:
    """The numbers the goodput model needs for one cluster, overrides applied."""

    failures_per_gpu_hour: tuple[float, float, float]
    """(low, mid, high) interruptions per GPU-hour."""
    restart_s: float
    write_GBps: float
    """Checkpoint write bandwidth per node, GB/s."""
    host_copy_GBps_per_gpu: float | None
    """Snapshot bandwidth per GPU when the stack saves asynchronously, else None (sync)."""
    checkpoint_every: int | None
    storage: str


def goodput_inputs(cluster: Cluster, settings: GoodputSettings | None = None) -> GoodputInputs:
    """Reliability from the cluster's GPU (hardware_profiles/reliability), storage from its
    `storage` field, async saving from its stack; `settings` overrides each."""
    s = settings or GoodputSettings()
    rel = None
    if s.mtbf_gpu_hours is None or s.restart_minutes is None or cluster.stack.async_checkpoint:
        try:
            rel = load_reliability(cluster.gpu.name)
        except InputError:
            if s.mtbf_gpu_hours is None or s.restart_minutes is None:
                raise InputError(f"no reliability profile lists GPU {cluster.gpu.name!r}; pass "
                                 "--mtbf-gpu-hours and --restart-minutes") from None
    rates = ((1 / s.mtbf_gpu_hours,) * 3 if s.mtbf_gpu_hours is not None else
             (rel.failures_per_gpu_hour_low, rel.failures_per_gpu_hour,
              rel.failures_per_gpu_hour_high))
    storage = load_storage(s.storage) if s.storage else resolve_storage(cluster.storage)
    host = rel.host_copy_GBps_per_gpu if rel is not None and cluster.stack.async_checkpoint \
        else None
    return GoodputInputs(
        failures_per_gpu_hour=rates,
        restart_s=60 * s.restart_minutes if s.restart_minutes is not None else rel.restart_s,
        write_GBps=s.checkpoint_GBps or storage.write_GBps, host_copy_GBps_per_gpu=host,
        checkpoint_every=s.checkpoint_every, storage=storage.name)


def checkpoint_bytes(spec: TransformerSpec, cluster: Cluster,
                     P: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """(written, snapshot) bytes per node of one checkpoint for every plan in `P`, from the
    memory model's weights and optimizer state per rank (gradients are not saved), on the
    pipeline stage that holds the most. Written: torch.distributed.checkpoint (and Megatron-Core
    dist checkpointing) deduplicate replicated tensors and spread them over their holders
    (_dedup_save_plans), so each rank writes its state / replicas, replicas = dp x cp for a
    component ZeRO leaves whole. Snapshot (async save): each rank stages its whole local state
    to host memory before deduplication (DCP async_save stages the state dict it is given)."""
    stages = memory_by_stage(spec, cluster, P, shapes(cluster, P), cluster.stack.flash_attention)
    dpc = (P.dp * P.cp).astype(float)
    sharded_w = P.zero >= (1 if cluster.stack.zero_impl == "fsdp2" else 3)
    rep_w, rep_o = np.where(sharded_w, 1.0, dpc), np.where(P.zero >= 1, 1.0, dpc)
    ranks = min(cluster.gpus_per_node, cluster.num_gpus)
    write = np.max([st["weights_bytes"] / rep_w + st["optimizer_bytes"] / rep_o
                    for st in stages.values()], axis=0)
    snap = np.max([st["weights_bytes"] + st["optimizer_bytes"] for st in stages.values()], axis=0)
    return write * ranks, snap * ranks


def stall_and_interval(g: GoodputInputs, num_gpus: int, gpus_per_node: int,
                       step_time_s: np.ndarray, write_bytes: np.ndarray,
                       snapshot_bytes: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorized: per plan, the write and stall per checkpoint, the interval (optimum or every
    K steps) and the goodput fraction at the mid failure rate (planner.goodput). Checkpoints
    are taken between steps, so the optimum is raised to at least one step."""
    m = gp.cluster_mtbf_s(g.failures_per_gpu_hour[1], num_gpus)
    write = np.asarray(gp.checkpoint_write_s(write_bytes, g.write_GBps))
    fixed = None if g.checkpoint_every is None else g.checkpoint_every * np.asarray(step_time_s)
    if g.host_copy_GBps_per_gpu is not None:  # async: the snapshot stalls, the write runs behind
        host = g.host_copy_GBps_per_gpu * min(gpus_per_node, num_gpus)
        snap = np.asarray(snapshot_bytes) / (host * gp.GB)
        interval = fixed if fixed is not None else np.maximum(
            gp.async_interval_s(snap, write, m), step_time_s)
        stall = snap + np.maximum(0.0, write - interval)
    else:
        snap, stall = write, write
        interval = fixed if fixed is not None else np.maximum(
            gp.optimal_interval_s(write, m), step_time_s)
    return {"write_s": write, "snapshot_s": snap, "stall_s": np.asarray(stall),
            "interval_s": np.asarray(interval),
            "goodput_fraction": np.asarray(gp.goodput_fraction(interval, stall, m, g.restart_s))}


def plan_goodput(g: GoodputInputs, cluster: Cluster, prediction: dict[str, Any],
                 ideal_train_s: float, write_bytes: float, snapshot_bytes: float,
                 rent: float | None) -> gp.GoodputEstimate:
    """Days, GPU-hours and dollars after losses for one plan. The band combines the predicted
    step-time range (`step_time_range_s`, if the prediction has one) with the failure range."""
    step = prediction["step_time_s"]
    lo, hi = prediction.get("step_time_range_s") or (step, step)
    one = stall_and_interval(g, cluster.num_gpus, cluster.gpus_per_node, np.array([step]),
                             np.array([write_bytes]), np.array([snapshot_bytes]))
    is_async = g.host_copy_GBps_per_gpu is not None
    return gp.goodput_estimate(
        ideal_train_s, cluster.num_gpus, failures_per_gpu_hour=g.failures_per_gpu_hour,
        restart_s=g.restart_s, checkpoint_stall_s=float(one["snapshot_s"][0]),
        background_write_s=float(one["write_s"][0]) if is_async else 0.0,
        price_per_gpu_hour_usd=rent, step_time_band=(lo / step, hi / step),
        interval_s=float(one["interval_s"][0]))


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
    goodput: gp.GoodputEstimate | None = None
    """Time and money after failures, restarts and checkpoint stalls (None if it does not fit)."""
    checkpoint_bytes_per_node: float | None = None
    """Bytes one node writes per checkpoint (deduplicated over data-parallel replicas)."""
    async_checkpoint: bool = False
    """The stack saves asynchronously (the stall is the snapshot to host memory)."""

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
                rent: float | None, precision: str = "bf16",
                goodput: GoodputInputs | None = None) -> Option:
    """Search `cluster` and price its best plan, with and without losses."""
    # plan(0) is all used. Full sharding only: hybrid sharding (dp_shard) did not change the
    # best plan of Llama-3 70B on any of 8 to 128 nodes of H100, A100 or B200 (docs/accuracy.md,
    # session 23) and would add a third to the estimate's time.
    res = search(spec, cluster, global_batch, precision, best_only=True, hybrid=False)
    if not res.fitting:
        why = ("no valid plan" if res.valid == 0 else
               f"needs {res.peak_bytes.min() / 2**30:.0f} GiB per GPU at best")
        return Option(cluster, None, None, tokens, rent, res.candidates, why)
    plan = res.plan(0)
    opt = Option(cluster, plan, predict(spec, cluster, plan), tokens, rent, res.candidates)
    g = goodput or goodput_inputs(cluster)
    write, snap = (float(b[0]) for b in checkpoint_bytes(spec, cluster,
                                                         PlanArrays.from_plans([plan])))
    opt.goodput = plan_goodput(g, cluster, opt.prediction, opt.days * 86400, write, snap, rent)
    opt.checkpoint_bytes_per_node = write
    opt.async_checkpoint = g.host_copy_GBps_per_gpu is not None
    return opt


@dataclass
class Estimate:
    """All options, plus the smallest cluster (in powers of two nodes) that fits per GPU type."""

    options: list[Option]
    smallest: dict[str, Option] = field(default_factory=dict)
    losses: dict[str, GoodputInputs] = field(default_factory=dict)
    """Cluster preset -> the reliability and storage numbers its goodput figures used."""

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
