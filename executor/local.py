"""Many plans in one forked gloo world on this machine, paying process start-up once: used by the
equivalence tests, the executor benchmark and local validation. Each rank trains each plan with
the executor's own code (the same as `paraplan run`, minus torchrun); rank 0 returns, per plan,
the losses, slowest-rank step times, per-rank memory, every rank's process groups and, on
request, the whole final parameters."""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.data import TokenSource
from executor.mesh import build_mesh
from executor.parallelize import parallelize
from executor.train import (TrainConfig, gather_params, make_optimizer, memory_step,
                            train_steps)
from planner.plan import Plan
from planner.transformer import TransformerSpec


def _one(spec: TransformerSpec, plan: Plan, cfg: TrainConfig, want_params: bool) -> dict:
    pm_mesh = build_mesh(plan, "cpu")
    model = parallelize(spec, plan, pm_mesh, torch.device("cpu"), seed=cfg.seed)
    opt = make_optimizer(model.parameters(), cfg)
    source = TokenSource(spec.vocab_size, spec.seq_len, cfg.data, cfg.seed)
    losses, times, stats = train_steps(model, opt, source, cfg, 1, cfg.steps,
                                       measure_at=memory_step(1, cfg.steps, cfg.warmup))
    mem = {"params_bytes": stats.extra["params_bytes"], "grads_bytes": stats.grads_bytes,
           "optimizer_bytes": stats.extra["optimizer_bytes"],
           "activations_bytes": stats.meter_peak}
    world = dist.get_world_size()
    everyone: list = [None] * world
    dist.all_gather_object(everyone, (pm_mesh.group_ranks(), times, mem))
    out = {"losses": losses, "groups": [g for g, _, _ in everyone],
           "step_times_s": [max(t[i] for _, t, _ in everyone) for i in range(len(times))],
           "memory": [m for _, _, m in everyone]}
    if want_params:
        out["params"] = {n: t.tolist() for n, t in gather_params(model).items()}
    return out


def _worker(rank: int, world: int, jobs: list, cfg: dict, want_params: bool, threads: int,
            init: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    results = {}
    for key, spec_dict, plan_dict in jobs:
        res = _one(TransformerSpec(**spec_dict), Plan(**plan_dict), TrainConfig(**cfg),
                   want_params)
        if rank == 0:
            results[key] = res
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def run_plans(world: int, jobs: list[tuple[str, TransformerSpec, Plan]], cfg: TrainConfig,
              want_params: bool = False, threads: int = 1) -> dict[str, dict]:
    """jobs: (key, spec, plan) with plan.world_size == world; results by key."""
    bad = [k for k, _, p in jobs if p.world_size != world]
    if bad:
        raise ValueError(f"plans {bad} do not have world size {world}")
    d = tempfile.mkdtemp(prefix="paraplan-local-")
    out = os.path.join(d, "results.json")
    payload = [(k, s.model_dump(), p.to_json_dict()) for k, s, p in jobs]
    # forkserver, not fork: forking this (threaded) process can leave a child's allocator in a
    # corrupt state ("malloc(): unaligned tcache chunk", seen after ~100 launches); the fork
    # server is single-threaded and has torch imported once.
    mp.set_forkserver_preload(["executor.local"])
    mp.start_processes(_worker, args=(world, payload, cfg.__dict__, want_params, threads,
                                      os.path.join(d, "init"), out),
                       nprocs=world, start_method="forkserver")
    return json.loads(Path(out).read_text())
