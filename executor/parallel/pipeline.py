"""Pipeline parallelism with torch.distributed.pipelining: this rank's stage modules (v of them
for interleaved 1F1B, stage indices rank, rank + pp, ...) cut from the whole model, and the
schedule named by the plan."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe,
                                          ScheduleInterleaved1F1B)

from executor.transformer import Transformer
from planner.plan import Plan
from planner.stages import chunk_layer_ids, rank_chunks


def cut_stage(model: Transformer, plan: Plan, stage: int) -> Transformer:
    """A copy of `model` holding only pipeline stage `stage` (names kept, so checkpoints and
    the planner's layer accounting line up)."""
    n_stages = plan.pp * plan.virtual_pipeline_stages
    part = copy.deepcopy(model)
    keep = {str(i) for i in chunk_layer_ids(model.spec.num_layers, plan.pp,
                                            plan.virtual_pipeline_stages, stage)}
    for name in list(part.layers.keys()):
        if name not in keep:
            del part.layers[name]
    if stage != 0:
        part.tok_embeddings = None
        part.pos_embeddings = None
    if stage != n_stages - 1:
        part.norm = None
        part.output = None
    return part


def stage_indices(plan: Plan, pp_rank: int) -> list[int]:
    """Stages (chunks) this pipeline rank runs ('loop' placement of the interleaved schedule),
    as planner.stages decides for the cost model."""
    return rank_chunks(plan.pp, plan.virtual_pipeline_stages, pp_rank)


def build_schedule(parts: list[Transformer], indices: list[int], plan: Plan, group,
                   device: torch.device, loss_fn: Callable):
    """PipelineStages and the plan's schedule over this rank's parts."""
    n_stages = plan.pp * plan.virtual_pipeline_stages
    stages = [PipelineStage(p, i, n_stages, device, group=group) for p, i in zip(parts, indices)]
    m, kw = plan.micro_batches_per_pass, {}
    if plan.pipeline_passes > 1:
        # The schedule runs once per pass (executor/train.py _pipeline_step). Its own grad
        # scaling divides every accumulated gradient by m at the end of each run, earlier
        # passes' included, so it is off and each micro-batch's loss is divided by the step's
        # micro-batches instead (torchtitan and NeMo AutoModel do the same when they accumulate
        # around the schedule).
        kw["scale_grads"] = False
        loss_fn = _PerStepMean(loss_fn, plan.num_micro_batches)
    if plan.schedule == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(stages, m, loss_fn=loss_fn, **kw)
    cls = ScheduleGPipe if plan.schedule == "gpipe" else Schedule1F1B
    return cls(stages[0], m, loss_fn=loss_fn, **kw)


class _PerStepMean:
    """loss_fn / the step's micro-batches: the schedule's backward then sums every pass's
    share of the step's mean gradient."""

    def __init__(self, fn: Callable, micro_batches: int) -> None:
        self.fn, self.micro_batches = fn, micro_batches

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(out, target) / self.micro_batches
