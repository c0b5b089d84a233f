"""Mixture-of-experts in the executor (executor/moe.py, executor/parallel/expert.py): tiny-moe
(4 blocks, the first dense, 8 experts top-2, one shared expert) trained for a few fp32 steps
under expert parallelism (ep, etp), alone and with data, tensor (with and without sequence
parallelism), context, pipeline parallelism, ZeRO-1/3 and full recompute, against the
single-process reference (losses and final weights to 1e-5, as
tests/test_executor_equivalence.py); every rank's weight, gradient and optimizer bytes against
the planner's per-rank count (planner/cost/params.py: stage_params_per_rank +
stage_expert_params_per_rank); the expert groups against planner/expert_layout.py; and the
load-balancing loss on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from executor.local import run_plans
from executor.moe import MoE, balance_loss, route
from executor.parallel.expert import check_expert_plan
from executor.train import TrainConfig, train_reference
from planner.cost.params import stage_expert_params_per_rank, stage_params_per_rank
from planner.expert_layout import EXPERT_KINDS, expert_rank_groups
from planner.plan import Plan
from planner.stages import pipeline_rank, rank_layer_ids, rank_moe_layers
from planner.transformer import load_transformer

GBS, STEPS = 8, 3
SPECS = {
    "tiny-moe": load_transformer("tiny-moe"),
    # DeepSeek-V3's router, MoE on every other block, two narrower shared experts, top-3.
    "tiny-moe-sigmoid": load_transformer("tiny-moe").model_copy(update={
        "name": "tiny-moe-sigmoid", "moe": load_transformer("tiny-moe").moe.model_copy(update={
            "router": "sigmoid_topk", "moe_layer_freq": 2, "top_k": 3, "num_shared_experts": 2,
            "shared_expert_ffn_hidden_size": 32})}),
}
SPEC = SPECS["tiny-moe"]
BASE = {"global_batch_size": GBS, "precision": "fp32"}
JOBS = {
    2: [("dp2-ep2-m2-full", "tiny-moe", {"dp": 2, "tp": 1, "pp": 1, "ep": 2,
                                         "micro_batch_size": 2, "recompute": "full"}),
        ("dp2-ep2-zero3", "tiny-moe", {"dp": 2, "tp": 1, "pp": 1, "ep": 2, "zero_stage": 3,
                                       "micro_batch_size": 4}),
        ("tp2-sp-ep2", "tiny-moe", {"dp": 1, "tp": 2, "pp": 1, "ep": 2,
                                    "sequence_parallel": True, "micro_batch_size": 4}),
        ("tp2-etp2", "tiny-moe", {"dp": 1, "tp": 2, "pp": 1, "ep": 1, "etp": 2,
                                  "micro_batch_size": 4}),
        ("cp2-ep2", "tiny-moe", {"dp": 1, "tp": 1, "pp": 1, "cp": 2, "ep": 2,
                                 "micro_batch_size": 4}),
        ("sigmoid-dp2-ep2", "tiny-moe-sigmoid", {"dp": 2, "tp": 1, "pp": 1, "ep": 2,
                                                 "micro_batch_size": 4})],
    4: [("dp4-ep4", "tiny-moe", {"dp": 4, "tp": 1, "pp": 1, "ep": 4, "micro_batch_size": 2}),
        ("dp2-tp2-ep2", "tiny-moe", {"dp": 2, "tp": 2, "pp": 1, "ep": 2, "micro_batch_size": 2}),
        ("dp2-pp2-ep2", "tiny-moe", {"dp": 2, "tp": 1, "pp": 2, "ep": 2, "micro_batch_size": 1}),
        # Two schedules per step: the balancing loss's gradient scaled as the losses are.
        ("dp2-pp2-ep2-passes2", "tiny-moe", {"dp": 2, "tp": 1, "pp": 2, "ep": 2,
                                             "micro_batch_size": 1, "pipeline_passes": 2}),
        ("dp2-tp2-ep2-etp2-zero1", "tiny-moe", {"dp": 2, "tp": 2, "pp": 1, "ep": 2, "etp": 2,
                                                "zero_stage": 1, "micro_batch_size": 2}),
        # Stage 0 holds only the dense block: its collectives must still match the others'.
        ("pp4-gpipe", "tiny-moe", {"dp": 1, "tp": 1, "pp": 4, "schedule": "gpipe",
                                   "micro_batch_size": 2})],
}
PLANS = {k: (name, Plan(**p, **BASE)) for jobs in JOBS.values() for k, name, p in jobs}
CASES = list(PLANS)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    cfg = TrainConfig(steps=STEPS, warmup=0)
    out: dict[str, dict] = {}
    for world, jobs in JOBS.items():
        out.update(run_plans(world, [(k, SPECS[name], PLANS[k][1]) for k, name, _ in jobs],
                             cfg, want_params=True))
    return out


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[list[float], dict[str, torch.Tensor]]]:
    plan = Plan(dp=1, tp=1, pp=1, micro_batch_size=GBS, **BASE)
    cfg = TrainConfig(steps=STEPS, warmup=0)
    return {name: train_reference(spec, plan, cfg, STEPS) for name, spec in SPECS.items()}


@pytest.mark.parametrize("key", CASES)
def test_matches_single_process(results, references, key):
    ref_losses, ref_params = references[PLANS[key][0]]
    got = results[key]
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-5)
    params = {n: torch.tensor(v) for n, v in got["params"].items()}
    assert set(params) == set(ref_params)
    total = np.sqrt(sum(float(((params[n] - t) ** 2).sum()) for n, t in ref_params.items()))
    norm = np.sqrt(sum(float((t ** 2).sum()) for t in ref_params.values()))
    assert total / norm <= 1e-5, total / norm
    scale = max(float(t.abs().max()) for t in ref_params.values())  # as the dense test holds
    worst = max(float((params[n] - t).abs().max()) for n, t in ref_params.items())
    assert worst <= 2e-5 * scale, worst


def test_losses_include_the_balancing_loss(references):
    """The reference's loss is cross-entropy plus alpha x the balancing loss of 3 MoE blocks,
    each near its balanced value 1 at initialisation: about 3 x 0.01 above ln(vocab)."""
    first = references["tiny-moe"][0][0]
    assert 0.02 < first - np.log(SPEC.vocab_size) < 0.05, first


@pytest.mark.parametrize("key", CASES)
def test_expert_groups_match_planner(results, key):
    plan = PLANS[key][1]
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    for kind in EXPERT_KINDS:
        planner_groups = [sorted(g) for g in
                          expert_rank_groups(sizes, plan.order, plan.ep, plan.etp, kind).tolist()]
        for rank, groups in enumerate(results[key]["groups"]):
            assert sorted(groups[kind]) == next(g for g in planner_groups if rank in g)


def _planner_params(spec, plan: Plan, rank: int) -> tuple[float, float]:
    """(dense, expert) parameters the planner puts on `rank`, less the one count where the
    executor differs: a sigmoid_topk router's selection bias (DeepSeek-V3 section 2.1.2), which
    planner/moe.py router_params counts as E parameters per MoE block and the executor holds as
    a buffer (it is set by the auxiliary-loss-free rule, not by gradients: no gradient, no
    AdamW state)."""
    s = pipeline_rank(plan, rank)
    layers = len(rank_layer_ids(spec.num_layers, plan.pp, plan.virtual_pipeline_stages, s))
    moe = float(rank_moe_layers(spec, plan.pp, plan.virtual_pipeline_stages, s))
    dense = float(stage_params_per_rank(spec, plan.tp, layers, s == 0, s == plan.pp - 1, moe))
    if spec.moe.router == "sigmoid_topk":
        dense -= spec.moe.num_experts * moe
    return dense, float(stage_expert_params_per_rank(spec, plan.ep, plan.etp, moe))


@pytest.mark.parametrize("key", CASES)
def test_model_state_bytes_match_planner(results, references, key):
    """fp32: 4 bytes per weight and per gradient, 8 of AdamW state (plus its 4-byte `step` per
    tensor); ZeRO shards the dense part over dp x cp and the experts over edp (FSDP2 keeps
    weights sharded between steps from stage 1 on: executor/parallel/data.py)."""
    name, plan = PLANS[key]
    tensors = len(references[name][1])
    for rank, mem in enumerate(results[key]["memory"]):
        dense, expert = _planner_params(SPECS[name], plan, rank)
        if plan.zero_stage >= 1:
            dense, expert = dense / (plan.dp * plan.cp), expert / plan.edp
        want = 4 * (dense + expert)
        assert mem["params_bytes"] == want, (rank, mem["params_bytes"], want)
        assert mem["grads_bytes"] == want, (rank, mem["grads_bytes"], want)
        extra = mem["optimizer_bytes"] - 2 * want
        assert 0 <= extra <= 4 * tensors, (rank, extra)


def test_balance_loss_is_alpha_when_balanced_and_grows_with_imbalance():
    """Switch eq. 4 per sequence: uniform probabilities and an even split give E * E * (1/E)
    (1/E) = 1 (times alpha); sending every token to the same two experts costs more."""
    E, k, b, s = 8, 2, 2, 16
    uniform = torch.full((b, s, E), 1.0 / E)
    even = torch.arange(b * s * k).remainder(E).view(b, s, k)
    assert float(balance_loss(uniform, even, E)) == pytest.approx(1.0)
    logits = torch.zeros(b, s, E)
    logits[..., :2] = 4.0  # router prefers experts 0 and 1 for every token
    probs, idx, weights = route(logits, k, "softmax_topk")
    skewed = float(balance_loss(probs, idx, E))
    assert skewed > 1.0
    assert float(balance_loss(probs, even, E)) < skewed  # same router, balanced dispatch
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, s))


def test_balance_loss_gradient_pushes_towards_balance():
    """One gradient step on the router logits lowers the loss of a skewed router."""
    E, k = 8, 2
    logits = torch.randn(1, 32, E)
    logits[..., 0] += 3.0
    logits.requires_grad_(True)
    probs, idx, _ = route(logits, k, "softmax_topk")
    loss = balance_loss(probs, idx, E)
    assert float(loss.detach()) > 0
    loss.backward()
    with torch.no_grad():
        probs2, _, _ = route(logits - 10.0 * logits.grad, k, "softmax_topk")
    assert float(balance_loss(probs2, idx, E)) < float(loss.detach())


def test_sigmoid_router_normalises_chosen_weights():
    logits = torch.randn(3, 5, 8)
    probs, idx, weights = route(logits, 2, "sigmoid_topk")
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5))
    assert torch.equal(idx, logits.topk(2, dim=-1).indices)  # sigmoid is monotone


def test_refusals():
    capped = SPEC.model_copy(update={"moe": SPEC.moe.model_copy(update={"capacity_factor": 1.25})})
    with pytest.raises(ValueError, match="dropless"):
        MoE(capped)
    with pytest.raises(ValueError, match="etp=3"):
        check_expert_plan(Plan(dp=3, tp=1, pp=1, ep=1, etp=3, **BASE, micro_batch_size=1), 8, 64)
    with pytest.raises(ValueError, match="ep=3"):
        check_expert_plan(Plan(dp=3, tp=1, pp=1, ep=3, **BASE, micro_batch_size=1), 8, 64)
