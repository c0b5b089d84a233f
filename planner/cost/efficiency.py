"""Efficiency curves from the hardware profile, evaluated over arrays, and the kernel-time
roofline that uses them. Every number comes from the profile; this file only interpolates."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from planner.hardware import GPU


def curve(points: Sequence[Sequence[float]], x: np.ndarray) -> np.ndarray:
    """Piecewise-linear in log10(x) through [x, y] points, clamped to the end values."""
    xs = np.log10([p[0] for p in points])
    ys = np.array([p[1] for p in points], dtype=float)
    return np.interp(np.log10(np.maximum(np.asarray(x, dtype=float), 1e-30)), xs, ys)


def gemm_time(gpu: GPU, peak: np.ndarray, fp8: np.ndarray, m: np.ndarray, k: np.ndarray,
              n: np.ndarray, elem_bytes: np.ndarray, count: np.ndarray | float = 1.0,
              out_bytes: np.ndarray | float | None = None) -> np.ndarray:
    """Seconds for `count` GEMMs of shape (m x k) @ (k x n): the slower of compute at the
    size-dependent efficiency and the HBM traffic of reading both inputs and writing the output
    (a roofline; small or skinny GEMMs are memory-bound). `out_bytes`: HBM bytes per output
    element where they differ from one write at `elem_bytes` (a GEMM accumulating into an
    existing fp32 buffer reads and writes it: 8)."""
    flops = 2.0 * m * k * n
    # sustained_clock_fraction: the power-limited clock of a long training run over the
    # micro-benchmark's (the GPU profile's source says where each figure comes from).
    eff = (curve(gpu.gemm_efficiency, flops / 1e9) * gpu.gemm_sustained_fraction
           * gpu.sustained_clock_fraction
           * np.where(fp8, gpu.fp8_gemm_scale, 1.0))
    t_compute = flops / (peak * eff)
    out = elem_bytes if out_bytes is None else out_bytes
    t_memory = transfer_time(gpu, elem_bytes * (m * k + k * n) + out * m * n)
    # The fixed per-kernel cost is paid once, outside the roofline's max: inside it, it would
    # hide the compute time of every GEMM smaller than the overhead.
    return count * (np.maximum(t_compute, t_memory) + gpu.kernel_overhead_s)


def transfer_time(gpu: GPU, nbytes: np.ndarray) -> np.ndarray:
    """Seconds to move `nbytes` through HBM at the size-dependent efficiency (no kernel cost)."""
    nbytes = np.asarray(nbytes, dtype=float)
    return nbytes / (gpu.hbm_bandwidth_GBps * 1e9 * curve(gpu.hbm_efficiency, nbytes / 1e6))


def memory_time(gpu: GPU, nbytes: np.ndarray, count: np.ndarray | float = 1.0) -> np.ndarray:
    """Seconds for `count` memory-bound kernels each moving `nbytes` through HBM."""
    return count * (transfer_time(gpu, nbytes) + gpu.kernel_overhead_s)


def overlapped(gpu: GPU, comm: np.ndarray, compute: np.ndarray) -> np.ndarray:
    """Seconds a collective of duration `comm` adds when it runs beside `compute` seconds of
    kernels. The compute it runs beside slows by gpu.overlap_compute_slowdown (its kernels take
    SMs and HBM bandwidth), so the pair takes max(comm, compute + slowdown x min(comm, compute)):
    a collective longer than the compute exposes its excess (the slowdown hides inside it), a
    shorter one costs only the slowdown."""
    comm, compute = np.asarray(comm, dtype=float), np.asarray(compute, dtype=float)
    return np.maximum(np.maximum(0.0, comm - compute),
                      gpu.overlap_compute_slowdown * np.minimum(comm, compute))
