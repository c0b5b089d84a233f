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


def launch(plan: Plan, spec: TransformerSpec, out: str | Path | None, *, steps: int = 5,
           warmup: int = 2, seed: int = 0, data: str | None = None, save_every: int = 0,
           checkpoint_dir: str | None = None, resume: str | None = None, timeout_s: int = 120,
           max_seconds: int = 1800, threads: int | None = None,
           echo: Callable[[str], None] | None = print,
           extra_env: dict[str, str] | None = None) -> Measurement:
    """Run `plan` for `steps` steps; return (and write to `out`) its Measurement."""
    world = plan.world_size
    work = Path(tempfile.mkdtemp(prefix="paraplan-run-"))
    job = {"plan": plan.to_json_dict(), "transformer": spec.model_dump(), "steps": steps,
           "warmup": warmup, "seed": seed, "data": data, "save_every": save_every,
           "checkpoint_dir": checkpoint_dir, "resume": resume, "timeout_s": timeout_s,
           "work_dir": str(work), "result_path": str(work / "measurement.json")}
    (work / "job.json").write_text(json.dumps(job))
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    # Each rank sets its threads and allocator in executor.memory.configure_process, as the
    # forked harness's ranks do (executor/local.py); the environment makes the same mmap
    # threshold hold from a rank's first allocation on, which only a fresh process can have.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES), **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", "--monitor-interval=0.2", "-m", "executor.worker",
           str(work / "job.json")]
    log = work / "log.txt"
    code = run_bounded(cmd, env, log, max_seconds, echo)
    if code != 0:
        raise RunError(_failure(work, log, code, max_seconds))
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


def check_runnable(plan: Plan, allow_oversubscribe: bool = False) -> None:
    """What the executor cannot run, before starting any process: precisions it lacks, more
    ranks than GPUs (the worker checks again), and more CPU ranks than the cores can serve."""
    if plan.precision in ("fp16", "fp8"):
        raise InputError(f"precision {plan.precision} is not implemented in the executor "
                         "(fp16 needs loss scaling, fp8 Transformer Engine); use bf16 or fp32")
    world, shape = plan.world_size, f"dp {plan.dp} x tp {plan.tp} x pp {plan.pp} x cp {plan.cp}"
    gpus = visible_gpus()
    if gpus and world > gpus:
        raise InputError(f"plan needs {world} GPUs ({shape}), this machine has {gpus}; "
                         "multi-node runs are not supported")
    cores = os.cpu_count() or 1
    if not gpus and world > cpu_rank_limit(cores) and not allow_oversubscribe:
        raise InputError(f"plan needs {world} processes ({shape}); this CPU machine runs at most "
                         f"{cpu_rank_limit(cores)} (max({MIN_RANK_LIMIT}, {RANKS_PER_CORE} per "
                         f"core x {cores} cores)); pass --allow-oversubscribe to start them anyway")
