"""Blocks held by the pipeline ranks the cost model charges (the first, the heaviest middle one,
the last), computed once per PlanArrays on its distinct (pp, vpp) pairs: a search chunk of 16k
plans has a few dozen, and planner.stages' closed forms (integer division over every plan) were
called a dozen times per chunk with the same arguments. The values and dtypes are what the
direct calls give: the first rank as a float zero rank, the middle as rank
max(heaviest_middle, 0), the last as pp - 1, each element-wise."""

from __future__ import annotations

import numpy as np

from planner.cost import shape_cache
from planner.plan_arrays import PlanArrays
from planner.stages import heaviest_middle, rank_layers, rank_moe_layers
from planner.transformer import TransformerSpec

RANKS = ("first", "mid", "last")


def _direct(spec: TransformerSpec, pp: np.ndarray, vpp: np.ndarray) -> dict[str, np.ndarray]:
    L = spec.num_layers
    ranks = {"first": np.zeros(len(pp)), "mid": np.maximum(heaviest_middle(pp), 0),
             "last": pp - 1}
    out = {}
    for name, r in ranks.items():
        out[f"{name}_layers"] = rank_layers(L, pp, vpp, r)
        out[f"{name}_moe"] = rank_moe_layers(spec, pp, vpp, r)
    return out


def stage_blocks(spec: TransformerSpec, P: PlanArrays) -> dict[str, np.ndarray]:
    """{first,mid,last}_layers (blocks) and {first,mid,last}_moe (of them, MoE blocks) per plan:
    rank_layers / rank_moe_layers at pipeline rank 0 (np.zeros), max(heaviest_middle(pp), 0)
    and pp - 1."""
    key = ("per_plan", "stage_blocks", id(spec))
    hit = P._memo.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(P) < shape_cache.MIN_PLANS:
        out = _direct(spec, P.pp, P.vpp)
    else:
        rep, inv = P.groups("pp", "vpp")
        out = {k: v[inv] for k, v in _direct(spec, P.pp[rep], P.vpp[rep]).items()}
    P._memo[key] = (spec, out)
    return out
