"""One rank of `paraplan run`, started by torchrun (executor/launch.py). Reads its job from a
JSON file, trains, and rank 0 writes the Measurement to the job's result path. Any exception is
written to failure_rank<N>.json first, so the launcher can name the rank and the error."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from executor import checkpoint
from executor.data import TokenSource
from executor.memory import configure_process, threads
from executor.mesh import build_mesh
from executor.parallelize import parallelize
from executor.train import TrainConfig, make_plan_optimizer, timed_steps, train_plan
from planner.measurement import Environment, Measurement, RankMemory
from planner.plan import Plan
from planner.schema import write_json_atomic
from planner.transformer import TransformerSpec


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _setup(job: dict) -> tuple[torch.device, str]:
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else \
        torch.device("cpu")
    if cuda:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if local > torch.cuda.device_count():
            raise RuntimeError(f"this node runs {local} ranks, it has "
                               f"{torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(device)
    configure_process(threads())  # launch.py put the thread count in OMP_NUM_THREADS
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=job["timeout_s"]))
    return device, backend


def node_rank() -> int:
    """This node's number, as `paraplan run --node-rank` gave it (launch.py sets it)."""
    return int(os.environ.get("PARAPLAN_NODE_RANK", 0))


def assign_rank() -> None:
    """Rank = node_rank x ranks per node + local rank, overriding torchrun's RANK: c10d numbers
    nodes by sorted host and pid, not --node-rank. Safe because every worker is only a client
    of the agent's store (TORCHELASTIC_USE_AGENT_STORE), and torchrun's own bookkeeping keeps
    its numbering. With one node this is torchrun's RANK."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    os.environ["RANK"] = str(node_rank() * per_node + int(os.environ.get("LOCAL_RANK", 0)))


def run(job: dict) -> None:
    started = _now()
    device, backend = _setup(job)
    spec = TransformerSpec.model_validate(job["transformer"])
    plan = Plan.model_validate(job["plan"])
    cfg = TrainConfig(steps=job["steps"], warmup=job["warmup"], seed=job["seed"],
                      data=job.get("data"))
    pm = parallelize(spec, plan, build_mesh(plan, device.type), device, seed=cfg.seed)
    opt = make_plan_optimizer(pm, cfg)
    source = TokenSource(spec.vocab_size, spec.seq_len, cfg.data, cfg.seed)
    history: list[float] = []
    first = 1
    if job.get("resume"):
        done, history = checkpoint.load(pm, opt, job["resume"])
        first = done + 1
    last, rank = first + cfg.steps - 1, dist.get_rank()
    stalls: list[float] = []  # this rank's seconds in each checkpoint save
    saved: list[Path] = []

    def on_step(step: int, loss: float, seconds: float) -> None:
        history.append(loss)
        if rank == 0:
            print(f"step {step}/{last}  loss {loss:.5f}  {seconds:.3f} s", flush=True)
        if job.get("save_every") and step % job["save_every"] == 0:
            path, seconds = checkpoint.timed_save(pm, opt, step, history, job["checkpoint_dir"])
            stalls.append(seconds)
            saved.append(path)
    _, times, mem = train_plan(pm, opt, source, cfg, first, on_step)
    gathered: list = [None] * dist.get_world_size()
    me = RankMemory(rank=rank, node_rank=node_rank(), host=socket.gethostname(), **mem)
    dist.all_gather_object(gathered, (me.model_dump(), times, stalls))
    if rank == 0:
        slowest = timed_steps([ts for _, ts, _ in gathered], cfg.warmup)
        # a save ends for everyone when its slowest rank is done
        stall = [max(s[i] for _, _, s in gathered) for i in range(len(stalls))] or None
        step_time = Measurement.median(slowest)
        m = Measurement(
            plan=plan, transformer=spec, world_size=dist.get_world_size(),
            warmup_steps=cfg.warmup, first_step=1,
            losses=history, step_times_s=slowest, step_time_s=step_time,
            tokens_per_s=plan.global_batch_size * spec.seq_len / step_time,
            memory=[RankMemory(**m) for m, _, _ in gathered], data=source.name,
            checkpoint_stall_s=stall,
            skipped_steps=len(pm.scaler.skipped_steps) if pm.scaler else None,
            checkpoint_bytes=checkpoint.directory_bytes(saved[-1]) if saved else None,
            checkpoint_tensors=checkpoint.saved_tensors(saved[-1]) if saved else None,
            environment=_environment(backend, device), started_at=started, finished_at=_now())
        write_json_atomic(job["result_path"], m.model_dump())
    dist.barrier()  # every rank is past its last collective and the result is written


def _environment(backend: str, device: torch.device) -> Environment:
    names = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
             if device.type == "cuda" else [platform.processor() or platform.machine()])
    return Environment(torch_version=torch.__version__, python_version=platform.python_version(),
                       backend=backend, device=device.type, device_names=names,
                       threads_per_rank=threads(), hostname=socket.gethostname(),
                       platform=platform.platform())


@record
def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    assign_rank()
    try:
        run(job)
    except BaseException as err:
        rank = int(os.environ.get("RANK", -1))
        write_json_atomic(Path(job["work_dir"]) / f"failure_rank{rank}.json", {
            "rank": rank, "error": f"{type(err).__name__}: {err}", "time": time.time(),
            "traceback": traceback.format_exc()})
        raise
    # Leave without tearing down the process group and the interpreter: in CI a finished
    # FSDP2 + gloo rank was seen to abort (SIGABRT) in that teardown, after the result was
    # written, which torchrun then reports as a failed run. Nothing is left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
