"""The timed step loop of one rank, and the single-process reference the tests compare with.

A step: zero grads; forward/backward over the rank's micro-batches (through the pipeline
schedule when pp > 1); gradient sync where the data-parallel mode needs it by hand; tied
embedding sync across stages; global-norm clipping; AdamW. The reported loss is the mean over the
whole global batch, identical on every rank. Mixture-of-experts models add the load-balancing
loss (executor/moe.py), `moe_aux_loss_coeff` times the sum over MoE layers, to the loss that is
trained and reported; their expert gradients reduce over the edp group
(executor/parallel/expert.py). Dense models run exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from executor.data import TokenSource, local_batch
from executor.memory import (SavedTensorMeter, optimizer_bytes, peak_rss_bytes, reset_peak_rss,
                             tensor_bytes)
from executor.moe import AUX_LOSS_COEFF, moe_layers, start_aux, total_aux
from executor.parallel import data as dpar
from executor.parallel.expert import clip_grad_norm_moe_, reduce_expert_grads
from executor.parallel.grad_norm import clip_grad_norm_
from executor.parallel.ps import ParameterServerOptimizer
from executor.parallelize import ParallelModel, build_model, loss_fn
from executor.precision import autocast, maybe_inf_grad
from planner.plan import Plan
from planner.transformer import TransformerSpec


@dataclass
class TrainConfig:
    steps: int = 5
    warmup: int = 2
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    data: str | None = None
    moe_aux_loss_coeff: float = AUX_LOSS_COEFF
    """alpha of the MoE load-balancing loss (Switch Transformer's 1e-2); unused when dense."""


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    # foreach=False: one code path for plain tensors and DTensors of different meshes.
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                             foreach=False)


def make_plan_optimizer(pm: ParallelModel, cfg: TrainConfig):
    """The optimizer for this rank: AdamW, or the parameter server (executor/parallel/ps.py),
    which also does the gradient push, the clip and the weight pull in its `step`."""
    if pm.dp_mode != "ps":
        return make_optimizer(pm.parameters(), cfg)
    return ParameterServerOptimizer(pm.parameters(), pm.mesh.dp_cp_mesh.get_group(),
                                    pm.plan.ps_servers, cfg.max_grad_norm,
                                    lambda ps: make_optimizer(ps, cfg))


def _value(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class StepStats:
    grads_bytes: int = 0
    meter_peak: int = 0
    extra: dict = field(default_factory=dict)


def run_step(pm: ParallelModel, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             cfg: TrainConfig, stats: StepStats | None = None, step: int | None = None) -> float:
    """One optimizer step; returns the global-batch mean loss (unscaled under fp16). With
    `stats`, also counts saved activations and gradient bytes (Python hooks on every saved
    tensor: a step that measures memory is slower, so only the last step of a run does). fp16:
    an overflow on any rank skips the step on every rank, recorded as `step` in pm.scaler."""
    plan = pm.plan
    scale = pm.scaler.factor() if pm.scaler else 1.0
    pm.scaled_loss.factor = scale
    opt.zero_grad(set_to_none=True)
    # Balancing-loss gradient per micro-batch: alpha x loss scale, / m where micro-batch losses
    # are divided by m here (_accumulate) and over several pipeline passes (_PerStepMean); one
    # pipeline schedule per step divides the gradients itself.
    m = plan.num_micro_batches
    divided = pm.schedule is not None and plan.pipeline_passes == 1
    aux = start_aux(pm.moe, cfg.moe_aux_loss_coeff * scale / (1 if divided else m))
    ctx = loss_parallel() if plan.tp > 1 else contextlib.nullcontext()
    meter = SavedTensorMeter(pm.parameters() + pm.buffers()) if stats else \
        contextlib.nullcontext()
    with meter, ctx, autocast(plan, x.device):
        if pm.schedule is not None:
            loss = _pipeline_step(pm, x, y) / scale
        else:
            loss = _accumulate(pm, x, y, scale)
    if pm.dp_mode == "allreduce":
        dpar.all_reduce_grads(pm.dense_parameters(), pm.mesh.dp_cp_mesh.get_group())
    if pm.expert_sync:
        reduce_expert_grads(pm.experts, pm.mesh.expert_groups()["edp"], plan.dp * plan.cp)
    if aux is not None:  # this rank's share, averaged over ranks like the loss
        loss = loss + cfg.moe_aux_loss_coeff * aux.total(m * len(pm.moe)).to(loss) / m
    dpar.sum_grads(pm.tied)
    maybe_inf_grad(pm.parameters(), step)
    if stats:
        stats.meter_peak = max(stats.meter_peak, meter.peak)
        stats.grads_bytes = tensor_bytes(p.grad for p in pm.parameters())
    # The global-batch loss in one collective over all ranks, started now and awaited after the
    # optimizer step so it overlaps clipping and the update. Each rank holds the mean over its
    # share of the batch (pipeline stages other than the last hold 0; tensor-parallel ranks hold
    # the same value), so the world sum is tp times the sum over the dp x cp shares.
    work = dist.all_reduce(loss, async_op=True) if dist.get_world_size() > 1 else None
    if pm.scaler:
        pm.scaler.unscale_(opt)  # the clip below must see the true gradients
    if cfg.max_grad_norm > 0 and pm.dp_mode != "ps":  # ps: clipped on the servers
        pp_group = pm.mesh.group("pp") if plan.pp > 1 else None
        if pm.is_moe:  # on every rank alike: the collectives must match across stages
            clip_grad_norm_moe_(pm.parameters(), pm.experts, cfg.max_grad_norm, pp_group,
                                pm.skip_in_norm, pm.mesh.expert_groups(), pm.dp_mode == "fsdp")
        else:
            clip_grad_norm_(pm.parameters(), cfg.max_grad_norm, pp_group, pm.skip_in_norm)
    if pm.scaler:
        pm.scaler.step(opt, step)
    else:
        opt.step()
    if work is not None:
        work.wait()
        loss /= plan.tp * plan.dp * plan.cp
    return float(loss)


def _pipeline_step(pm: ParallelModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The step's micro-batches through the pipeline schedule, in plan.pipeline_passes runs of
    it (each its own fill and drain); the mean micro-batch loss on the last stage."""
    passes = pm.plan.pipeline_passes
    losses: list[torch.Tensor] = []
    for xp, yp in zip(x.chunk(passes), y.chunk(passes)):
        if pm.is_first:
            pm.schedule.step(xp)
        elif pm.is_last:
            mine: list[torch.Tensor] = []  # the schedule clears the list it is given
            pm.schedule.step(target=yp, losses=mine)
            losses += mine
        else:
            pm.schedule.step()
    if not pm.is_last:
        return torch.zeros((), device=pm.device)
    # With several passes each loss came back divided by the step's micro-batches
    # (executor/parallel/pipeline.py _PerStepMean).
    unscale = pm.plan.num_micro_batches if passes > 1 else 1
    return torch.stack([_value(t).detach() for t in losses]).mean() * unscale


def _accumulate(pm: ParallelModel, x: torch.Tensor, y: torch.Tensor,
                scale: float = 1.0) -> torch.Tensor:
    """Micro-batches in sequence; gradients synchronise on the last one only. Backward runs
    from the loss times `scale` (fp16 loss scaling); the returned loss is unscaled."""
    model, m = pm.parts[0], pm.plan.num_micro_batches
    total = torch.zeros((), device=pm.device)
    for i, (xb, yb) in enumerate(zip(x.chunk(m), y.chunk(m))):
        last = i == m - 1
        if pm.dp_mode == "fsdp":  # as torch.distributed.pipelining does for FSDP stages:
            model.set_requires_gradient_sync(last)  # reduce-scatter once, after the last
            model.set_reshard_after_backward(last)  # and keep weights gathered until then
        sync = model.no_sync() if pm.dp_mode == "ddp" and not last else contextlib.nullcontext()
        with sync:
            loss = loss_fn(model(xb), yb) / m
            (loss * scale if scale != 1.0 else loss).backward()
        total += _value(loss).detach()
    return total


def maybe_fail(step: int) -> None:
    """Test hook: PARAPLAN_FAIL_RANK / PARAPLAN_FAIL_STEP make one rank raise at one step (with
    PARAPLAN_FAIL_PLAN, only in the forked harness's job of that key: executor/local.py)."""
    env = os.environ
    only = env.get("PARAPLAN_FAIL_PLAN")
    if (env.get("PARAPLAN_FAIL_STEP") == str(step)
            and env.get("PARAPLAN_FAIL_RANK") == str(dist.get_rank())
            and (only is None or only == env.get("PARAPLAN_PLAN_KEY"))):
        raise RuntimeError(f"injected failure at step {step}")


def maybe_stall(step: int) -> None:
    """Test hook: PARAPLAN_STALL_RANK / PARAPLAN_STALL_STEP / PARAPLAN_STALL_S make one rank
    sleep, silently, inside the timed part of one step (a hang; a known slow step)."""
    env = os.environ
    if (env.get("PARAPLAN_STALL_STEP") == str(step)
            and env.get("PARAPLAN_STALL_RANK") == str(dist.get_rank())):
        time.sleep(float(env.get("PARAPLAN_STALL_S", "1")))


def memory_step(first: int, last: int, warmup: int) -> int:
    """The step of steps first..last whose memory is counted. Counting runs a Python hook on
    every saved tensor and slows that step, so it is the last untimed (warm-up) step when there
    are at least two: by then the optimizer state exists (from the first update on) and every
    step holds the same bytes. With fewer warm-up steps, the last step."""
    return first + warmup - 1 if warmup >= 2 else last


def train_steps(pm: ParallelModel, opt, source: TokenSource, cfg: TrainConfig, first: int,
                last: int, on_step=None,
                measure_at: int | None = None) -> tuple[list[float], list[float], StepStats]:
    """Steps first..last (inclusive): losses, wall seconds per step, and memory stats counted
    on step `measure_at` (none if it is None or outside first..last)."""
    plan = pm.plan
    dp_rank, cp_rank = pm.mesh.coord("dp"), pm.mesh.coord("cp")
    losses, times, stats = [], [], StepStats()
    for step in range(first, last + 1):
        maybe_fail(step)
        x, y = local_batch(source.batch(step, plan.global_batch_size), plan, dp_rank, cp_rank)
        x, y = x.to(pm.device), y.to(pm.device)
        t0 = time.perf_counter()
        maybe_stall(step)
        skipped = len(pm.scaler.skipped_steps) if pm.scaler else 0
        losses.append(run_step(pm, opt, x, y, cfg, stats if step == measure_at else None, step))
        if pm.scaler and len(pm.scaler.skipped_steps) > skipped and dist.get_rank() == 0:
            print(f"step {step}: fp16 overflow, update skipped on every rank; loss scale now "
                  f"{pm.scaler.factor():g}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if on_step:
            on_step(step, losses[-1], times[-1])
    if measure_at is not None and first <= measure_at <= last:
        stats.extra["optimizer_bytes"] = optimizer_bytes(opt)
        stats.extra["params_bytes"] = tensor_bytes(pm.parameters())
    return losses, times, stats


def train_plan(pm: ParallelModel, opt, source: TokenSource, cfg: TrainConfig, first: int = 1,
               on_step: Callable[[int, float, float], None] | None = None,
               ) -> tuple[list[float], list[float], dict]:
    """The timed loop of both launch harnesses, so their figures come from one code path:
    `paraplan run` (torchrun, executor/worker.py) and the forked world of validate-local,
    calibrate and the tests (executor/local.py). Steps first..first+cfg.steps-1, one per call;
    the resident-set (and GPU allocator) peak restarts at the first timed step; bytes are
    counted on memory_step's step. Returns the losses, every step's wall seconds (warm-up
    included: see timed_steps) and this rank's memory (RankMemory's fields but `rank`)."""
    last = first + cfg.steps - 1
    counted = memory_step(first, last, cfg.warmup)
    losses: list[float] = []
    times: list[float] = []
    stats = StepStats()
    for step in range(first, last + 1):
        if step == first + cfg.warmup:
            reset_peak_rss()
            if pm.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
        loss, dt, got = train_steps(pm, opt, source, cfg, step, step, measure_at=counted)
        if step == counted:
            stats = got
        losses += loss
        times += dt
        if on_step:
            on_step(step, loss[0], dt[0])
    cuda = pm.device.type == "cuda"
    return losses, times, {
        "params_bytes": stats.extra["params_bytes"], "grads_bytes": stats.grads_bytes,
        "optimizer_bytes": stats.extra["optimizer_bytes"], "activations_bytes": stats.meter_peak,
        "peak_rss_bytes": peak_rss_bytes(),
        "device_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def timed_steps(per_rank: list[list[float]], warmup: int) -> list[float]:
    """The step times both harnesses report: per timed step (warm-up dropped), the slowest
    rank's, since a step ends for everyone when its last rank is done."""
    return [max(ts[i] for ts in per_rank) for i in range(warmup, len(per_rank[0]))]


def gather_params(pm: ParallelModel) -> dict[str, torch.Tensor]:
    """Every parameter, whole, by model name, on every rank (small models: tests). Expert
    weights split over an etp group (executor/parallel/expert.py) are put back together."""
    named = pm.named_parameters()
    mine = {n: _value(p.detach()).clone() for n, p in named.items()}
    etp = dist.get_rank(pm.mesh.expert_groups()["etp"]) if pm.etp_dims else 0
    sliced = {n: (pm.etp_dims[id(p)], etp) for n, p in named.items() if id(p) in pm.etp_dims}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (mine, sliced))
    out: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for d, cut in parts:
        for n, t in d.items():
            if n in cut:
                pieces.setdefault(n, {})[cut[n][1]] = t
            else:
                out[n] = t
    for n, by_rank in pieces.items():
        dim = next(cut[n][0] for _, cut in parts if n in cut)
        out[n] = torch.cat([by_rank[r] for r in sorted(by_rank)], dim=dim)
    return out


def train_reference(spec: TransformerSpec, plan: Plan, cfg: TrainConfig, steps: int,
                    seed: int = 0) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single process, whole model, whole global batch per step: the ground truth."""
    model = build_model(spec, plan, seed)
    opt = make_optimizer(model.parameters(), cfg)
    source = TokenSource(spec.vocab_size, spec.seq_len, cfg.data, cfg.seed)
    losses = []
    for step in range(1, steps + 1):
        full = source.batch(step, plan.global_batch_size)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(full[:, :-1]), full[:, 1:])
        aux = total_aux(moe_layers([model]))
        if aux is not None:
            loss = loss + cfg.moe_aux_loss_coeff * aux
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}
