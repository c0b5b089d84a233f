"""planner/stages.py, the one rank -> pipeline stage -> blocks mapping: its closed form against
its own enumeration, the executor's stage modules against it, the global-rank mapping against the
topology's process groups, and the claim that rank 1 bounds every middle rank (which the
vectorized memory and step-time models rely on) against every stage of random plans."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cost.memory import memory_breakdown, stage_memory
from planner.cost.step_time import shapes
from planner.hardware import load_cluster
from planner.plan import ORDERS, Plan
from planner.plan_arrays import PlanArrays
from planner.stages import (heaviest_middle, holds_embedding, holds_head, layer_split,
                            pipeline_rank, rank_layer_ids, rank_layers)
from planner.topology import rank_groups
from planner.validity import plan_problems
from planner.transformer import TransformerSpec, load_transformer


def test_closed_form_matches_enumeration():
    """rank_layers (vectorized, used by the cost model) == len(rank_layer_ids) (used by the
    executor) for every split of up to 40 blocks over up to 8 ranks x 4 virtual stages, the
    first and last chunks empty too (pp * v up to layers + 2)."""
    for layers in range(1, 41):
        for pp in range(1, 9):
            for vpp in range(1, 5):
                if pp * vpp > layers + 2:
                    continue
                counts = rank_layers(layers, np.full(pp, pp), np.full(pp, vpp), np.arange(pp))
                ids = [rank_layer_ids(layers, pp, vpp, r) for r in range(pp)]
                assert counts.tolist() == [len(i) for i in ids], (layers, pp, vpp)
                assert sorted(i for r in ids for i in r) == list(range(layers))


def test_layer_split_gives_extra_blocks_to_inner_chunks():
    """Llama 3 405B: 126 blocks over 16 stages, the first and last lighter (Llama Team 2024,
    section 3.3.2): 14 stages of 8 and two of 7."""
    sizes = layer_split(126, 16)
    assert sizes[0] == sizes[-1] == 7 and sizes[1:-1] == [8] * 14


def test_two_chunks_more_than_blocks_leave_only_the_ends_empty():
    """Qwen3-235B's 94 blocks over pp 32 x v 3 = 96 chunks (Megatron-MoE-ModelZoo, with
    --account-for-embedding-in-pipeline-split and --account-for-loss-in-pipeline-split): the
    first chunk holds only the embedding, the last only the head, every other one block; one
    chunk fewer than that is no plan."""
    sizes = layer_split(94, 96)
    assert sizes[0] == sizes[-1] == 0 and sizes[1:-1] == [1] * 94
    spec = load_transformer("qwen3-235b-a22b")
    cluster = load_cluster("dgx_h100", 32)
    ok = Plan(dp=4, tp=2, pp=32, micro_batch_size=1, global_batch_size=2048,
              virtual_pipeline_stages=3, schedule="interleaved_1f1b", ep=8)
    assert not plan_problems(ok, spec, cluster)
    bad = Plan(**{**ok.to_json_dict(), "virtual_pipeline_stages": 4})  # 128 chunks
    assert [p for p in plan_problems(bad, spec, cluster) if "needs a block" in p]


@pytest.mark.parametrize("pp,vpp,layers", [(2, 1, 5), (3, 1, 7), (2, 2, 7), (4, 1, 6),
                                             (2, 3, 4), (3, 2, 5)])
def test_executor_stage_modules_hold_what_the_planner_counts(pp, vpp, layers):
    """Cut the executor's model into this plan's stages: each pipeline rank's modules hold exactly
    the blocks planner.stages assigns it, the embedding only on rank 0 and the head only on
    rank pp - 1."""
    torch = pytest.importorskip("torch")
    from executor.parallel.pipeline import cut_stage, stage_indices
    from executor.parallelize import build_model
    spec = load_transformer("tiny").model_copy(update={"num_layers": layers})
    plan = Plan(dp=1, tp=1, pp=pp, micro_batch_size=1, global_batch_size=4,
                virtual_pipeline_stages=vpp,
                schedule="interleaved_1f1b" if vpp > 1 else "1f1b")
    with torch.device("meta"):
        whole = build_model(spec, plan, seed=0)
    for r in range(pp):
        parts = [cut_stage(whole, plan, s) for s in stage_indices(plan, r)]
        held = sorted(int(k) for part in parts for k in part.layers.keys())
        assert held == sorted(rank_layer_ids(layers, pp, vpp, r))
        assert len(held) == int(rank_layers(layers, np.array([pp]), np.array([vpp]),
                                            np.array([r]))[0])
        assert any(p.tok_embeddings is not None for p in parts) == bool(holds_embedding(r))
        assert any(p.output is not None for p in parts) == bool(holds_head(pp, r))


@pytest.mark.parametrize("order", ORDERS)
def test_pipeline_rank_matches_topology_groups(order):
    """The global rank -> pipeline rank map against the pp groups the topology (and, through
    the same mesh_dims, the executor's DeviceMesh) builds: rank g is at position
    pipeline_rank(g) of its pp group, for every rank order."""
    plan = Plan(dp=2, tp=2, pp=3, cp=2, micro_batch_size=1, global_batch_size=6, order=order)
    sizes = {"tp": plan.tp, "cp": plan.cp, "dp": plan.dp, "pp": plan.pp}
    for line in rank_groups(sizes, order, "pp").tolist():
        for pos, g in enumerate(line):
            assert pipeline_rank(plan, g) == pos


def test_pipeline_rank_rejects_outside_ranks():
    plan = Plan(dp=1, tp=1, pp=2, micro_batch_size=1, global_batch_size=2)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        pipeline_rank(plan, 2)


CLUSTER = load_cluster("dgx_a100_80g", num_nodes=8)


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(3, 30), pp=st.integers(3, 8), vpp=st.integers(1, 3),
       m_mult=st.integers(1, 4), sched=st.sampled_from(["1f1b", "gpipe", "interleaved_1f1b"]),
       recompute=st.sampled_from(["none", "selective", "full"]), zero=st.integers(0, 3))
def test_rank_one_bounds_every_middle_rank(layers, pp, vpp, m_mult, sched, recompute, zero):
    """Every stage's bytes, computed one by one: no middle rank exceeds rank 1 in any component,
    and the most-loaded figure (`fits`, the search) is the maximum over all stages."""
    vpp = vpp if sched == "interleaved_1f1b" else 1
    if pp * vpp > layers:
        return
    spec = TransformerSpec(name="t", num_layers=layers, hidden_size=1024,
                           num_attention_heads=16, num_kv_heads=16, ffn_hidden_size=4096,
                           vocab_size=50257, seq_len=2048, mlp="gelu", tied_embeddings=True)
    gbs = pp * m_mult * 2
    plan = Plan(dp=2, tp=4, pp=pp, micro_batch_size=1, global_batch_size=gbs,
                virtual_pipeline_stages=vpp, schedule=sched, recompute=recompute,
                zero_stage=zero)
    P = PlanArrays.from_plans([plan])
    sh = shapes(CLUSTER, P)
    flash = CLUSTER.stack.flash_attention
    per = [stage_memory(spec, CLUSTER, P, sh, flash, np.array([s]), s == 0, s == pp - 1)
           for s in range(pp)]
    mid = int(heaviest_middle(np.array([pp]))[0])
    for s in range(1, pp - 1):
        for k, v in per[s].items():
            assert v[0] <= per[mid][k][0] * (1 + 1e-12), (s, k)
    peak = memory_breakdown(spec, CLUSTER, P, sh, flash)["peak_bytes"][0]
    assert peak == pytest.approx(max(p["peak_bytes"][0] for p in per), rel=1e-12)


def test_interleaved_peak_is_warmup_plus_one_on_an_even_split():
    """With every chunk the same size, the walked peak is Megatron-LM's warm-up count plus one
    chunk forward, each 1/v of the stage's blocks (the formula the memory model used before
    chunks could differ)."""
    from planner.stages import interleaved_peak_bytes
    for pp, vpp, per in ((2, 2, 3), (4, 2, 1), (3, 3, 2), (4, 4, 2)):
        layers = pp * vpp * per
        for m in (pp, 2 * pp, 4 * pp):
            for rank in range(pp):
                held = interleaved_peak_bytes(layers, np.array([pp]), np.array([vpp]),
                                              np.array([rank]), np.array([m]), 1.0, 0.0, 0.0)
                chunks = min(m * vpp, 2 * (pp - rank - 1) + (vpp - 1) * pp + 1)
                assert held[0] == chunks * per, (pp, vpp, m, rank)


def test_interleaved_peak_after_an_empty_chunk_frees_nothing():
    """4 blocks over pp 2 x v 3 (chunks 0 and 5 empty), 8 micro-batches, last rank: the warm-up
    holds chunks 1, 1, 3, 3 (4 blocks); the first backwards free the head-only chunk 5, so the
    next forward of chunk 1 raises the peak to 5 blocks, with no head activations left: what
    the executor saves there (tests/test_executor_equivalence.py, pp2-v3-empty-ends)."""
    from planner.stages import interleaved_peak_bytes
    args = (4, np.array([2]), np.array([3]), np.array([1]), np.array([8]))
    assert interleaved_peak_bytes(*args, 1.0, 0.0, 0.0)[0] == 5
    # a head far larger than a block peaks with the head in flight: 4 blocks and one head
    assert interleaved_peak_bytes(*args, 1.0, 0.0, 100.0)[0] == 104
