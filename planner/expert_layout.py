"""Where the expert-parallel groups land: Megatron-Core's parallel folding (Liu et al. 2025,
'MoE Parallel Folding', arXiv 2504.14960; megatron/core/parallel_state.py, the expert
RankGenerator). Attention and dense layers use tp x cp x dp within a pipeline stage; experts use
the same ranks of that stage, regrouped as etp x ep x edp with etp innermost, then ep, then edp.

"The same ranks of a stage" in rank order: the stage's tp, cp and dp ranks listed as the plan's
`order` numbers them (innermost dimension fastest). With the default `tp-cp-dp-pp` that list is
a contiguous block of tp*cp*dp ranks, so an ep group of ep*etp <= gpus_per_node ranks sits inside
a node, as in Megatron-Core. Planner (topology) and executor (process groups) both take their
groups from `expert_rank_groups`.
"""

from __future__ import annotations

import numpy as np

from planner.plan import DIMS

EXPERT_KINDS = ("etp", "ep", "edp")


def stage_rank_lists(sizes: dict[str, int], order: str) -> np.ndarray:
    """(pp, tp*cp*dp) array: each pipeline stage's ranks in rank order."""
    outer_first = list(reversed(order.split("-")))
    world = int(np.prod([sizes[d] for d in DIMS]))
    grid = np.arange(world).reshape([sizes[d] for d in outer_first])
    pp_axis = outer_first.index("pp")
    return np.moveaxis(grid, pp_axis, 0).reshape(sizes["pp"], -1)


def expert_rank_groups(sizes: dict[str, int], order: str, ep: int, etp: int,
                       kind: str) -> np.ndarray:
    """(number of groups, group size) array of ranks of an expert group kind: `ep` (the
    all-to-all group), `etp` (an expert's tensor-parallel group) or `edp` (ranks holding the
    same expert shard, over which expert gradients are reduced and ZeRO shards expert state)."""
    if kind not in EXPERT_KINDS:
        raise ValueError(f"unknown expert group kind '{kind}'; accepted: {', '.join(EXPERT_KINDS)}")
    stages = stage_rank_lists(sizes, order)
    per_stage = stages.shape[1]
    if per_stage % (ep * etp):
        raise ValueError(f"ep*etp = {ep}*{etp} does not divide the stage's {per_stage} ranks")
    grid = stages.reshape(stages.shape[0], per_stage // (ep * etp), ep, etp)  # (pp, edp, ep, etp)
    axis = {"edp": 1, "ep": 2, "etp": 3}[kind]
    moved = np.moveaxis(grid, axis, -1)
    return moved.reshape(-1, grid.shape[axis])
