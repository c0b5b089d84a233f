"""Tier 2: every plan shape the search emits for 2 and 4 processes, run with the executor on CPU
(gloo), matches a single-process reference: the losses of 3 steps and the final parameters, to
1e-5 relative. Plus recompute on/off, tied embeddings across stages and tensor parallelism, and
the executor's process groups against the planner's topology, and the activation bytes each rank
saves against the planner's eager-PyTorch count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import with_software

from executor.local import run_plans
from executor.shapes import emitted_shapes, one_node, shape
from executor.train import TrainConfig, train_reference
from planner.compare import stage_index
from planner.cost.memory import stage_memory
from planner.cost.step_time import shapes
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.topology import KINDS, rank_groups
from planner.transformer import load_transformer

GBS = 8
STEPS = 3


def emitted(world: int) -> dict[tuple, Plan]:
    return emitted_shapes(load_transformer("tiny"), one_node(world), GBS)


def _extra(world: int) -> list[tuple[str, str, dict]]:
    """Recompute modes and the GPT family (tied embeddings, LayerNorm, biases, positions)."""
    base = {"micro_batch_size": 1, "global_batch_size": GBS, "precision": "fp32"}
    if world == 2:
        return [
            ("dp2-full", "tiny", {"dp": 2, "tp": 1, "pp": 1, "recompute": "full", **base}),
            ("tp2-sp-selective", "tiny", {"dp": 1, "tp": 2, "pp": 1, "sequence_parallel": True,
                                          "recompute": "selective", **base}),
            ("pp2-full", "tiny", {"dp": 1, "tp": 1, "pp": 2, "recompute": "full", **base}),
            ("gpt-pp2-tied", "tiny-gpt", {"dp": 1, "tp": 1, "pp": 2, **base}),
            ("gpt-tp2-sp-tied", "tiny-gpt", {"dp": 1, "tp": 2, "pp": 1,
                                            "sequence_parallel": True, **base}),
            ("gpt-cp2-zero3", "tiny-gpt", {"dp": 1, "tp": 1, "pp": 1, "cp": 2, "zero_stage": 3,
                                          **base})]
    return [("tp2-pp2-full-interleaved", "tiny", {
        "dp": 1, "tp": 2, "pp": 2, "schedule": "interleaved_1f1b", "virtual_pipeline_stages": 2,
        "recompute": "full", **base}),
        ("gpt-dp2-pp2-zero2-tied", "tiny-gpt", {"dp": 2, "tp": 1, "pp": 2, "zero_stage": 2,
                                                **base}),
        ("dp2-tp2-sp-zero3", "tiny", {"dp": 2, "tp": 2, "pp": 1, "zero_stage": 3,
                                      "sequence_parallel": True, **base}),
        ("dp2-pp2-zero3", "tiny", {"dp": 2, "tp": 1, "pp": 2, "zero_stage": 3, **base}),
        ("dp2-cp2-zero1", "tiny", {"dp": 2, "tp": 1, "pp": 1, "cp": 2, "zero_stage": 1, **base})]


def _jobs(world: int) -> list[tuple[str, str, dict]]:
    jobs = [("shape " + " ".join(map(str, s)), "tiny", p.to_json_dict())
            for s, p in emitted(world).items()]
    return jobs + _extra(world)


JOBS = {w: _jobs(w) for w in (2, 4)}


@pytest.fixture(scope="module")
def results():
    cfg = TrainConfig(steps=STEPS, warmup=0)
    return {w: run_plans(w, [(k, load_transformer(s), Plan(**p)) for k, s, p in jobs], cfg,
                         want_params=True) for w, jobs in JOBS.items()}


@pytest.fixture(scope="module")
def references():
    cfg = TrainConfig(steps=STEPS, warmup=0)
    plan = Plan(dp=1, tp=1, pp=1, micro_batch_size=GBS, global_batch_size=GBS, precision="fp32")
    return {name: train_reference(load_transformer(name), plan, cfg, STEPS)
            for name in ("tiny", "tiny-gpt")}


CASES = [(w, key, spec) for w, jobs in JOBS.items() for key, spec, _ in jobs]


def test_every_emitted_shape_is_covered():
    for world in (2, 4):
        assert set(emitted(world)) <= {shape(Plan(**p)) for _, _, p in JOBS[world]}
    assert len(CASES) > 30


@pytest.mark.parametrize("world,key,spec", CASES, ids=[f"w{w}-{k}" for w, k, _ in CASES])
def test_matches_single_process(results, references, world, key, spec):
    ref_losses, ref_params = references[spec]
    got = results[world][key]
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-5)
    params = dict(got["params"])
    if "output.weight" in params and "output.weight" not in ref_params:
        # Tied embeddings split over pipeline stages: two copies that must stay identical.
        np.testing.assert_array_equal(params.pop("output.weight"), params["tok_embeddings.weight"])
    got = {**got, "params": params}
    assert set(got["params"]) == set(ref_params)
    # The whole model to 1e-5 relative. Element by element, AdamW divides each step by the
    # gradient's own running scale, so a weight whose gradient is ~0 in exact arithmetic (key
    # biases, rare coordinates) moves by whatever float rounding leaves, which depends on the
    # reduction order: such elements may differ by a few % of one step (lr = 1e-3), so each
    # element is held to 2e-5 of the largest weight.
    total = np.sqrt(sum(float(((torch.tensor(got["params"][n]) - t) ** 2).sum())
                        for n, t in ref_params.items()))
    norm = np.sqrt(sum(float((t ** 2).sum()) for t in ref_params.values()))
    assert total / norm <= 1e-5, total / norm
    scale = max(float(t.abs().max()) for t in ref_params.values())
    worst = max(float((torch.tensor(got["params"][n]) - t).abs().max())
                for n, t in ref_params.items())
    assert worst <= 2e-5 * scale, worst


@pytest.mark.parametrize("world,key,spec", CASES, ids=[f"w{w}-{k}" for w, k, _ in CASES])
def test_process_groups_match_planner_topology(results, world, key, spec):
    """Rank order: every rank's tp/cp/dp/pp/dp x cp group in the executor's DeviceMesh is the
    group planner/topology.py models for the same plan."""
    plan = Plan(**next(p for k, _, p in JOBS[world] if k == key))
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    for kind in KINDS:
        planner_groups = [sorted(g) for g in rank_groups(sizes, plan.order, kind).tolist()]
        for rank, groups in enumerate(results[world][key]["groups"]):
            mine = next(g for g in planner_groups if rank in g)
            assert sorted(groups[kind]) == mine, (kind, rank)


def _stage_memory(spec_name: str, plan: Plan, cluster, stage: int) -> dict[str, float]:
    """The planner's bytes by component for one pipeline stage of `plan`."""
    P = PlanArrays.from_plans([plan])
    mem = stage_memory(load_transformer(spec_name), cluster, P, shapes(cluster, P),
                       cluster.software.flash_attention, np.array([stage]), stage == 0,
                       stage == plan.pp - 1)
    return {k: float(v[0]) for k, v in mem.items()}


@pytest.mark.parametrize("world,key,spec", CASES, ids=[f"w{w}-{k}" for w, k, _ in CASES])
def test_saved_activations_match_eager_model(results, world, key, spec):
    """Every rank's peak of bytes saved for backward (autograd hooks, the last step of the
    run) against planner/cost/eager_activations.py for its pipeline stage, to 2% or 8 KiB
    (the model leaves out small loss and checkpoint tensors; every block tensor is counted)."""
    plan = Plan(**next(p for k, _, p in JOBS[world] if k == key))
    cluster = with_software(one_node(world), activation_layout="eager")
    for rank, mem in enumerate(results[world][key]["memory"]):
        stage = stage_index(plan, rank)
        want = _stage_memory(spec, plan, cluster, stage)["activations_bytes"]
        got = mem["activations_bytes"]
        assert abs(got - want) <= max(8192, 0.02 * got), (rank, stage, got, want)


@pytest.mark.parametrize("world,key,spec", CASES, ids=[f"w{w}-{k}" for w, k, _ in CASES])
def test_model_state_bytes_match_planner(results, world, key, spec):
    """Every rank's parameter, gradient and optimizer-state bytes (counted from its tensors:
    local shards of DTensors, after the last step's backward) against the planner's memory model
    for its pipeline stage, to 1% (AdamW's per-tensor `step` scalars are the only extra)."""
    plan = Plan(**next(p for k, _, p in JOBS[world] if k == key))
    for rank, mem in enumerate(results[world][key]["memory"]):
        stage = stage_index(plan, rank)
        want = _stage_memory(spec, plan, one_node(world), stage)
        for got_key, want_key in (("params_bytes", "weights_bytes"),
                                  ("grads_bytes", "gradients_bytes"),
                                  ("optimizer_bytes", "optimizer_bytes")):
            got, expect = mem[got_key], want[want_key]
            assert abs(got - expect) <= 0.01 * expect, (rank, stage, got_key, got, expect)
