"""Executor overhead and step times on this machine (CPU, gloo).

1. Data parallel, 2 processes: the executor's step (plan dp=2, zero 0: DDP underneath, plus
   the loss all-reduce and the clipping helper) against a plain hand-written DDP loop with the
   same model, data, micro-batches, AdamW and clipping, alternated in the same world.
   Target: executor throughput >= 0.95 x DDP.
2. Step time (median of the timed steps) for one plan of every shape the search emits for the
   tiny model on 2 and 4 processes (4 processes oversubscribe 2 cores).

Run: python benchmarks/executor_overhead.py [--rounds 5] [--steps 6] [--model tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from executor.data import TokenSource, local_batch
from executor.local import run_plans
from executor.mesh import build_mesh
from executor.parallelize import build_model, loss_fn, parallelize
from executor.shapes import emitted_shapes, one_node
from executor.train import TrainConfig, make_optimizer, train_steps
from planner.plan import Plan
from planner.transformer import load_transformer


def _plain_ddp_steps(spec, plan, cfg, steps, source) -> list[float]:
    """The baseline: what a user would write by hand with DDP."""
    model = DistributedDataParallel(build_model(spec, plan, cfg.seed))
    opt = make_optimizer(model.parameters(), cfg)
    m, times = plan.num_micro_batches, []
    for step in range(1, steps + 1):
        x, y = local_batch(source.batch(step, plan.global_batch_size), plan, dist.get_rank(), 0)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for i, (xb, yb) in enumerate(zip(x.chunk(m), y.chunk(m))):
            with model.no_sync() if i < m - 1 else contextlib.nullcontext():
                (loss_fn(model(xb), yb) / m).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def _ddp_worker(rank, world, spec_name, plan_dict, steps, rounds, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    spec, plan, cfg = load_transformer(spec_name), Plan(**plan_dict), TrainConfig(steps=steps)
    source = TokenSource(spec.vocab_size, spec.seq_len)
    plain, ours = [], []
    for _ in range(rounds):  # alternate, so drift in machine load hits both alike
        plain += _plain_ddp_steps(spec, plan, cfg, steps, source)[1:]  # drop the first step
        pm = parallelize(spec, plan, build_mesh(plan, "cpu"), torch.device("cpu"))
        opt = make_optimizer(pm.parameters(), cfg)
        ours += train_steps(pm, opt, source, cfg, 1, steps)[1][1:]
    both = [None] * world
    dist.all_gather_object(both, (plain, ours))
    if rank == 0:
        slow = [[max(v[k][i] for v in both) for i in range(len(both[0][k]))] for k in (0, 1)]
        with open(out, "w") as f:
            f.write(f"{statistics.median(slow[0])} {statistics.median(slow[1])}")
    dist.destroy_process_group()


def ddp_comparison(spec_name: str, steps: int, rounds: int) -> tuple[float, float]:
    plan = Plan(dp=2, tp=1, pp=1, micro_batch_size=2, global_batch_size=8, precision="fp32")
    d = tempfile.mkdtemp()
    mp.start_processes(_ddp_worker, args=(2, spec_name, plan.to_json_dict(), steps, rounds,
                                          os.path.join(d, "init"), os.path.join(d, "out")),
                       nprocs=2, start_method="fork")
    plain, ours = map(float, open(os.path.join(d, "out")).read().split())
    return plain, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, 1 thread per rank")
    plain, ours = ddp_comparison(args.model, args.steps, args.rounds)
    print(f"\n1. {args.model}, dp=2, micro-batch 2, global batch 8: plain DDP "
          f"{plain * 1e3:.1f} ms/step, executor {ours * 1e3:.1f} ms/step -> executor "
          f"throughput {plain / ours:.3f} x DDP (target >= 0.95)")
    spec = load_transformer(args.model)
    print(f"\n2. step time per plan shape ({args.steps} steps, first 2 untimed, median):")
    for world in (2, 4):
        plans = emitted_shapes(spec, one_node(world), 8)
        jobs = [(f"{p.dp}.{p.tp}.{p.pp}.{p.cp} mb{p.micro_batch_size} {p.schedule} "
                 f"v{p.virtual_pipeline_stages} z{p.zero_stage} {p.recompute}"
                 f"{' sp' if p.sequence_parallel else ''}", spec, p) for p in plans.values()]
        res = run_plans(world, jobs, TrainConfig(steps=args.steps, warmup=2))
        print(f"   {world} processes ({len(jobs)} plans; dp.tp.pp.cp):")
        for key, r in sorted(res.items(), key=lambda kv: statistics.median(
                kv[1]["step_times_s"][2:])):
            print(f"     {statistics.median(r['step_times_s'][2:]) * 1e3:8.1f} ms  {key}")


if __name__ == "__main__":
    main()
