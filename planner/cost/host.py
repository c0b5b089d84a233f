"""Host (CPU) time of issuing a block's kernels, and the part of it the GPU waits for.

The CPU enqueues kernels asynchronously and normally runs ahead of the GPU, so its time is
hidden while a block's GPU work takes longer than issuing it. Small blocks on fast GPUs turn
that around: the GPU finishes each kernel before the CPU has launched the next, and the block
takes the CPU's time (NVIDIA TE issue #2053: a 2048-wide Linear over 8,192 tokens takes 37 us of
CPU and 42 us of GPU on GB200, and TE's module 100 us of each, so the GPU waits). A
host-device synchronisation (a dropless MoE dispatch reading its token counts) empties the
queue the CPU had built up; after it the GPU waits for the next launch.

Per block and direction, with the stack's op counts (planner/stack.py) and the node's time per
op (`Cluster.host_op_s`):

    host = ops x host_op_s,   exposed = max(0, host - gpu) + syncs x host_op_s

where `gpu` is the block's modelled time in that direction (compute and exposed communication).
The block then takes max(host, gpu) plus the syncs' launch gaps: a faster GPU or link never
makes it slower. Every block of a stage has the same counts, so the CPU's lead carried between
blocks changes nothing in this per-block form.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from planner.cost.compute import Shapes
from planner.hardware import Cluster
from planner.plan_arrays import R_FULL, PlanArrays
from planner.transformer import TransformerSpec


def host_exposed(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                 block: Mapping[str, tuple[np.ndarray, np.ndarray]], moe: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per micro-batch the GPU waits for the CPU in one block, (forward, backward incl.
    recompute), given the block's other categories `block` (category -> (fwd, bwd))."""
    op_s, st = cluster.host_op_s, cluster.stack
    zero = np.zeros(len(P))
    if op_s == 0.0:
        return zero, zero
    # Each tensor-parallel collective is a launch too: two all-reduces per direction, or two
    # all-gathers and two reduce-scatters with sequence parallelism (Korthikanti et al. 2022).
    coll = np.where(P.tp > 1, np.where(sh.sp, 4.0, 2.0), 0.0)
    ops_f = st.block_host_ops_fwd + coll + (st.moe_host_ops_fwd if moe else 0.0)
    ops_b = st.block_host_ops_bwd + coll + (st.moe_host_ops_bwd if moe else 0.0)
    full = P.recompute == R_FULL
    ops_b = ops_b + np.where(full, ops_f, 0.0)  # the recomputed forward is issued again
    dropless = moe and spec.moe is not None and spec.moe.capacity_factor is None
    syncs_f = float(st.moe_host_syncs) if dropless else 0.0
    syncs_b = np.where(full, syncs_f, 0.0)
    gpu_f = sum((f for c, (f, _) in block.items() if c != "host"), zero)
    gpu_b = sum((b for c, (_, b) in block.items() if c != "host"), zero)
    exp_f = np.maximum(0.0, ops_f * op_s - gpu_f) + syncs_f * op_s
    exp_b = np.maximum(0.0, ops_b * op_s - gpu_b) + syncs_b * op_s
    return exp_f, exp_b
