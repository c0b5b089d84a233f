"""ZeRO through PyTorch FSDP2 (the executor's; torchtitan's): what it communicates per step.

Units: one per block, plus the root (embedding, final norm, head). Weights are gathered per unit
before its first forward of the step; stage 3 frees them after each forward and gathers again
for each micro-batch's backward; gradients are reduce-scattered per unit once, after the last
micro-batch (torch.distributed.pipelining and the executor defer the sync), so a unit's weights
stay gathered from its backward to the end of the step. Where the stack overlaps communication
with compute (stack.grad_overlap), each unit's gather hides behind the previous unit's compute
and the reduce-scatters behind the last backward; otherwise every call is exposed.
"""

from __future__ import annotations

import numpy as np

from planner.cost.comms import Link
from planner.cost.compute import Shapes, layer_times
from planner.cost.efficiency import overlapped
from planner.cost.shape_cache import by_shape
from planner.cost.params import layer_params_per_rank, stage_params_per_rank
from planner.hardware import Cluster
from planner.stages import rank_layers
from planner.plan_arrays import PlanArrays
from planner.transformer import TransformerSpec


def fsdp2_exposed(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                  link: Link, window: np.ndarray) -> np.ndarray:
    """Seconds of FSDP2 communication per step not hidden behind compute (zero_stage >= 1)."""
    wb = np.where(P.precision == 3, 4.0, 2.0)
    layers = rank_layers(spec.num_layers, P.pp, P.vpp, np.zeros(len(P)))
    block = layer_params_per_rank(spec, sh.tp) * wb
    root = stage_params_per_rank(spec, sh.tp, layers, True, P.pp == 1) * wb - layers * block
    ag_block, rs_block = link.all_gather(block), link.reduce_scatter(block)
    ag_root, rs_root = link.all_gather(root), link.reduce_scatter(root)
    gathers = np.where(P.zero >= 3, 1 + P.micro_batches, 1)  # per block per step
    calls = gathers * (layers + 1) + layers + 1
    framework = calls * cluster.stack.fsdp_unit_overhead_s  # calibrated; 0 on GPU presets
    if not cluster.stack.grad_overlap:
        return (gathers * (layers * ag_block + ag_root) + layers * rs_block + rs_root
                + framework)
    lt = by_shape(lambda s: layer_times(spec, cluster.gpu, s, cluster.stack.flash_attention,
                                        cluster.stack.elementwise_traffic), sh)
    gpu = cluster.gpu
    first = ag_root + layers * overlapped(gpu, ag_block, lt.fwd)  # prefetch behind forward
    again = np.where(P.zero >= 3, P.micro_batches * layers * overlapped(gpu, ag_block, lt.bwd),
                     0.0)
    reduce = layers * rs_block + rs_root
    tail = rs_block  # the last unit's reduce-scatter has nothing left to hide behind
    return first + again + np.maximum(tail, overlapped(gpu, reduce, window)) + framework
