"""`paraplan calibrate`: micro-benchmarks on this machine with the executor's own stack, every
rank running at once (so contention between ranks is in the numbers), and a few probe training
steps. The raw measurements go to planner/calibration.py, which fits a Cluster profile.

Measured, per rank, concurrently: per-op dispatch; GEMM time by shape (fp32, bf16); memory-bound
op bandwidth by size; fused attention forward+backward; AdamW + clipping time per parameter
tensor; collectives (all-reduce, all-gather, reduce-scatter) by message and group size and
point-to-point sends, each interleaved with a GEMM burst as inside a training step (gloo in
isolation is 2-3x faster than in-step, DESIGN.md); and full training steps of a small probe
transformer (not the model you will validate on) at several micro-batch sizes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from executor.parallelize import build_model, loss_fn
from executor.parallel.grad_norm import clip_grad_norm_
from executor.train import TrainConfig, make_optimizer
from planner.plan import Plan
from planner.transformer import TransformerSpec

# A small probe model, deliberately not the `tiny` preset that validate-local checks.
PROBE = TransformerSpec(name="calibration-probe", num_layers=2, hidden_size=96,
                        num_attention_heads=4, num_kv_heads=2, ffn_hidden_size=256,
                        vocab_size=384, seq_len=48, mlp="swiglu", tied_embeddings=False)


def _time(fn: Callable[[], object], min_s: float, min_reps: int = 3) -> float:
    """Seconds per call: repeat until `min_s` of work, median of 3 such batches."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_s / 3:
        fn()
        reps += 1
    per = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        per.append((time.perf_counter() - t0) / reps)
    return statistics.median(per)


def bench_compute(quick: bool) -> dict:
    """Dispatch, GEMMs, memory-bound ops, attention, optimizer: no communication."""
    budget = 0.02 if quick else 0.06
    x = torch.zeros(16)
    out: dict = {"dispatch_s": _time(lambda: x.add_(1), budget, 100)}
    sizes = [8, 16, 32, 64, 128, 256, 512] + ([] if quick else [1024])
    shapes = [(n, n, n) for n in sizes] + [(t, h, f) for t in (64, 256, 1024)
                                          for h, f in ((64, 192), (96, 256), (256, 768))]
    out["gemm"] = []
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            out["gemm"].append({"m": m, "k": k, "n": n, "dtype": str(dtype).split(".")[1],
                                "seconds": _time(lambda: a @ b, budget)})
    out["memory"] = []
    for numel in [1 << p for p in range(10, 24 if not quick else 22, 2)]:
        a, b, c = torch.randn(numel), torch.randn(numel), torch.empty(numel)
        out["memory"].append({"bytes": 3 * 4 * numel,
                              "seconds": _time(lambda: torch.add(a, b, out=c), budget)})
    out["attention"] = []
    for bh, s, d in ((4, 64, 16), (8, 128, 32), (8, 256, 32)):
        q, k, v = (torch.randn(1, bh, s, d, requires_grad=True) for _ in range(3))

        def fb():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        # Executed FLOPs forward + backward of causal attention: 3.5 x (2 matmuls of the lower
        # half), as in the cost model (planner/cost/compute.py).
        out["attention"].append({"flops": 3.5 * 0.5 * 4.0 * bh * s * s * d,
                                 "seconds": _time(fb, budget)})
    params = [torch.nn.Parameter(torch.randn(64, 64)) for _ in range(32)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = make_optimizer(params, TrainConfig())

    def step():
        clip_grad_norm_(params, 1.0, None, set())
        opt.step()
    out["optimizer"] = {"tensors": len(params), "seconds": _time(step, budget)}
    return out


def bench_probe(quick: bool) -> list[dict]:
    """Whole single-process training steps of PROBE (every rank at once)."""
    out = []
    for mbs in (1, 4) if quick else (1, 2, 4, 8):
        plan = Plan(dp=1, tp=1, pp=1, micro_batch_size=mbs, global_batch_size=mbs,
                    precision="fp32")
        model = build_model(PROBE, plan, 0)
        opt = make_optimizer(model.parameters(), TrainConfig())
        tok = torch.randint(0, PROBE.vocab_size, (mbs, PROBE.seq_len + 1))

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(tok[:, :-1]), tok[:, 1:]).backward()
            clip_grad_norm_(list(model.parameters()), 1.0, None, set())
            opt.step()
        out.append({"plan": plan.to_json_dict(), "seconds": _time(step, 0.3 if quick else 1.0)})
    return out


def _time_together(fn: Callable[[], object], budget: float, group=None) -> float:
    """Like _time, for code that communicates: every rank must make the same number of calls,
    so the repetition count is agreed (the largest any rank wants) before timing."""
    fn()
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    est = max((time.perf_counter() - t0) / 3, 1e-6)
    reps = torch.tensor([max(3, min(200, int(budget / 3 / est)))])
    dist.all_reduce(reps, op=dist.ReduceOp.MAX, group=group)
    per = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(int(reps)):
            fn()
        per.append((time.perf_counter() - t0) / int(reps))
    return statistics.median(per)


def bench_comm(world: int, quick: bool) -> dict:
    """Collectives over the whole world and over pairs, in a training-like loop."""
    burst = torch.randn(192, 192)
    groups = {world: None}
    if world > 2:
        pairs = [dist.new_group([i, i + 1]) for i in range(0, world - 1, 2)]
        groups[2] = pairs[dist.get_rank() // 2]  # world is even (checked by the command)
    sizes = [1 << p for p in range(8, 22 if quick else 25, 3)]
    out: dict = {"collectives": [], "p2p": []}
    for n, group in groups.items():
        for nbytes in sizes:
            t = torch.zeros(max(n, nbytes // 4 // n * n))
            full, part = torch.empty(t.numel() * n), torch.empty(t.numel() // n)
            ops = {"all_reduce": lambda: dist.all_reduce(t, group=group),
                   "all_gather": lambda: dist.all_gather_into_tensor(full, t, group=group),
                   "reduce_scatter": lambda: dist.reduce_scatter_tensor(part, t, group=group)}
            for op, fn in ops.items():
                if group is None and n != world:  # this rank is in no pair: nothing to time
                    continue
                dist.barrier()
                sec = _time_together(lambda: (burst @ burst, fn()), 0.05 if quick else 0.15,
                                     group) - _time_together(lambda: burst @ burst, 0.02, group)
                out["collectives"].append({"op": op, "n": n, "bytes": t.numel() * 4 *
                                           (n if op == "all_gather" else 1), "seconds": sec})
    rank = dist.get_rank()
    for nbytes in sizes:
        t = torch.zeros(nbytes // 4)

        def ping():  # 0 <-> 1; the others wait at the barrier of the next measurement
            if rank == 0:
                dist.send(t, 1)
                dist.recv(t, 1)
            elif rank == 1:
                dist.recv(t, 0)
                dist.send(t, 0)
        dist.barrier()
        out["p2p"].append({"bytes": nbytes, "seconds": _time_together(ping, 0.05) / 2})
    return out


def bench_checkpoint(directory: str, saves: int = 7) -> dict:
    """The executor's own checkpoint save (executor/checkpoint.py timed_save: model and AdamW
    state through torch.distributed.checkpoint, progress and `latest` files, barriers) of
    PROBE cut to 1 and to 5 blocks, data-parallel over every rank, slowest rank per save: two
    tensor counts, so the fixed and the per-tensor cost the bandwidth misses (DCP's planning,
    metadata, serialisation per item) can be told apart."""
    return {"directory": directory, "probes": [
        _bench_save(PROBE.model_copy(update={"num_layers": n}), directory, saves)
        for n in (1, 5)]}


def _bench_save(spec: TransformerSpec, directory: str, saves: int) -> dict:
    """Timed saves of `spec` (see bench_checkpoint); rank 0's bytes and tensor count."""
    from executor.checkpoint import directory_bytes, saved_tensors, timed_save
    from executor.data import TokenSource
    from executor.memory import configure_process
    from executor.mesh import build_mesh
    from executor.parallelize import parallelize
    from executor.train import train_steps
    # The allocator settings of paraplan run's ranks (an mmap per allocation over 64 KiB): they
    # slow DCP's serialisation buffers, so a save is timed as the run pays it. Last benchmark.
    configure_process(torch.get_num_threads())
    world = dist.get_world_size()
    plan = Plan(dp=world, tp=1, pp=1, micro_batch_size=1, global_batch_size=world,
                precision="fp32")
    pm = parallelize(spec, plan, build_mesh(plan, "cpu"), torch.device("cpu"), seed=0)
    cfg = TrainConfig(steps=1, warmup=0)
    opt = make_optimizer(pm.parameters(), cfg)
    train_steps(pm, opt, TokenSource(spec.vocab_size, spec.seq_len, None, 0), cfg, 1, 1)
    root = Path(directory)
    seconds, nbytes, tensors = [], 0, 0
    for i in range(saves + 1):  # the first save (imports, plan caching) is not kept
        dist.barrier()
        path, sec = timed_save(pm, opt, i, [], root / f"probe_{i}")
        dt = torch.tensor([sec], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if i:
            seconds.append(float(dt))
        dist.barrier()
        if dist.get_rank() == 0:
            nbytes, tensors = directory_bytes(path), saved_tensors(path)
            shutil.rmtree(path.parent)
    return {"layers": spec.num_layers, "bytes": nbytes, "tensors": tensors, "seconds": seconds}


def _worker(rank: int, world: int, threads: int, quick: bool, init: str, out: str,
            checkpoint_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    say = (lambda m: print(f"calibrate: {m}", flush=True)) if rank == 0 else (lambda m: None)
    say("compute micro-benchmarks (all ranks at once) ...")
    raw = {"compute": bench_compute(quick)}
    dist.barrier()
    say("probe training steps ...")
    raw["probe"] = bench_probe(quick)
    dist.barrier()
    say("collectives and point-to-point (in a training-like loop) ...")
    raw.update(bench_comm(world, quick))
    say("checkpoint saves (torch.distributed.checkpoint) ...")
    raw["checkpoint"] = bench_checkpoint(checkpoint_dir)
    everyone: list = [None] * world
    dist.all_gather_object(everyone, raw)
    if rank == 0:
        Path(out).write_text(json.dumps({"ranks": everyone}))
    dist.destroy_process_group()


def measure(world: int, threads: int, quick: bool = False,
            checkpoint_dir: str | Path | None = None) -> dict:
    """Raw measurements of every rank, plus the machine's description; the checkpoint probe
    saves under `checkpoint_dir` (default: a temporary directory)."""
    d = tempfile.mkdtemp(prefix="paraplan-calibrate-")
    out = os.path.join(d, "raw.json")
    ckpt = tempfile.mkdtemp(prefix="paraplan-ckpt-", dir=checkpoint_dir)
    mp.set_forkserver_preload(["executor.calibrate"])  # see executor/local.py
    try:
        mp.start_processes(_worker, args=(world, threads, quick, os.path.join(d, "init"), out,
                                          ckpt), nprocs=world, start_method="forkserver")
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    raw = json.loads(Path(out).read_text())
    raw.update(world=world, threads=threads, quick=quick, backend="gloo",
               host=socket.gethostname(), cpu=platform.processor() or platform.machine(),
               cores=os.cpu_count(), torch=torch.__version__, probe_spec=PROBE.model_dump(),
               date=datetime.date.today().isoformat(), memory_bytes=_ram_bytes())
    return raw


def _checkpoint_worker(rank: int, world: int, init: str, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    res = bench_checkpoint(directory)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def measure_checkpoint_saves(world: int, directory: str | Path) -> dict:
    """bench_checkpoint alone, in a fresh gloo world of `world` ranks (what calibrate runs)."""
    d = tempfile.mkdtemp(prefix="paraplan-ckpt-", dir=directory)
    out = os.path.join(d, "saves.json")
    mp.start_processes(_checkpoint_worker, args=(world, os.path.join(d, "init"), d, out),
                       nprocs=world, start_method="fork")
    res = json.loads(Path(out).read_text())
    shutil.rmtree(d, ignore_errors=True)
    return res


def measure_write_bandwidth(directory: str | Path, total_bytes: int = 256 * 2**20,
                            files: int = 4) -> dict:
    """Durable write bandwidth of the file system under `directory`: `files` files of
    total_bytes / files each, written and fsync'd one after another (as DCP's FileSystemWriter
    writes a rank's shard file and fsyncs it), best of two passes; the files are removed.
    Returns bytes, seconds and write_GBps (1e9 bytes/s)."""
    root = Path(tempfile.mkdtemp(prefix="paraplan-write-", dir=directory))
    chunk = os.urandom(4 * 2**20)  # incompressible, so compressing file systems cannot cheat
    per_file = max(len(chunk), total_bytes // files // len(chunk) * len(chunk))
    best = float("inf")
    try:
        for attempt in range(2):
            t0 = time.perf_counter()
            for i in range(files):
                with open(root / f"w{attempt}_{i}.bin", "wb") as f:
                    for _ in range(per_file // len(chunk)):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            best = min(best, time.perf_counter() - t0)
            for i in range(files):
                (root / f"w{attempt}_{i}.bin").unlink()
    finally:
        for f in root.glob("*"):
            f.unlink()
        root.rmdir()
    written = per_file * files
    return {"directory": str(Path(directory).resolve()), "bytes": written, "seconds": best,
            "write_GBps": written / best / 1e9}


def _ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 * 2**30
