"""Tier 2: every plan shape the search emits for 2 and 4 processes, run with the executor on CPU
(gloo), matches a single-process reference: the losses of 3 steps and the final parameters, to
1e-5 relative; a few bf16 (autocast) plans match a bf16 single-process reference to bf16's
precision. Plus recompute on/off, tied embeddings across stages and tensor parallelism, and
the executor's process groups against the planner's topology, and the activation bytes each rank
saves against the planner's eager-PyTorch count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import with_stack

from executor.data import TokenSource
from executor.local import run_plans
from executor.parallelize import build_model, loss_fn
from executor.shapes import emitted_shapes, one_node, shape
from executor.train import TrainConfig, make_optimizer, train_reference
from planner.compare import stage_index
from planner.cost.memory import stage_memory
from planner.cost.step_time import shapes
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.topology import KINDS, rank_groups
from planner.transformer import load_transformer
from planner.zero_layout import ZERO_KINDS, zero_rank_groups

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
                                          **base}),
            # Two pipeline schedules per step (pipeline_passes): gradients accumulate across
            # them, each micro-batch's loss a share of the step's mean.
            ("pp2-v2-interleaved-passes2", "tiny", {
                "dp": 1, "tp": 1, "pp": 2, "schedule": "interleaved_1f1b",
                "virtual_pipeline_stages": 2, "pipeline_passes": 2, **base}),
            # 4 blocks over pp 2 x v 3 = 6 chunks: the first holds only the embedding, the
            # last only the head (Megatron's account-for-embedding / -loss split).
            ("pp2-v3-empty-ends", "tiny", {"dp": 1, "tp": 1, "pp": 2, "virtual_pipeline_stages": 3,
                                           "schedule": "interleaved_1f1b", **base})]
    return [("tp2-pp2-full-interleaved", "tiny", {
        "dp": 1, "tp": 2, "pp": 2, "schedule": "interleaved_1f1b", "virtual_pipeline_stages": 2,
        "recompute": "full", **base}),
        ("gpt-dp2-pp2-zero2-tied", "tiny-gpt", {"dp": 2, "tp": 1, "pp": 2, "zero_stage": 2,
                                                **base}),
        ("dp2-tp2-sp-zero3", "tiny", {"dp": 2, "tp": 2, "pp": 1, "zero_stage": 3,
                                      "sequence_parallel": True, **base}),
        ("dp2-pp2-zero3", "tiny", {"dp": 2, "tp": 1, "pp": 2, "zero_stage": 3, **base}),
        # FSDP2 reduce-scatters at the end of each of the two schedules.
        ("dp2-pp2-zero3-passes2", "tiny", {"dp": 2, "tp": 1, "pp": 2, "zero_stage": 3,
                                           "pipeline_passes": 2, **base}),
        ("dp2-cp2-zero1", "tiny", {"dp": 2, "tp": 1, "pp": 1, "cp": 2, "zero_stage": 1, **base}),
        # Hybrid sharding (HSDP): shards over 2 of the 4 dp ranks, replicas across; and over
        # the cp ranks alone, with cp outside dp in the rank order.
        ("dp4-hsdp2-zero3", "tiny", {"dp": 4, "tp": 1, "pp": 1, "zero_stage": 3, "dp_shard": 2,
                                     **base}),
        ("dp4-hsdp2-zero2", "tiny", {"dp": 4, "tp": 1, "pp": 1, "zero_stage": 2, "dp_shard": 2,
                                     **base}),
        # with tp: FSDP2 must combine its 2-D mesh with the tensor-parallel one
        ("dp2-tp2-hsdp1-zero3", "tiny", {"dp": 2, "tp": 2, "pp": 1, "zero_stage": 3,
                                         "dp_shard": 1, "sequence_parallel": True, **base}),
        ("dp2-cp2-hsdp1-zero3-cp-outer", "tiny", {
            "dp": 2, "tp": 1, "pp": 1, "cp": 2, "zero_stage": 3, "dp_shard": 1,
            "order": "tp-dp-cp-pp", **base})]


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
    """Rank order: every rank's tp/cp/dp/pp/dp x cp group, and its ZeRO shard and replica
    groups, in the executor's DeviceMesh is the group planner/topology.py models for the same
    plan."""
    plan = Plan(**next(p for k, _, p in JOBS[world] if k == key))
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    want = {k: rank_groups(sizes, plan.order, k) for k in KINDS} | {
        k: zero_rank_groups(sizes, plan.order, plan.zero_shard, k) for k in ZERO_KINDS}
    for kind, arr in want.items():
        planner_groups = [sorted(g) for g in arr.tolist()]
        for rank, groups in enumerate(results[world][key]["groups"]):
            mine = next(g for g in planner_groups if rank in g)
            assert sorted(groups[kind]) == mine, (kind, rank)


def _stage_memory(spec_name: str, plan: Plan, cluster, stage: int) -> dict[str, float]:
    """The planner's bytes by component for one pipeline stage of `plan`."""
    P = PlanArrays.from_plans([plan])
    mem = stage_memory(load_transformer(spec_name), cluster, P, shapes(cluster, P),
                       cluster.stack.flash_attention, np.array([stage]), stage == 0,
                       stage == plan.pp - 1)
    return {k: float(v[0]) for k, v in mem.items()}


@pytest.mark.parametrize("world,key,spec", CASES, ids=[f"w{w}-{k}" for w, k, _ in CASES])
def test_saved_activations_match_eager_model(results, world, key, spec):
    """Every rank's peak of bytes saved for backward (autograd hooks, the last step of the
    run) against planner/cost/eager_activations.py for its pipeline stage, to 2% or 8 KiB
    (the model leaves out small loss and checkpoint tensors; every block tensor is counted)."""
    plan = Plan(**next(p for k, _, p in JOBS[world] if k == key))
    cluster = with_stack(one_node(world), activation_layout="eager")
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


# --- bf16 (torch.autocast) -----------------------------------------------------------------------
# A small set on 2 ranks, one plan per way of splitting the work, against one process in bf16.
BF16 = {"micro_batch_size": 1, "global_batch_size": GBS, "precision": "bf16"}
BF16_JOBS = [
    ("dp2", "tiny", {"dp": 2, "tp": 1, "pp": 1, **BF16}),
    ("tp2-sp", "tiny", {"dp": 1, "tp": 2, "pp": 1, "sequence_parallel": True, **BF16}),
    ("pp2", "tiny", {"dp": 1, "tp": 1, "pp": 2, **BF16}),
    ("gpt-pp2-tied", "tiny-gpt", {"dp": 1, "tp": 1, "pp": 2, **BF16}),
    ("dp2-zero3", "tiny", {"dp": 2, "tp": 1, "pp": 1, "zero_stage": 3, **BF16}),
]
# bf16 keeps 8 significand bits (unit roundoff 2^-8 = 3.9e-3, about 2-3 significant digits).
# Sharding changes which partial sums are rounded to bf16, so runs differ at that level: the
# loss, a mean over 8 x seq tokens, to ~1e-5 relative (measured <= 1.1e-5), and the weights,
# where AdamW turns a rounded near-zero gradient into a full lr-sized step, to ~2e-3 of their
# norm after 3 steps (measured <= 1.6e-3; bf16 vs. fp32 of one process is 1.7e-3). Limits:
# 1e-4 on the loss, 5e-3 on the weights: ~3x the measured spread, below the 1.8% and 2e-4 that
# a stale autocast weight cache produced under FSDP2 (executor/train.py, `autocast`).
BF16_LOSS_RTOL, BF16_PARAM_RTOL = 1e-4, 5e-3


def _bf16_reference(name: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """train_reference with forward and backward under autocast, entered afresh each step.
    (Wrapping train_reference in one autocast would not do: autocast caches the bf16 copy of
    every weight until it exits, so steps 2 and 3 would run on step 1's weights.)"""
    spec, cfg = load_transformer(name), TrainConfig(steps=STEPS, warmup=0)
    plan = Plan(dp=1, tp=1, pp=1, micro_batch_size=GBS, global_batch_size=GBS, precision="bf16")
    model = build_model(spec, plan, cfg.seed)
    opt = make_optimizer(model.parameters(), cfg)
    source = TokenSource(spec.vocab_size, spec.seq_len, cfg.data, cfg.seed)
    losses = []
    for step in range(1, STEPS + 1):
        full = source.batch(step, GBS)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model(full[:, :-1]), full[:, 1:])
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def _relative_distance(got: dict, ref: dict[str, torch.Tensor]) -> float:
    got = dict(got)
    if "output.weight" in got and "output.weight" not in ref:  # tied copy, checked in fp32
        got.pop("output.weight")
    assert set(got) == set(ref)
    diff = sum(float(((torch.as_tensor(got[n]) - t) ** 2).sum()) for n, t in ref.items())
    return float(np.sqrt(diff / sum(float((t ** 2).sum()) for t in ref.values())))


@pytest.fixture(scope="module")
def bf16_results():
    cfg = TrainConfig(steps=STEPS, warmup=0)
    return run_plans(2, [(k, load_transformer(s), Plan(**p)) for k, s, p in BF16_JOBS], cfg,
                     want_params=True)


@pytest.fixture(scope="module")
def bf16_references():
    return {name: _bf16_reference(name) for name in ("tiny", "tiny-gpt")}


@pytest.mark.parametrize("key,spec", [(k, s) for k, s, _ in BF16_JOBS])
def test_bf16_matches_single_process_bf16(bf16_results, bf16_references, references, key, spec):
    ref_losses, ref_params = bf16_references[spec]
    got = bf16_results[key]
    # Both sides really ran in bf16: the fp32 runs agree to 1e-5, these differ from them by more
    # than 10x that (measured 1.6e-3 to 1.9e-3).
    assert _relative_distance(ref_params, references[spec][1]) > 1e-4
    assert _relative_distance(got["params"], references[spec][1]) > 1e-4
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=BF16_LOSS_RTOL)
    assert _relative_distance(got["params"], ref_params) <= BF16_PARAM_RTOL
