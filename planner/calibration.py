"""Fit a Cluster profile to raw calibration measurements (executor/calibrate.py). Pure
functions, torch-free, so the fitting math is testable on hand-made numbers.

What is fitted (every rank measured at once, averaged over ranks):
- peak FLOP/s per dtype: the best GEMM; `gemm_efficiency`: each GEMM's FLOP/s over that peak,
  by its size; `hbm_bandwidth_GBps` and `hbm_efficiency` likewise from element-wise adds.
- `attention_efficiency`: fused attention forward+backward FLOP/s over the fp32 peak.
- the link: `latency_s` per ring step from point-to-point sends, `call_latency_s` per
  collective call and `bandwidth_GBps` from collectives of every kind and group size
  (t = call + steps x latency + volume / bandwidth, least squares per op).
- `stack.optimizer_tensor_overhead_s`: AdamW + clipping time per parameter tensor.
- `kernel_overhead_s` and `stack.elementwise_traffic`: the per-kernel time and the
  element-wise traffic multiplier that make the cost model reproduce the probe training steps
  at several micro-batch sizes (least squares: the first sets the intercept, the second the
  slope per token).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

GiB = 2**30


def _mean_over_ranks(raw: dict, get: Callable[[dict], list[dict]], key: str) -> list[dict]:
    """Per-measurement rows with `key` averaged over ranks (rows align across ranks)."""
    per_rank = [get(r) for r in raw["ranks"]]
    out = []
    for rows in zip(*per_rank):
        row = dict(rows[0])
        row[key] = statistics.fmean(r[key] for r in rows)
        out.append(row)
    return out


def curve_points(xs: list[float], ys: list[float]) -> list[list[float]]:
    """[x, y] points with strictly increasing x (duplicates averaged), y clipped to (1e-4, 1]."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys):
        by_x.setdefault(round(x, 12), []).append(y)
    return [[x, min(1.0, max(1e-4, statistics.fmean(v)))] for x, v in sorted(by_x.items())]


def fit_compute(raw: dict) -> dict[str, Any]:
    """Peaks, GEMM and memory curves, attention efficiency, optimizer and dispatch time."""
    gemm = _mean_over_ranks(raw, lambda r: r["compute"]["gemm"], "seconds")
    dispatch = statistics.fmean(r["compute"]["dispatch_s"] for r in raw["ranks"])

    def net(sec: float) -> float:  # measured op time, dispatch included (what a step pays)
        return sec
    peaks, points = {}, {}
    for dtype in ("float32", "bfloat16"):
        rows = [g for g in gemm if g["dtype"] == dtype]
        flops = [2.0 * g["m"] * g["k"] * g["n"] for g in rows]
        rates = [f / net(g["seconds"]) for f, g in zip(flops, rows)]
        peaks[dtype] = max(rates)
        points[dtype] = curve_points([f / 1e9 for f in flops], [r / peaks[dtype] for r in rates])
    mem = _mean_over_ranks(raw, lambda r: r["compute"]["memory"], "seconds")
    bw = [m["bytes"] / net(m["seconds"]) for m in mem]
    att = _mean_over_ranks(raw, lambda r: r["compute"]["attention"], "seconds")
    opt = [r["compute"]["optimizer"] for r in raw["ranks"]]
    return {
        "peak_fp32_flops": peaks["float32"], "peak_bf16_flops": peaks["bfloat16"],
        "gemm_efficiency": points["float32"],
        "hbm_bandwidth_GBps": max(bw) / 1e9,
        "hbm_efficiency": curve_points([m["bytes"] / 1e6 for m in mem], [b / max(bw) for b in bw]),
        "attention_efficiency": min(1.0, statistics.median(
            a["flops"] / a["seconds"] for a in att) / peaks["float32"]),
        "optimizer_tensor_overhead_s": statistics.fmean(o["seconds"] / o["tensors"] for o in opt),
        "dispatch_s": dispatch,
    }


STEPS = {"all_reduce": lambda n: 2 * (n - 1), "all_gather": lambda n: n - 1,
         "reduce_scatter": lambda n: n - 1}
VOLUME = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
          "reduce_scatter": lambda n: (n - 1) / n}


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of y = a + b x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def fit_link(raw: dict) -> dict[str, Any]:
    """Per (op, group size): time = intercept + volume / bandwidth (least squares over message
    sizes, which on loopback gloo are latency-bound below ~1 MB). Point-to-point's intercept is
    the per-step latency; each collective's intercept minus its ring steps is its per-call
    cost (median over ops); the bandwidth is the median of the fitted ones. The efficiency curve
    is flat (1.0): with a per-call and per-step latency fitted, the data has no size-dependent
    efficiency left to resolve above its noise."""
    rank0 = raw["ranks"][0]
    p2p = rank0["p2p"]
    step, p2p_slope = line_fit([p["bytes"] for p in p2p], [p["seconds"] for p in p2p])
    step = max(step, 1e-7)
    calls, slopes = [], [p2p_slope] if p2p_slope > 0 else []
    by_op: dict[tuple, list[dict]] = {}
    for c in rank0["collectives"]:
        by_op.setdefault((c["op"], c["n"]), []).append(c)
    for (op, n), rows in by_op.items():
        a, b = line_fit([VOLUME[op](n) * r["bytes"] for r in rows], [r["seconds"] for r in rows])
        calls.append(a - STEPS[op](n) * step)
        if b > 0:
            slopes.append(b)
    return {"latency_s": step, "call_latency_s": max(0.0, statistics.median(calls)),
            "bandwidth_GBps": 1.0 / statistics.median(slopes) / 1e9, "efficiency": [[1.0, 1.0]]}


# Stack numbers `paraplan calibrate` does not measure, and what they are instead.
UNMEASURED = {
    "grad_bucket_bytes": (
        "not measured: 25 MiB, PyTorch DistributedDataParallel's default bucket_cap_mb=25, which "
        "the executor's DDP keeps"),
    "framework_memory_bytes": (
        "not measured: set to 0 by `paraplan calibrate` (CPU ranks hold no CUDA context or NCCL "
        "buffers; gloo's and the allocator's own memory are not measured, so peaks read low)"),
}
EXECUTOR = ("the executor's own behaviour (executor/parallel/*, executor/train.py), which these "
            "ranks run: ")
# The calibrated stack's behaviours: what the executor does, not measured numbers.
EXECUTOR_STACK = {
    "attention_kernel": ("sdpa", "torch.nn.functional.scaled_dot_product_attention "
                                 "(executor/transformer.py), timed by calibrate"),
    "tp_comm_overlap": (False, "DTensor tensor parallelism runs its collectives between ops"),
    "grad_overlap": (False, "on CPU the gloo threads share the cores with compute, so nothing "
                            "overlaps"),
    "param_gather_overlap": (False, "FSDP2 on shared cores: no overlap, as grad_overlap"),
    "pool_nics": (True, "one machine, no NICs: unused"),
    "zero_impl": ("fsdp2", "ZeRO runs as FSDP2 fully_shard (executor/parallel/data.py)"),
    "fsdp_defer_grad_sync": (True, "FSDP2 reduce-scatters once, after the last micro-batch "
                                   "(executor/train.py set_requires_gradient_sync)"),
    "loss_softmax_bytes": (4.0, "the loss's time as the profile was calibrated with (fp32 "
                                "logits on CPU; its memory is counted eagerly)"),
    "optimizer_state": ("fp32_params", "bf16 / fp16 run as autocast over fp32 parameters, "
                                       "torch.optim.AdamW on them (executor/precision.py)"),
    "sharded_grads_reduce_each_backward": (False, "FSDP2 keeps unsharded gradients until the "
                                                  "last micro-batch at every ZeRO stage"),
    "cp_impl": ("all_gather", "context parallelism all-gathers K/V (executor/transformer.py)"),
    "activation_layout": ("eager", "plain PyTorch ops (planner/cost/eager_activations.py)"),
    "async_checkpoint": (False, "torch.distributed.checkpoint.save, synchronous "
                                "(executor/checkpoint.py)"),
    "selective_recompute": ("attention_core", "selective recompute checkpoints the attention "
                                              "core (executor/transformer.py)"),
    "tp_shards_norms": (False, "norms are sharded over the sequence only with the plan's "
                               "sequence_parallel (executor/parallel/tensor.py)"),
}


def stack_dict(name: str, optimizer_tensor_overhead_s: float, how: str) -> dict[str, Any]:
    """The calibrated profile's own stack: the executor's behaviours, the measured optimizer
    overhead; the other overheads and the element-wise traffic are fitted afterwards
    (executor/calibration_run.py) and start at 0 / 1."""
    fields = {k: v for k, (v, _) in EXECUTOR_STACK.items()}
    sources = {k: EXECUTOR + why for k, (_, why) in EXECUTOR_STACK.items()}
    fitted_later = {"elementwise_traffic": 1.0, "dp_step_overhead_s": 0.0,
                    "fsdp_unit_overhead_s": 0.0, "tp_block_overhead_s": 0.0,
                    "sp_block_overhead_s": 0.0, "pp_microbatch_overhead_s": 0.0,
                    "cp_block_overhead_s": 0.0, "recompute_block_overhead_s": 0.0,
                    "fsdp_unit_step_overhead_s": 0.0}
    sources.update({k: how + "; fitted to probe steps" for k in fitted_later})
    return {"name": f"{name}-stack", "description": "paraplan's executor (PyTorch, gloo) on "
            "this machine, as calibrated", **fields, **fitted_later,
            "grad_bucket_bytes": 25 * 2**20, "framework_memory_bytes": 0,
            "optimizer_tensor_overhead_s": optimizer_tensor_overhead_s,
            "sources": {**sources, "optimizer_tensor_overhead_s": how, **UNMEASURED}}


def checkpoint_costs(write: dict, saves: dict) -> tuple[float, float]:
    """(fixed seconds, seconds per tensor) of a checkpoint save: the line through the two
    probe saves (executor/calibrate.py bench_checkpoint; median of each) once their bytes at
    the measured write bandwidth are taken off; both floored at 0."""
    net = [(p["tensors"], statistics.median(p["seconds"]) - p["bytes"] / (write["write_GBps"] * 1e9))
           for p in saves["probes"]]
    (t1, s1), (t2, s2) = net
    per = max(0.0, (s2 - s1) / (t2 - t1))
    return max(0.0, s1 - per * t1), per


def storage_dict(measured: dict, saves: dict, name: str, when: str) -> dict[str, Any]:
    """An inline Storage profile (planner.reliability) from measure_write_bandwidth's result
    (the checkpoint directory's durable write bandwidth on this machine) and the probe saves
    (the fixed and per-tensor cost of a save)."""
    fixed, per = checkpoint_costs(measured, saves)
    fit = (f"fitted by `paraplan calibrate` {when}: a line through the median save time of the "
           "calibration probe at " + " and ".join(
               f"{p['tensors']} tensors ({p['bytes'] / 1e6:.2f} MB)" for p in saves["probes"])
           + ", slowest rank, less the bytes at write_GBps (executor/calibrate.py "
           "bench_checkpoint)")
    how = (f"measured by `paraplan calibrate` {when}: {measured['bytes'] / 1e6:.0f} MB written "
           f"and fsync'd in {measured['seconds']:.3f} s under {measured['directory']} "
           "(executor/calibrate.py measure_write_bandwidth, best of 2)")
    return {"name": f"{name}-storage", "description": f"local file system under "
            f"{measured['directory']}", "write_GBps": measured["write_GBps"],
            "latency_s": fixed, "per_tensor_s": per, "durable": False,
            "sources": {"write_GBps": how, "latency_s": fit, "per_tensor_s": fit},

            "notes": ["GB/s = 1e9 bytes per second per node (not Gb/s).",
                      "One writer; paraplan run's ranks write their shard files at once."]}


def median_raw(raws: list[dict]) -> dict:
    """Raw measurements of several calibration rounds as one: every number the median of its
    value over the rounds (sizes and counts are the same in each, so they stay), everything else
    the first round's. The rounds have the same structure (the same benchmarks in the same
    order), as executor/calibrate.measure writes them."""
    def merge(values: list) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v[k] for v in values]) for k in first}
        if isinstance(first, list) and all(len(v) == len(first) for v in values):
            return [merge(list(items)) for items in zip(*values)]
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return statistics.median(values)
        return first
    return {**merge(raws), "rounds": len(raws)}


def profile_dict(raw: dict, name: str) -> dict[str, Any]:
    """The Cluster profile (kernel_overhead_s still 0: see fit_kernel_overhead), with sources."""
    c, link = fit_compute(raw), fit_link(raw)
    world, threads = raw["world"], raw["threads"]
    how = (f"measured by `paraplan calibrate` on {raw['host']} ({raw['cpu']}, {raw['cores']} "
           f"cores, torch {raw['torch']}, {raw['backend']}) on {raw['date']}: {world} ranks x "
           f"{threads} threads, all ranks at once; raw numbers in the .raw.json beside this file")
    gpu = {
        "name": name, "description": f"CPU rank ({threads} thread(s)) of {raw['host']}",
        "memory_bytes": int(raw["memory_bytes"] // world),
        "peak_tflops": {"fp32": c["peak_fp32_flops"] / 1e12, "bf16": c["peak_bf16_flops"] / 1e12,
                        "fp16": None, "fp8": None, "tf32": None},
        "hbm_bandwidth_GBps": c["hbm_bandwidth_GBps"], "gemm_efficiency": c["gemm_efficiency"],
        "hbm_efficiency": c["hbm_efficiency"], "attention_efficiency": c["attention_efficiency"],
        "kernel_overhead_s": 0.0, "sources": {k: how for k in (
            "memory_bytes", "peak_tflops", "hbm_bandwidth_GBps", "gemm_efficiency",
            "hbm_efficiency", "attention_efficiency", "kernel_overhead_s")},
        "notes": [f"per-op dispatch measured at {c['dispatch_s'] * 1e6:.1f} us"]}
    return {
        "name": name, "description": f"{raw['host']}: {world} gloo ranks on one machine",
        "gpu": gpu, "gpus_per_node": world, "num_nodes": 1,
        "intra_node": {"name": f"gloo over loopback ({world} ranks)", "topology": "switch",
                       "bandwidth_GBps": link["bandwidth_GBps"], "latency_s": link["latency_s"],
                       "call_latency_s": link["call_latency_s"],
                       "efficiency": link["efficiency"]},
        "inter_node": None,
        "stack": stack_dict(name, c["optimizer_tensor_overhead_s"], how),
        "sources": {k: how for k in (
            "gpus_per_node", "intra_node.bandwidth_GBps", "intra_node.latency_s",
            "intra_node.call_latency_s", "intra_node.efficiency")},
        "notes": ["Calibrated profile: compute, memory and link numbers are this machine's; its "
                  "`stack` is the executor's own (FSDP2, all-gather context parallelism, eager "
                  "PyTorch ops, no overlap on shared cores)."]}


def fit_linear(predict: Callable[[list[float]], list[float]], start: list[float],
               measured: list[float], steps: list[float]) -> list[float]:
    """Least-squares parameters of a model locally linear in them (finite differences at
    `start`, one Gauss-Newton step), each kept >= 0."""
    base = predict(start)
    cols = []
    for i, h in enumerate(steps):
        x = list(start)
        x[i] += h
        cols.append([(b - a) / h for a, b in zip(base, predict(x))])
    # Normal equations for len(start) unknowns (2 here): solve by Cramer / direct.
    r = [m - b for m, b in zip(measured, base)]
    n = len(cols)
    A = [[sum(ci * cj for ci, cj in zip(cols[i], cols[j])) for j in range(n)] for i in range(n)]
    y = [sum(ci * ri for ci, ri in zip(cols[i], r)) for i in range(n)]
    delta = _solve(A, y)
    return [max(0.0, s + d) for s, d in zip(start, delta)]


def _solve(A: list[list[float]], y: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (small systems)."""
    n = len(y)
    M = [row[:] + [v] for row, v in zip(A, y)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        M[c], M[p] = M[p], M[c]
        if abs(M[c][c]) < 1e-300:
            return [0.0] * n
        for r in range(n):
            if r != c:
                f = M[r][c] / M[c][c]
                M[r] = [a - f * b for a, b in zip(M[r], M[c])]
    return [M[i][n] / M[i][i] for i in range(n)]
