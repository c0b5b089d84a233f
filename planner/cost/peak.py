"""Peak bytes per GPU alone: `memory_breakdown(...)["peak_bytes"]` (planner/cost/memory.py),
which the search computes for every valid candidate before anything else.

A stage's peak is the sum, in memory.stage_memory's order, of the model state (weights,
gradients, optimizer), the activations, the transient working set, the buffers and the
framework's bytes. The state and the buffers read no schedule, recompute or sequence-parallel
field, and the activations no ZeRO stage, so each is computed once per distinct combination of
the fields it reads (shape_cache.on_groups) and the sums are taken per plan in the same order:
the same bytes, bit for bit (tests/test_search_speed_identity.py holds it against
memory_breakdown)."""

from __future__ import annotations

import numpy as np

from planner.cost.compute import Shapes
from planner.cost.memory import block_terms, stage_activations, stage_state
from planner.cost.shape_cache import on_groups
from planner.cost.stage_blocks import RANKS, stage_blocks
from planner.hardware import Cluster
from planner.plan_arrays import PlanArrays
from planner.stages import heaviest_middle
from planner.transformer import TransformerSpec

# The fields each part reads ("layout": tp, cp, pp, dp, order, ep, etp), directly or through
# the Shapes (tp, cp, micro-batch, sequence parallelism, precision, ep, etp) and the number of
# micro-batches (gbs, dp, micro-batch).
ACTIVATION_FIELDS = ("layout", "vpp", "schedule", "mbs", "gbs", "passes", "sp", "precision",
                     "recompute")
STATE_FIELDS = ("layout", "vpp", "zero", "precision", "mbs", "gbs")


def _flags(P: PlanArrays) -> dict[str, tuple]:
    """rank -> (stage argument, holds the embedding, holds the head), as memory_by_stage."""
    one, mid = P.pp == 1, heaviest_middle(P.pp)
    return {"first": (np.zeros(len(P)), True, one),
            "mid": (np.where(mid > 0, mid, 0), False, False), "last": (P.pp - 1, one, True)}


def _activation_parts(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
                      flash: bool) -> dict[str, np.ndarray]:
    blocks, terms = stage_blocks(spec, P), block_terms(spec, cluster, P, sh, flash)
    out = {}
    for r, (stage, first, last) in _flags(P).items():
        out[f"{r}_act"], out[f"{r}_tr"] = stage_activations(
            spec, cluster, P, sh, flash, stage, blocks[f"{r}_layers"], first, last,
            blocks[f"{r}_moe"], terms)
    return out


def _state_parts(spec: TransformerSpec, cluster: Cluster, P: PlanArrays,
                 sh: Shapes) -> dict[str, np.ndarray]:
    blocks = stage_blocks(spec, P)
    out = {}
    for r, (_, first, last) in _flags(P).items():
        state, bufs, _ = stage_state(spec, cluster, P, sh, blocks[f"{r}_layers"],
                                     blocks[f"{r}_moe"], first, last)
        # stage_memory's sum starts 0 + weights (the same value), then left to right.
        out[f"{r}_state"] = (state["weights_bytes"] + state["gradients_bytes"]
                             + state["optimizer_bytes"])
        out[f"{r}_bufs"] = bufs
    return out


def peak_bytes(spec: TransformerSpec, cluster: Cluster, P: PlanArrays, sh: Shapes,
               flash: bool) -> np.ndarray:
    """Per-GPU peak bytes on the most loaded pipeline rank (memory_breakdown's peak_bytes)."""
    stage_blocks(spec, P)  # once for every plan, carried into both groups' plans
    act = on_groups(lambda p, s, _: _activation_parts(spec, cluster, p, s, flash), P, sh, None,
                    P.groups(*ACTIVATION_FIELDS))
    state = on_groups(lambda p, s, _: _state_parts(spec, cluster, p, s), P, sh, None,
                      P.groups(*STATE_FIELDS))
    framework = float(cluster.stack.framework_memory_bytes)
    peak = {r: state[f"{r}_state"] + act[f"{r}_act"] + act[f"{r}_tr"] + state[f"{r}_bufs"]
            + framework for r in RANKS}
    first, last = peak["first"], peak["last"]
    middle = np.where(heaviest_middle(P.pp) > 0, peak["mid"], first)
    pick = np.argmax(np.stack([first, middle, last]), axis=0)
    return np.choose(pick, [first, middle, last])
