"""Many plans in one forked gloo world on this machine, paying process start-up once: used by the
equivalence tests, the executor benchmark, calibration and local validation. Each rank trains
each plan through executor.train.train_plan, the loop `paraplan run` times too, after the same
process set-up (executor.memory.configure_process) and with the caller's environment, so the
local figures are the ones a user's run would give. Rank 0 writes each plan's result as it
finishes: the losses, every step's slowest-rank time (warm-up included), per-rank memory, every
rank's process groups and, on request, the whole final parameters. A plan that fails ends its
world; with keep_going the plans after it run in a new one and the failure is recorded."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.data import TokenSource
from executor.memory import configure_process
from executor.mesh import build_mesh
from executor.parallelize import parallelize
from executor.train import TrainConfig, gather_params, make_plan_optimizer, timed_steps, train_plan
from planner.plan import Plan
from planner.schema import write_json_atomic
from planner.transformer import TransformerSpec


class PlanFailed(RuntimeError):
    """A plan whose world stopped: names the plan's key, the rank and the error where known."""


def _one(spec: TransformerSpec, plan: Plan, cfg: TrainConfig, want_params: bool) -> dict:
    pm_mesh = build_mesh(plan, "cpu")
    model = parallelize(spec, plan, pm_mesh, torch.device("cpu"), seed=cfg.seed)
    opt = make_plan_optimizer(model, cfg)
    source = TokenSource(spec.vocab_size, spec.seq_len, cfg.data, cfg.seed)
    losses, times, mem = train_plan(model, opt, source, cfg)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (pm_mesh.group_ranks(), times, mem))
    out = {"losses": losses, "groups": [g for g, _, _ in everyone],
           "step_times_s": timed_steps([t for _, t, _ in everyone], 0),
           "memory": [m for _, _, m in everyone]}
    if want_params:
        out["params"] = {n: t.tolist() for n, t in gather_params(model).items()}
    return out


def _worker(rank: int, world: int, jobs: list, cfg: dict, want_params: bool, threads: int,
            timeout_s: int, env: dict, work: str) -> None:
    # The caller's environment at call time (the fork server holds the one it started with).
    os.environ.update(env)
    configure_process(threads)
    dist.init_process_group("gloo", init_method=f"file://{work}/init", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    for i, (key, spec_dict, plan_dict) in enumerate(jobs):
        os.environ["PARAPLAN_PLAN_KEY"] = key  # names the job to the test hooks (train.py)
        try:
            res = _one(TransformerSpec(**spec_dict), Plan(**plan_dict), TrainConfig(**cfg),
                       want_params)
        except BaseException as err:
            write_json_atomic(Path(work) / f"failure_rank{rank}.json", {
                "key": key, "rank": rank, "error": f"{type(err).__name__}: {err}",
                "time": time.time()})
            raise
        if rank == 0:
            write_json_atomic(Path(work) / f"done{i}.json", res)
    dist.destroy_process_group()


def _failure(work: Path, key: str, err: Exception) -> str:
    """The first rank's error in plan `key`, or how a process ended (a signal, say)."""
    fails = sorted((json.loads(p.read_text()) for p in work.glob("failure_rank*.json")),
                   key=lambda f: f["time"])
    fails = [f for f in fails if f["key"] == key]
    if fails:
        return f"rank {fails[0]['rank']} failed: {fails[0]['error']}"
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


def _world(world: int, jobs: list, cfg: TrainConfig, want_params: bool, threads: int,
           timeout_s: int, env: dict,
           on_done: Callable[[int, dict], None]) -> tuple[int, str | None]:
    """One world over `jobs`, reporting each result as it lands: how many finished, and the
    error of the one after them if it failed."""
    work = Path(tempfile.mkdtemp(prefix="paraplan-local-"))
    payload = [(k, s.model_dump(), p.to_json_dict()) for k, s, p in jobs]
    ctx = mp.start_processes(_worker, args=(world, payload, cfg.__dict__, want_params, threads,
                                            timeout_s, env, str(work)),
                             nprocs=world, start_method="forkserver", join=False)
    seen = 0

    def collect() -> None:
        nonlocal seen
        while (work / f"done{seen}.json").is_file():
            on_done(seen, json.loads((work / f"done{seen}.json").read_text()))
            seen += 1
    try:
        while not ctx.join(timeout=0.2):
            collect()
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        collect()
        return seen, _failure(work, jobs[seen][0], err)
    else:
        collect()
        return seen, None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_plans(world: int, jobs: list[tuple[str, TransformerSpec, Plan]], cfg: TrainConfig,
              want_params: bool = False, threads: int = 1, *, timeout_s: int = 120,
              keep_going: bool = False,
              on_result: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """jobs: (key, spec, plan) with plan.world_size == world; results by key, each also passed
    to `on_result` as it finishes. A failing plan raises PlanFailed, or with `keep_going` is
    recorded as {"error": ...} and the rest run on. `timeout_s`: how long a collective may wait
    (as `paraplan run --timeout`)."""
    bad = [k for k, _, p in jobs if p.world_size != world]
    if bad:
        raise ValueError(f"plans {bad} do not have world size {world}")
    # forkserver, not fork: forking this (threaded) process can leave a child's allocator in a
    # corrupt state ("malloc(): unaligned tcache chunk", seen after ~100 launches); the fork
    # server is single-threaded and has torch imported once.
    mp.set_forkserver_preload(["executor.local"])
    results: dict[str, dict] = {}
    todo = list(jobs)

    def done(i: int, res: dict) -> None:  # i indexes the jobs of the current world
        results[todo[i][0]] = res
        if on_result:
            on_result(todo[i][0], res)
    while todo:
        n, error = _world(world, todo, cfg, want_params, threads, timeout_s, dict(os.environ),
                          done)
        if error is None:
            break
        if not keep_going:
            raise PlanFailed(f"plan {todo[n][0]}: {error}")
        done(n, {"error": error})
        todo = todo[n + 1:]
    return results
