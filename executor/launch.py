"""`paraplan run`: start one process per rank with torchrun, stream rank 0's progress, and write
the Measurement atomically. If any rank fails, torchrun stops the others at once; we report the
first failing rank and its error, and no result file is written. The wall clock bounds the whole
run (--max-seconds), silent hangs included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from planner.measurement import Measurement
from planner.plan import Plan
from planner.schema import InputError, write_json_atomic
from planner.transformer import TransformerSpec


# Allocations of 64 KiB and more go through mmap, so memory freed between steps leaves the
# resident set and VmHWM tracks what a step holds (DESIGN.md, "Peak memory on CPU"). Here, not
# in executor/memory.py, so the launcher sets it without importing torch.
MMAP_THRESHOLD_BYTES = 65536


class RunError(RuntimeError):
    """A run that did not finish: names the rank and the error where known."""


@dataclass(frozen=True)
class Nodes:
    """Where this launcher stands in a multi-node run: `nnodes` torchruns meet at a c10d
    rendezvous `endpoint`, each starting `nproc_per_node` ranks."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    endpoint: str
    rdzv_id: str = "paraplan"
    timeout_s: int = 300


def parse_endpoint(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT), port 1-65535; InputError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or any(c.isspace() for c in host) or not port.isdigit() \
            or not 1 <= int(port) <= 65535:
        raise InputError(f"--rdzv-endpoint {text!r}: expected HOST:PORT with a port from 1 to "
                         "65535, e.g. 10.0.0.1:29500")
    return host, int(port)


def check_nodes(plan: Plan, nodes: Nodes) -> None:
    """The plan's world must be exactly nnodes x nproc_per_node, and this node one of them."""
    parse_endpoint(nodes.endpoint)
    if nodes.nnodes < 1 or nodes.nproc_per_node < 1:
        raise InputError("--nnodes and --nproc-per-node must be >= 1")
    if plan.world_size != nodes.nnodes * nodes.nproc_per_node:
        raise InputError(f"plan has {plan.world_size} ranks, not --nnodes {nodes.nnodes} x "
                         f"--nproc-per-node {nodes.nproc_per_node}")
    if not 0 <= nodes.node_rank < nodes.nnodes:
        raise InputError(f"--node-rank {nodes.node_rank} is not in 0..{nodes.nnodes - 1}")
    if nodes.timeout_s < 1:
        raise InputError(f"--rdzv-timeout must be >= 1, got {nodes.timeout_s}")


def groups_spanning_nodes(plan: Plan, dim: str, per_node: int) -> int:
    """How many `dim` groups hold ranks of more than one node, where ranks r..r+K-1 share a
    node (K = per_node) and ranks follow Plan.mesh_dims (as executor/mesh.py lays them out)."""
    dims = plan.mesh_dims()
    groups: dict[tuple, set[int]] = {}
    for rank in range(plan.world_size):
        coords, rest = {}, rank
        for name, size in reversed(dims):  # innermost dimension varies fastest
            coords[name], rest = rest % size, rest // size
        key = tuple(v for k, v in sorted(coords.items()) if k != dim)
        groups.setdefault(key, set()).add(rank // per_node)
    return sum(len(n) > 1 for n in groups.values())


def torchrun_args(nodes: Nodes | None, world: int) -> list[str]:
    """One machine: --standalone. Several: a c10d rendezvous, node 0 hosting its store (so the
    store lives where rank 0 runs, and two "nodes" on one host do not race to host it); the
    join and store read timeouts both bound how long a node waits for the others."""
    if nodes is None:
        return ["--standalone", f"--nproc-per-node={world}"]
    conf = (f"join_timeout={nodes.timeout_s},read_timeout={nodes.timeout_s},"
            f"is_host={int(nodes.node_rank == 0)}")
    return [f"--nnodes={nodes.nnodes}", f"--nproc-per-node={nodes.nproc_per_node}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={nodes.endpoint}",
            f"--rdzv-id={nodes.rdzv_id}", f"--rdzv-conf={conf}",
            f"--node-rank={nodes.node_rank}"]


def rendezvous_failure(log_text: str, nodes: Nodes) -> str | None:
    """Name what torchrun's rendezvous error means; None if the log shows none. torchrun
    reports no participants, so the missing node is named exactly for two nodes; with more, the
    node that never joined is the one that reports nothing."""
    where = f"rendezvous at {nodes.endpoint}"
    if "RendezvousTimeoutError" in log_text:
        others = [n for n in range(nodes.nnodes) if n != nodes.node_rank]
        if nodes.nnodes == 2:
            missing = f"1 of 2 nodes joined (node_rank {others[0]} never joined)"
        else:
            missing = (f"fewer than {nodes.nnodes} nodes joined (this is node_rank "
                       f"{nodes.node_rank}; one of node_ranks {others} never joined)")
        return f"{where} timed out after {nodes.timeout_s} s: {missing}"
    if "RendezvousConnectionError" in log_text or "RendezvousStoreInfo" in log_text:
        return (f"{where}: could not reach its store within {nodes.timeout_s} s: node_rank 0, "
                "which hosts it, never joined (not started, or the port is unreachable)")
    if "RendezvousClosedError" in log_text:
        return f"{where} was closed by another node (it failed or was stopped)"
    return None


def launch(plan: Plan, spec: TransformerSpec, out: str | Path | None, *, steps: int = 5,
           warmup: int = 2, seed: int = 0, data: str | None = None, save_every: int = 0,
           checkpoint_dir: str | None = None, resume: str | None = None, timeout_s: int = 120,
           max_seconds: int = 1800, threads: int | None = None,
           echo: Callable[[str], None] | None = print,
           extra_env: dict[str, str] | None = None,
           nodes: Nodes | None = None) -> Measurement | None:
    """Run `plan` for `steps` steps; return (and write to `out`) its Measurement. With `nodes`,
    this is one node of a multi-node run; only node 0 (rank 0's node) gets the Measurement, the
    others return None."""
    world = plan.world_size
    local = nodes.nproc_per_node if nodes else world
    work = Path(tempfile.mkdtemp(prefix="paraplan-run-"))
    job = {"plan": plan.to_json_dict(), "transformer": spec.model_dump(), "steps": steps,
           "warmup": warmup, "seed": seed, "data": data, "save_every": save_every,
           "checkpoint_dir": checkpoint_dir, "resume": resume, "timeout_s": timeout_s,
           "work_dir": str(work), "result_path": str(work / "measurement.json")}
    (work / "job.json").write_text(json.dumps(job))
    threads = threads or max(1, (os.cpu_count() or 1) // local)
    # Each rank sets its threads and allocator in executor.memory.configure_process, as the
    # forked harness's ranks do (executor/local.py); the environment makes the same mmap
    # threshold hold from a rank's first allocation on, which only a fresh process can have.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES), **(extra_env or {})}
    # c10d numbers nodes in its own order (sorted host/pid); the worker takes its rank from
    # --node-rank instead, so ranks r..r+K-1 are node r/K's and rank 0 runs here on node 0.
    env["PARAPLAN_NODE_RANK"] = str(nodes.node_rank if nodes else 0)
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(nodes, world),
           "--monitor-interval=0.2", "-m", "executor.worker", str(work / "job.json")]
    log = work / "log.txt"
    code = run_bounded(cmd, env, log, max_seconds, echo)
    if code != 0:
        # a rank's own error comes first: a failed node also closes the rendezvous for others
        ranks_failed = any(work.glob("failure_rank*.json"))
        rdzv = rendezvous_failure(log.read_text(), nodes) \
            if nodes and code != -1 and not ranks_failed else None
        raise RunError(f"{rdzv} (log: {log})" if rdzv else _failure(work, log, code, max_seconds))
    if nodes and nodes.node_rank != 0:
        shutil.rmtree(work, ignore_errors=True)
        return None
    result = Measurement.model_validate_json((work / "measurement.json").read_text())
    if out:
        write_json_atomic(out, result.model_dump())
    shutil.rmtree(work, ignore_errors=True)
    return result


def run_bounded(cmd: list[str], env: dict, log: Path, max_seconds: int,
         echo: Callable[[str], None] | None) -> int:
    """Run torchrun in its own process group, -1 if it is still running after max_seconds. A
    thread copies its output to the log (echoing rank 0's step lines), so the clock bounds the
    run even when it prints nothing."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        reader = threading.Thread(target=_copy, args=(proc.stdout, f, echo), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max_seconds)
        except subprocess.TimeoutExpired:
            _stop(proc)
            code = -1
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            reader.join(timeout=10)
    return code


def _copy(stream, log, echo: Callable[[str], None] | None) -> None:
    for line in stream:
        log.write(line)
        if echo and line.startswith("step "):
            echo(line.rstrip())


def _stop(proc: subprocess.Popen) -> None:
    """End torchrun and every rank (its process group): politely, then for sure."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _failure(work: Path, log: Path, code: int, max_seconds: int) -> str:
    if code == -1:
        return f"run stopped after --max-seconds {max_seconds} s without finishing (log: {log})"
    fails = sorted((json.loads(p.read_text()) for p in work.glob("failure_rank*.json")),
                   key=lambda f: f["time"])
    if fails:
        first = fails[0]
        others = [f["rank"] for f in fails[1:]]
        also = f" (then ranks {others} stopped too)" if others else ""
        return f"rank {first['rank']} failed: {first['error']}{also} (log: {log})"
    tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
    return f"torchrun exited with status {code}; last lines of {log}:\n{tail}"


# More CPU ranks than this many per core measure the scheduler, not the plan (DESIGN.md: 2 to 8
# processes on 2 cores behave); a GPU search's plan (hundreds of ranks) must not fork them all.
RANKS_PER_CORE = 4
MIN_RANK_LIMIT = 8


def cpu_rank_limit(cores: int) -> int:
    """The most CPU ranks `paraplan run` starts without --allow-oversubscribe."""
    return max(MIN_RANK_LIMIT, RANKS_PER_CORE * cores)


def visible_gpus() -> int:
    """GPUs torch will give the ranks; 0 without importing torch where no GPU driver is."""
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()):
        return 0
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_fp8(plan: Plan, gpus: int) -> None:
    """fp8 runs torchao's float8 training (fp8 GEMMs: a GPU that has them), tp 1 only."""
    import importlib.util
    if not gpus:
        raise InputError("precision fp8 needs a GPU and torchao (torchao.float8); this machine "
                         "has no GPU: use bf16 or fp16")
    if importlib.util.find_spec("torchao") is None:
        raise InputError("precision fp8 needs torchao (pip install torchao); use bf16 or fp16")
    if plan.tp > 1:
        raise InputError("precision fp8 with tensor parallel is not wired (torchao's float8 "
                         "parallel styles); use tp 1")


def check_runnable(plan: Plan, allow_oversubscribe: bool = False) -> None:
    """What the executor cannot run, before starting any process: precisions it lacks, more
    ranks than GPUs (the worker checks again), and more CPU ranks than the cores can serve."""
    world, shape = plan.world_size, f"dp {plan.dp} x tp {plan.tp} x pp {plan.pp} x cp {plan.cp}"
    gpus = visible_gpus()
    if plan.precision == "fp8":  # fp16 runs everywhere (autocast + loss scaling)
        _check_fp8(plan, gpus)
    if gpus and world > gpus:
        raise InputError(f"plan needs {world} GPUs ({shape}), this machine has {gpus}; "
                         "multi-node runs are not supported")
    cores = os.cpu_count() or 1
    if not gpus and world > cpu_rank_limit(cores) and not allow_oversubscribe:
        raise InputError(f"plan needs {world} processes ({shape}); this CPU machine runs at most "
                         f"{cpu_rank_limit(cores)} (max({MIN_RANK_LIMIT}, {RANKS_PER_CORE} per "
                         f"core x {cores} cores)); pass --allow-oversubscribe to start them anyway")
