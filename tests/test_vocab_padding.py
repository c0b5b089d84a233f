"""Vocabulary padding and the vocab-parallel embedding, planner against executor.

Megatron-LM pads the vocabulary to a multiple of 128 x tp (`--make-vocab-size-divisible-by`
128, so every tensor-parallel shard of the embedding and the LM head is whole and aligned); the
planner counts weights, the LM-head GEMM and the logits over the padded vocabulary, and the
executor builds the padded table. The tiny presets' vocabulary (512) divides by 128 x 4, which
hid that the executor did not pad: here the vocabulary is 300 (padded to 384 at tp 1, 512 at
tp 2)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.comms import Link
from planner.cost.evaluate import predict
from planner.cost.layout import link_arrays
from planner.cost.memory import stage_memory
from planner.cost.params import padded_vocab
from planner.cost.step_time import shapes
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.stages import pipeline_rank
from planner.topology import Topology
from planner.transformer import load_transformer

VOCAB = 300
GBS, STEPS = 4, 2


def _spec(name: str):
    return load_transformer(name).model_copy(update={"vocab_size": VOCAB,
                                                     "name": f"{name}-v{VOCAB}"})


def test_padding_rule():
    spec = _spec("tiny")
    assert padded_vocab(spec, np.array([1, 2, 4])).tolist() == [384, 512, 512]
    llama3 = load_transformer("llama3-8b")  # 128,256 = 128 x 1002: pads only when tp > 2
    assert padded_vocab(llama3, np.array([1, 2, 8])).tolist() == [128256, 128256, 129024]


def test_embedding_collective_in_step_time():
    """Hand count of the tensor-parallel collectives of one micro-batch on one pipeline stage
    that holds the whole model (Shoeybi et al. 2019, Fig. 4 and section 3): per block two
    all-reduces of the b x s x h activations forward and two backward, the vocab-parallel
    embedding's one all-reduce forward (none backward), and the vocab-parallel cross-entropy's
    three all-reduces of one fp32 value per token (max, sum, target logit)."""
    spec = load_transformer("llama3-8b")
    cluster = load_cluster("dgx_h100")
    plan = Plan(dp=1, tp=8, pp=1, micro_batch_size=1, global_batch_size=1)
    got = predict(spec, cluster, plan)["breakdown"]["tp_comm_s"]
    link: Link = link_arrays(Topology(cluster), PlanArrays.from_plans([plan]))[0]["tp"]
    tokens = spec.seq_len
    act = 2.0 * tokens * spec.hidden_size
    want = ((4 * spec.num_layers + 1) * link.all_reduce(np.array([act]))
            + 3 * link.all_reduce(np.array([4.0 * tokens])))
    assert got == pytest.approx(float(want[0]), rel=1e-9)


@pytest.fixture(scope="module")
def runs():
    """Three plans on two gloo processes, trained for a few steps with the executor, and each
    one's single-process reference (same model, same padding)."""
    pytest.importorskip("torch")
    from executor.local import run_plans
    from executor.train import TrainConfig, train_reference
    base = {"micro_batch_size": 1, "global_batch_size": GBS, "precision": "fp32"}
    plans = {"tp2": ("tiny", Plan(dp=1, tp=2, pp=1, **base)),
             "gpt-tp2-sp-tied": ("tiny-gpt", Plan(dp=1, tp=2, pp=1, sequence_parallel=True,
                                                  **base)),
             "dp2-tp1": ("tiny", Plan(dp=2, tp=1, pp=1, **base)),
             "gpt-pp2-tied": ("tiny-gpt", Plan(dp=1, tp=1, pp=2, **base))}
    cfg = TrainConfig(steps=STEPS, warmup=0)
    got = run_plans(2, [(k, _spec(s), p) for k, (s, p) in plans.items()], cfg, want_params=True)
    refs = {k: train_reference(_spec(s), p, cfg, STEPS) for k, (s, p) in plans.items()}
    return plans, got, refs


def test_padded_runs_match_single_process(runs):
    """Losses to 1e-5 relative; the whole padded model to 1e-5 relative in norm and every
    element within 2e-5 of the largest weight (the criterion of test_executor_equivalence.py,
    which says why AdamW rules out a per-element relative bound)."""
    plans, got, refs = runs
    for key in plans:
        ref_losses, ref_params = refs[key]
        np.testing.assert_allclose(got[key]["losses"], ref_losses, rtol=1e-5, err_msg=key)
        params = {n: np.array(v) for n, v in got[key]["params"].items()}
        if "output.weight" in params and "output.weight" not in ref_params:
            np.testing.assert_array_equal(params.pop("output.weight"),
                                          params["tok_embeddings.weight"])
        assert set(params) == set(ref_params), key
        ref = {n: t.numpy() for n, t in ref_params.items()}
        for n, t in ref.items():
            assert params[n].shape == t.shape, (key, n, params[n].shape, t.shape)
        total = np.sqrt(sum(((params[n] - t) ** 2).sum() for n, t in ref.items()))
        norm = np.sqrt(sum((t ** 2).sum() for t in ref.values()))
        assert total / norm <= 1e-5, (key, total / norm)
        scale = max(np.abs(t).max() for t in ref.values())
        assert max(np.abs(params[n] - t).max() for n, t in ref.items()) <= 2e-5 * scale, key


def test_padded_table_bytes_match_planner(runs):
    """Each rank's weight and gradient bytes equal the planner's for its stage (the padded
    rows included); before the executor padded, tp 2 held 150 rows per rank to the planner's
    256."""
    plans, got, _ = runs
    for key, (name, plan) in plans.items():
        cluster = load_cluster("dgx_h100").model_copy(update={"gpus_per_node": 2,
                                                              "num_nodes": 1})
        P = PlanArrays.from_plans([plan])
        for rank, mem in enumerate(got[key]["memory"]):
            s = pipeline_rank(plan, rank)
            want = stage_memory(_spec(name), cluster, P, shapes(cluster, P),
                                cluster.stack.flash_attention, np.array([s]), s == 0,
                                s == plan.pp - 1)
            assert mem["params_bytes"] == int(want["weights_bytes"][0]), (key, rank)
            assert mem["grads_bytes"] == int(want["gradients_bytes"][0]), (key, rank)
