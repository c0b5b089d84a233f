"""The plan's precision on one rank: autocast (bf16, fp16), dynamic loss scaling for fp16, and
fp8 GEMMs through torchao's float8 training (GPUs only).

fp16 step: loss x scale -> backward -> unscale_ (inf/NaN check) -> clip -> step unless any rank
overflowed -> update the scale (halved after an overflow, doubled after `growth_interval` clean
steps: torch.amp.GradScaler's rule).
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.amp import GradScaler
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
from torch.distributed.tensor import DTensor

from planner.plan import Plan

INIT_SCALE_ENV = "PARAPLAN_FP16_INIT_SCALE"
"""Test hook: the fp16 loss scale to start from (default GradScaler's 2**16); a huge one forces
overflows."""
INF_GRAD_ENV = ("PARAPLAN_INF_GRAD_RANK", "PARAPLAN_INF_GRAD_STEP")
"""Test hook: put an inf in one rank's local gradients at one step (an overflow only that rank
sees: the skip must still be global)."""


def autocast(plan: Plan, device: torch.device):
    """bf16 / fp16 mixed precision via torch.autocast (fp32 master weights); fp8 plans run their
    non-GEMM ops in bf16 (the GEMMs are torchao Float8Linear); fp32 plans run as is."""
    dtype = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16}.get(
        plan.precision)
    if dtype is None:
        return contextlib.nullcontext()
    # No weight-cast cache: the step enters autocast once around all its micro-batches, and
    # with FSDP2 (which swaps the unsharded parameters in and out per micro-batch) the cache
    # served stale low-precision copies: ZeRO runs drifted 1.8% from the one-process reference,
    # 10x any other plan (tests/test_executor_equivalence.py, bf16 cases).
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


class _GlobalScaler(ShardedGradScaler):
    """torch's ShardedGradScaler (which all-reduces the found-inf flag over its process group,
    here the whole world) with the unscale run on each rank's local gradient tensors.

    Why not ShardedGradScaler as is: its unscale puts every gradient of one device and dtype
    into one `_amp_foreach_non_finite_check_and_unscale_` call, and DTensor's handler for that
    op reduces the flag over the *first* gradient's mesh only; our gradients mix meshes (FSDP's
    dp x cp, the tp mesh, 2D) with plain tensors, and pipeline stages hold different sets, so the
    calls would not line up across ranks. Local tensors + one world all-reduce (the base class's
    unscale_) is one collective per step and skips the step on every rank of dp, tp, pp and cp
    together when any rank overflowed."""

    def _unscale_grads_(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor,
                        found_inf: torch.Tensor, allow_fp16: bool = True,
                        ) -> dict[torch.device, torch.Tensor]:
        by_kind: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = local(p.grad)
                    by_kind[(g.device, g.dtype)].append(g)
        with torch.no_grad():
            for grads in by_kind.values():
                torch._amp_foreach_non_finite_check_and_unscale_(
                    grads, found_inf, inv_scale)  # one device per rank
        return {found_inf.device: found_inf}


def local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


def needs_global_check(plan: Plan, dp_mode: str) -> bool:
    """Whether ranks can disagree on an overflow: sharded gradients (FSDP, tensor parallel) or
    different parameters per rank (pipeline stages). After DDP or the plain all-reduce every rank
    holds the same gradients (an inf survives the sum), so GradScaler's local check agrees."""
    return dp_mode == "fsdp" or plan.tp > 1 or plan.pp > 1


@dataclass
class LossScaler:
    """A GradScaler for one rank's optimizer, and the steps it skipped."""

    scaler: GradScaler
    device: torch.device
    skipped_steps: list[int] = field(default_factory=list)
    """Step numbers skipped for an overflow (on every rank alike)."""

    def factor(self) -> float:
        """This step's loss multiplier (a power of two, so scaling and unscaling are exact)."""
        return self.scaler.get_scale()

    def unscale_(self, opt: torch.optim.Optimizer) -> None:
        """Before clipping: the norm must be of the true gradients."""
        self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer, step: int | None) -> bool:
        """The optimizer step unless an overflow was found; updates the scale. True if stepped."""
        before = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        # GradScaler lowers the scale exactly when it skipped (backoff < 1, no lower bound).
        stepped = self.scaler.get_scale() >= before
        if not stepped:
            self.skipped_steps.append(step if step is not None else -1)
        return stepped


def make_scaler(plan: Plan, dp_mode: str, device: torch.device) -> LossScaler | None:
    """fp16 plans: dynamic loss scaling, global where ranks can disagree; else None."""
    if plan.precision != "fp16":
        return None
    init = float(os.environ.get(INIT_SCALE_ENV, 2.0 ** 16))
    if needs_global_check(plan, dp_mode):
        scaler: GradScaler = _GlobalScaler(device.type, init_scale=init)
    else:
        scaler = GradScaler(device.type, init_scale=init)
    # GradScaler creates its scale tensor on the first scale() call and unscale_ requires it;
    # we multiply losses by get_scale()'s float (DTensor losses under loss_parallel do not mix
    # with the scaler's 1-element tensor), so create it now.
    scaler.scale(torch.ones((), device=device))
    return LossScaler(scaler, device)


class ScaledLoss:
    """The pipeline schedule's loss_fn times this step's loss scale: the schedule runs backward
    from what loss_fn returns, so scaling must happen inside it (the step divides the losses
    the schedule reports by the same factor)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.factor = 1.0

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.fn(out, target)
        return loss * self.factor if self.factor != 1.0 else loss


def maybe_inf_grad(params: list[nn.Parameter], step: int | None) -> None:
    """Test hook (INF_GRAD_ENV): one rank's first local gradient gets an inf at one step."""
    import torch.distributed as dist
    rank_s, step_s = (os.environ.get(k) for k in INF_GRAD_ENV)
    if rank_s is None or step is None or str(step) != step_s or str(dist.get_rank()) != rank_s:
        return
    for p in params:
        if p.grad is not None:
            local(p.grad).view(-1)[0] = float("inf")
            return


def convert_fp8(model: nn.Module, plan: Plan, device: torch.device) -> None:
    """fp8 plans: every Linear whose dimensions fp8 GEMMs take (multiples of 16) becomes a
    torchao Float8Linear (dynamic tensorwise scaling), in place, before any sharding (FSDP2
    and pipeline cuts then carry the converted modules)."""
    if plan.precision != "fp8":
        return
    if device.type != "cuda":
        raise RuntimeError("precision fp8 needs a GPU (fp8 GEMMs) and torchao")
    if plan.tp > 1:
        raise RuntimeError("precision fp8 with tensor parallel needs torchao's Float8 "
                           "parallel styles, not wired yet; use tp 1 or bf16")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError as err:
        raise RuntimeError("precision fp8 needs torchao (pip install torchao)") from err

    def fits(mod: nn.Module, _fqn: str) -> bool:
        return isinstance(mod, nn.Linear) and mod.in_features % 16 == 0 \
            and mod.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=fits)
