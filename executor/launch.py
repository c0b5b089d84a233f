"""`paraplan run`: start one process per rank with torchrun, stream rank 0's progress, and write
the Measurement atomically. If any rank fails, torchrun stops the others at once; we report the
first failing rank and its error, and no result file is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from planner.measurement import Measurement
from planner.plan import Plan
from planner.schema import InputError, write_json_atomic
from planner.transformer import TransformerSpec


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
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           # Small allocations through mmap so freed memory leaves the RSS (peak RSS is read).
           "MALLOC_MMAP_THRESHOLD_": "65536", **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", "--monitor-interval=0.2", "-m", "executor.worker",
           str(work / "job.json")]
    log = work / "log.txt"
    code = _run(cmd, env, log, max_seconds, echo)
    if code != 0:
        raise RunError(_failure(work, log, code, max_seconds))
    result = Measurement.model_validate_json((work / "measurement.json").read_text())
    if out:
        write_json_atomic(out, result.model_dump())
    shutil.rmtree(work, ignore_errors=True)
    return result


def _run(cmd: list[str], env: dict, log: Path, max_seconds: int,
         echo: Callable[[str], None] | None) -> int:
    """Run torchrun in its own process group, echoing rank 0's step lines; -1 on time-out."""
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            for line in proc.stdout:
                f.write(line)
                if echo and line.startswith("step "):
                    echo(line.rstrip())
                if time.monotonic() - start > max_seconds:
                    raise TimeoutError
            return proc.wait()
        except (TimeoutError, KeyboardInterrupt) as err:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            if isinstance(err, KeyboardInterrupt):
                raise
            return -1


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


def check_runnable(plan: Plan) -> None:
    """What the executor cannot run, before starting any process (the GPU count is checked by
    the ranks themselves, so this process need not import torch)."""
    if plan.precision in ("fp16", "fp8"):
        raise InputError(f"precision {plan.precision} is not implemented in the executor "
                         "(fp16 needs loss scaling, fp8 Transformer Engine); use bf16 or fp32")
