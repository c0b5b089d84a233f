"""Goodput: the share of wall-clock a synchronous training job spends on useful steps once
failures, restarts and checkpoint stalls are counted, and the days, GPU-hours and dollars after
those losses. Pure functions, numpy-friendly (a scalar in gives a float out, arrays broadcast).

The model (first order, as in Young 1974 and Kokolis et al. 2025's ETTR estimate):
  cluster MTBF       M = 1 / (failures_per_gpu_hour x GPUs)                        [hours]
  checkpoint stall   C = bytes per node / node write bandwidth     (sync save)
                     C = bytes per node / host-copy bandwidth      (async: the snapshot only)
  interval           I = sqrt(2 C M)                    (Young 1974; Daly 2006 higher order opt.)
  lost per failure   L = I / 2 + R                      (R: restart = requeue, rendezvous, load)
  goodput            G = (1 - L / M) x I / (I + C)
Data (failure rates, restart times, storage bandwidth) live in hardware_profiles/ with sources;
see planner.reliability. All times in seconds unless the name says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from planner.reliability import Reliability, Storage
from planner.schema import InputError

Number = float | np.ndarray
Method = Literal["young", "daly"]
GB = 1e9  # GB/s = 1e9 bytes/s, as in hardware_profiles


def _arr(name: str, value: object, *, ge: float | None = None, gt: float | None = None
         ) -> np.ndarray:
    """`value` as a float array; InputError naming `name` and the value if out of range or NaN."""
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    bad = np.isnan(a) | (a < ge if ge is not None else a <= gt)
    if np.any(bad):
        got = value if a.ndim == 0 else a[bad].flat[0]
        op = f">= {ge}" if ge is not None else f"> {gt}"
        raise InputError(f"{name} must be {op}, got {got!r}")
    return a


def _out(a: np.ndarray) -> Number:
    return float(a) if np.ndim(a) == 0 else a


def checkpoint_bytes_per_rank(model_state_bytes: Number, optimizer_state_bytes: Number) -> Number:
    """Bytes one rank saves: its shard of the weights (and master copy) plus its shard of the
    optimizer state, as the plan shards them (the caller takes both from the plan's memory
    model, e.g. ZeRO-1 shards only the optimizer term). Gradients are not saved."""
    m = _arr("model_state_bytes", model_state_bytes, ge=0)
    o = _arr("optimizer_state_bytes", optimizer_state_bytes, ge=0)
    return _out(m + o)


def checkpoint_bytes_per_node(bytes_per_rank: Number, gpus_per_node: int,
                              replicas: Number = 1) -> Number:
    """Bytes one node writes: `gpus_per_node` ranks' shards divided by `replicas`, the number of
    ranks holding identical copies (data-parallel replicas not sharded by ZeRO). Replicated
    tensors are written once, spread over their holders, as torch.distributed.checkpoint's
    default save planner deduplicates them."""
    b = _arr("bytes_per_rank", bytes_per_rank, ge=0)
    g = _arr("gpus_per_node", gpus_per_node, gt=0)
    r = _arr("replicas", replicas, ge=1)
    return _out(b * g / r)


def checkpoint_write_s(bytes_per_node: Number, write_GBps: Number) -> Number:
    """Time to write one checkpoint from a node: bytes / (write_GBps x 1e9), every node in
    parallel at its share of the storage tier (hardware_profiles/storage `write_GBps`)."""
    b = _arr("bytes_per_node", bytes_per_node, ge=0)
    w = _arr("write_GBps", write_GBps, gt=0)
    return _out(b / (w * GB))


def checkpoint_stall_s(bytes_per_node: Number, write_GBps: Number, *, async_save: bool = False,
                       host_copy_GBps: Number | None = None,
                       interval_s: Number | None = None) -> Number:
    """Training time lost per checkpoint. Sync: the whole write. Async (Megatron-Core dist
    checkpointing, torch DCP async_save): only the snapshot to host memory, bytes /
    host_copy_GBps, while the write runs in the background; if the write outlasts the interval
    the next checkpoint waits for it, adding max(0, write - interval)."""
    write = _arr("write_s", checkpoint_write_s(bytes_per_node, write_GBps), ge=0)
    if not async_save:
        return _out(write)
    if host_copy_GBps is None:
        raise InputError("host_copy_GBps is required with async_save=True (the device-to-host "
                         "snapshot bandwidth per node, GB/s)")
    snap = _arr("bytes_per_node", bytes_per_node, ge=0) / (
        _arr("host_copy_GBps", host_copy_GBps, gt=0) * GB)
    wait = 0.0 if interval_s is None else np.maximum(
        0.0, write - _arr("interval_s", interval_s, gt=0))
    return _out(snap + wait)


def cluster_mtbf_s(failures_per_gpu_hour: Number, num_gpus: Number) -> Number:
    """Mean time between job interruptions of a synchronous job: one failed GPU (or its host,
    link, software) stops all, so M = 1 / (failures_per_gpu_hour x GPUs) hours, x 3600 s."""
    f = _arr("failures_per_gpu_hour", failures_per_gpu_hour, gt=0)
    n = _arr("num_gpus", num_gpus, gt=0)
    return _out(3600.0 / (f * n))


def optimal_interval_s(stall_s: Number, mtbf_s: Number, method: Method = "young") -> Number:
    """Compute time between checkpoints that maximises goodput.
    young: sqrt(2 C M)  (Young, "A first order approximation to the optimum checkpoint
           interval", CACM 17(9), 1974).
    daly:  sqrt(2 C M) [1 + sqrt(C/2M)/3 + (C/2M)/9] - C for C < 2M, else M  (Daly, "A higher
           order estimate of the optimum checkpoint interval for restart dumps", FGCS 22, 2006)."""
    c = _arr("stall_s", stall_s, gt=0)
    m = _arr("mtbf_s", mtbf_s, gt=0)
    young = np.sqrt(2.0 * c * m)
    if method == "young":
        return _out(young)
    if method != "daly":
        raise InputError(f"method must be 'young' or 'daly', got {method!r}")
    x = c / (2.0 * m)
    daly = young * (1.0 + np.sqrt(x) / 3.0 + x / 9.0) - c
    return _out(np.where(c < 2.0 * m, daly, m))


def async_interval_s(snapshot_s: Number, write_s: Number, mtbf_s: Number,
                     method: Method = "young") -> Number:
    """Interval for async saving: the Young/Daly optimum for the snapshot stall, but no shorter
    than the background write (a shorter one would stall on the unfinished write; while the
    interval is below sqrt(2 M (C + W)), lengthening it to W raises goodput)."""
    w = _arr("write_s", write_s, ge=0)
    return _out(np.maximum(optimal_interval_s(snapshot_s, mtbf_s, method), w))


def lost_time_per_failure_s(interval_s: Number, restart_s: Number) -> Number:
    """Expected time lost to one failure: half an interval of work redone (failures uniform
    within an interval) plus the restart (requeue, rendezvous, checkpoint load)."""
    i = _arr("interval_s", interval_s, gt=0)
    r = _arr("restart_s", restart_s, ge=0)
    return _out(i / 2.0 + r)


def goodput_fraction(interval_s: Number, stall_s: Number, mtbf_s: Number,
                     restart_s: Number) -> Number:
    """Useful fraction of wall-clock: (1 - (I/2 + R)/M) x I/(I + C) (first order; Young 1974;
    Kokolis et al. 2025 eq. for E[ETTR]). Floored at 0 where failures come faster than the
    job can redo its lost work (the first-order model is not valid near there)."""
    i = _arr("interval_s", interval_s, gt=0)
    c = _arr("stall_s", stall_s, ge=0)
    m = _arr("mtbf_s", mtbf_s, gt=0)
    lost = lost_time_per_failure_s(i, restart_s)
    return _out(np.maximum(0.0, 1.0 - lost / m) * i / (i + c))


def expected_interruptions(duration_s: Number, num_gpus: Number,
                           failures_per_gpu_hour: Number) -> Number:
    """Expected interruptions over `duration_s` of wall-clock: duration / cluster MTBF
    (Poisson arrivals at failures_per_gpu_hour x GPUs)."""
    d = _arr("duration_s", duration_s, ge=0)
    return _out(d / np.asarray(cluster_mtbf_s(failures_per_gpu_hour, num_gpus)))


# ---------------------------------------------------------------------------------------------
# Days, GPU-hours and dollars with and without losses

@dataclass(frozen=True)
class GoodputEstimate:
    """Time and money of a run after failures, restarts and checkpoint stalls. Ranges are
    (low, high): the step-time band combined with the failure rate's range (fast steps with the
    low rate, slow steps with the high rate); the interval is chosen once, for the mid rate."""

    num_gpus: int
    cluster_mtbf_s: float
    checkpoint_interval_s: float
    checkpoint_stall_s: float
    lost_per_failure_s: float
    goodput_fraction: float
    goodput_fraction_range: tuple[float, float]
    interruptions: float
    interruptions_range: tuple[float, float]
    days_ideal: float
    days_ideal_range: tuple[float, float]
    days_with_losses: float
    days_with_losses_range: tuple[float, float]
    gpu_hours_ideal: float
    gpu_hours_with_losses: float
    gpu_hours_with_losses_range: tuple[float, float]
    cost_usd_ideal: float | None
    cost_usd_with_losses: float | None
    cost_usd_with_losses_range: tuple[float, float] | None

    def as_dict(self) -> dict[str, object]:
        """Plain dict (tuples as lists) for JSON output."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _rates(failures_per_gpu_hour: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(failures_per_gpu_hour) != 3:
        raise InputError("failures_per_gpu_hour must be (low, mid, high), got "
                         f"{failures_per_gpu_hour!r}")
    lo, mid, hi = (float(_arr("failures_per_gpu_hour", f, gt=0)) for f in failures_per_gpu_hour)
    if not lo <= mid <= hi:
        raise InputError(f"failures_per_gpu_hour must be ordered low <= mid <= high, got "
                         f"{failures_per_gpu_hour!r}")
    return lo, mid, hi


def goodput_estimate(ideal_train_s: float, num_gpus: int, *,
                     failures_per_gpu_hour: tuple[float, float, float], restart_s: float,
                     checkpoint_stall_s: float, background_write_s: float = 0.0,
                     price_per_gpu_hour_usd: float | None = None,
                     step_time_band: tuple[float, float] = (1.0, 1.0),
                     method: Method = "young",
                     interval_s: float | None = None) -> GoodputEstimate:
    """Days, GPU-hours and dollars for `ideal_train_s` of failure-free training (step time x
    steps) on `num_gpus`, with and without losses. `checkpoint_stall_s` is the stall per
    checkpoint (checkpoint_stall_s() without interval); `background_write_s` > 0 marks an async
    save whose write runs behind training. `step_time_band` multiplies the ideal time for its
    low and high ends (e.g. step_time_range_s / step_time_s from `paraplan predict`).
    `interval_s` fixes the checkpoint interval (e.g. every K steps) instead of the optimum."""
    ideal = float(_arr("ideal_train_s", ideal_train_s, gt=0))
    n = int(_arr("num_gpus", num_gpus, ge=1))
    r = float(_arr("restart_s", restart_s, ge=0))
    c = float(_arr("checkpoint_stall_s", checkpoint_stall_s, gt=0))
    w = float(_arr("background_write_s", background_write_s, ge=0))
    band_lo, band_hi = (float(_arr("step_time_band", b, gt=0)) for b in step_time_band)
    if band_lo > band_hi:
        raise InputError(f"step_time_band must be (low, high) with low <= high, got "
                         f"{step_time_band!r}")
    lo, mid, hi = _rates(failures_per_gpu_hour)
    m_mid = float(cluster_mtbf_s(mid, n))
    interval = (float(_arr("interval_s", interval_s, gt=0)) if interval_s is not None else
                float(async_interval_s(c, w, m_mid, method) if w > 0
                      else optimal_interval_s(c, m_mid, method)))
    stall = c + max(0.0, w - interval)

    def good(rate: float) -> float:
        return float(goodput_fraction(interval, stall, float(cluster_mtbf_s(rate, n)), r))

    g_mid, g_lo, g_hi = good(mid), good(hi), good(lo)
    wall = (ideal / g_mid if g_mid > 0 else np.inf,
            ideal * band_lo / g_hi if g_hi > 0 else np.inf,
            ideal * band_hi / g_lo if g_lo > 0 else np.inf)
    day, gpu_h = 86400.0, n / 3600.0
    price = None if price_per_gpu_hour_usd is None else float(
        _arr("price_per_gpu_hour_usd", price_per_gpu_hour_usd, gt=0))
    cost = None if price is None else (lambda s: s * gpu_h * price)
    return GoodputEstimate(
        num_gpus=n, cluster_mtbf_s=m_mid, checkpoint_interval_s=interval,
        checkpoint_stall_s=stall, lost_per_failure_s=float(lost_time_per_failure_s(interval, r)),
        goodput_fraction=g_mid, goodput_fraction_range=(g_lo, g_hi),
        interruptions=float(expected_interruptions(wall[0], n, mid)),
        interruptions_range=(float(expected_interruptions(wall[1], n, lo)),
                             float(expected_interruptions(wall[2], n, hi))),
        days_ideal=ideal / day, days_ideal_range=(ideal * band_lo / day, ideal * band_hi / day),
        days_with_losses=wall[0] / day, days_with_losses_range=(wall[1] / day, wall[2] / day),
        gpu_hours_ideal=ideal * gpu_h, gpu_hours_with_losses=wall[0] * gpu_h,
        gpu_hours_with_losses_range=(wall[1] * gpu_h, wall[2] * gpu_h),
        cost_usd_ideal=None if cost is None else cost(ideal),
        cost_usd_with_losses=None if cost is None else cost(wall[0]),
        cost_usd_with_losses_range=None if cost is None else (cost(wall[1]), cost(wall[2])))


def estimate_from_profiles(ideal_train_s: float, num_gpus: int, gpus_per_node: int,
                           checkpoint_bytes_per_node: float, reliability: Reliability,
                           storage: Storage, *, async_save: bool = False,
                           host_copy_GBps: float | None = None,
                           price_per_gpu_hour_usd: float | None = None,
                           step_time_band: tuple[float, float] = (1.0, 1.0),
                           method: Method = "young") -> GoodputEstimate:
    """goodput_estimate() with the failure range and restart time of a reliability profile and
    the write bandwidth of a storage profile (hardware_profiles/reliability, /storage)."""
    _arr("gpus_per_node", gpus_per_node, gt=0)
    write = float(checkpoint_write_s(checkpoint_bytes_per_node, storage.write_GBps))
    stall = float(checkpoint_stall_s(checkpoint_bytes_per_node, storage.write_GBps,
                                     async_save=async_save, host_copy_GBps=host_copy_GBps))
    rel = reliability
    return goodput_estimate(
        ideal_train_s, num_gpus, restart_s=rel.restart_s, checkpoint_stall_s=stall,
        failures_per_gpu_hour=(rel.failures_per_gpu_hour_low, rel.failures_per_gpu_hour,
                               rel.failures_per_gpu_hour_high),
        background_write_s=write if async_save else 0.0,
        price_per_gpu_hour_usd=price_per_gpu_hour_usd, step_time_band=step_time_band,
        method=method)
