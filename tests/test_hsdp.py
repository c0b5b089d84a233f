"""Hybrid sharding (Plan.dp_shard, planner/zero_layout.py): where the shard and replica groups
land, what the cost and memory model do with them, the checks on bad plans, the export to each
framework, and the search's hybrid candidates. (Executor equivalence with one process, and its
groups against these, are in tests/test_executor_equivalence.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import predict_cli

from planner.cost.evaluate import predict
from planner.export import export, export_problems
from planner.hardware import load_cluster
from planner.plan import ORDERS, Plan
from planner.schema import InputError
from planner.search.search import hsdp_node, search
from planner.search.space import Space
from planner.stack import load_stack
from planner.topology import Topology, rank_groups
from planner.transformer import load_transformer
from planner.validity import plan_problems
from planner.zero_layout import hsdp_meshes, zero_rank_groups

Z3 = dict(tp=1, pp=1, micro_batch_size=1, precision="bf16", zero_stage=3, recompute="full")


def test_full_sharding_is_the_dp_cp_group():
    """dp_shard = dp: the shard group is dp x cp (the same array) and replicas have one rank,
    in every rank order."""
    sizes = {"tp": 2, "cp": 2, "dp": 4, "pp": 2}
    for order in ORDERS:
        assert np.array_equal(zero_rank_groups(sizes, order, 4, "zshard"),
                              rank_groups(sizes, order, "dpcp"))
        assert zero_rank_groups(sizes, order, 4, "zrep").shape == (32, 1)


def test_shard_and_replica_groups_partition_the_dp_cp_group():
    """Every dp x cp group splits into dp / dp_shard shard groups of cp * dp_shard ranks, and
    each of their members' replica group holds the same column of every shard group."""
    sizes = {"tp": 2, "cp": 2, "dp": 8, "pp": 1}
    for order in ORDERS:
        dpcp = [set(g) for g in rank_groups(sizes, order, "dpcp").tolist()]
        meshes = hsdp_meshes(sizes, order, 2)
        assert meshes.shape == (2, 4, 4)
        for mesh in meshes.tolist():
            members = {r for row in mesh for r in row}
            assert members in dpcp
            assert sorted(len(set(row)) for row in mesh) == [4] * 4
        shard = zero_rank_groups(sizes, order, 2, "zshard")
        rep = zero_rank_groups(sizes, order, 2, "zrep")
        assert shard.shape == (8, 4) and rep.shape == (8, 4)
        assert sorted(shard.ravel().tolist()) == sorted(rep.ravel().tolist()) == list(range(32))


def test_a_node_local_shard_stays_on_nvlink():
    """Default rank order, 4 nodes of 8: a shard group of 8 dp ranks is one node (NVLink), its
    replicas span the 4 nodes (InfiniBand)."""
    topo = Topology(load_cluster("dgx_h100", 4))
    links = topo.zero_links(1, 1, 32, 1, "tp-cp-dp-pp", 8)
    assert (links["zshard"].size, links["zshard"].tier) == (8, "intra_node")
    assert (links["zrep"].size, links["zrep"].tier) == (4, "inter_node")
    full = topo.zero_links(1, 1, 32, 1, "tp-cp-dp-pp")
    assert (full["zshard"].size, full["zshard"].tier, full["zrep"].size) == (32, "inter_node", 1)


def _fsdp(dp_shard: int | None, stack: str = "fsdp", model: str = "llama3-8b"):
    c = load_cluster("dgx_a100_80g", 8, stack)
    plan = Plan(dp=64, global_batch_size=64, dp_shard=dp_shard, **Z3)
    return predict(load_transformer(model), c, plan)


def test_memory_shards_over_the_shard_group_only():
    """Weights, gradients and optimizer state at rest are 1 / dp_shard of the model with
    hybrid sharding, 1 / dp without: 8x more per GPU for a shard group of 8 of 64."""
    full, hybrid = _fsdp(None), _fsdp(8)
    for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes"):
        assert hybrid["memory"][k] == pytest.approx(8 * full["memory"][k], rel=1e-9)
    assert hybrid["memory"]["activations_bytes"] == full["memory"]["activations_bytes"]


def test_per_micro_batch_gathers_move_onto_nvlink():
    """Without overlap (a copy of the fsdp stack with grad_overlap off) every FSDP call is
    exposed. ZeRO-3 gathers each block's weights again for every micro-batch: with 8
    micro-batches, hybrid sharding over the 8 GPUs of a node keeps those 17 gathers and
    scatters per block on NVLink and sends only the 1/8 gradient shard's all-reduce across
    nodes, so less is exposed. With one micro-batch it is the other way round: a ring over all
    64 ranks pools each node's 8 NICs, while each replica group's all-reduce has one NIC per
    node (planner/topology.py), and that costs more than the gathers it saves."""
    stack = load_stack("fsdp").model_copy(update={"grad_overlap": False})
    c = load_cluster("dgx_a100_80g", 8, stack)
    spec = load_transformer("llama3-8b")

    def dp_comm(gbs: int, shard: int | None) -> tuple[float, dict]:
        r = predict(spec, c, Plan(dp=64, global_batch_size=gbs, dp_shard=shard, **Z3))
        return r["breakdown"]["dp_comm_s"], r
    (full, rf), (hybrid, rh) = dp_comm(512, None), dp_comm(512, 8)
    # 0.86 of it: the 64-rank ring pays its network latency at 7 of 63 steps (comms.ring_latency)
    assert hybrid < 0.9 * full
    assert rh["step_time_s"] < rf["step_time_s"]
    assert rh["breakdown"]["compute_s"] == rf["breakdown"]["compute_s"]
    assert dp_comm(64, 8)[0] > dp_comm(64, None)[0]


def test_no_hybrid_plan_changes_no_figure():
    """dp_shard = dp is the plan without it: the same prediction, key for key."""
    a, b = _fsdp(None), _fsdp(64)
    assert a["step_time_s"] == b["step_time_s"] and a["memory"] == b["memory"]
    assert a["plan"]["dp_shard"] is None and b["plan"]["dp_shard"] == 64


@pytest.mark.parametrize("changes,words", [
    ({"dp_shard": 3}, "dp_shard=3 does not divide dp=8"),
    ({"dp_shard": 16}, "dp_shard=16 does not divide dp=8"),
    ({"dp_shard": 4, "zero_stage": 0}, "zero_stage 0 shards nothing"),
    ({"dp_shard": 4, "grad_sync": "tree"}, "set grad_sync to ring"),
])
def test_bad_hybrid_plans_say_why(changes, words):
    plan = Plan(**{**dict(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=8,
                          zero_stage=3), **changes})
    problems = plan_problems(plan, load_transformer("llama3-8b"), load_cluster("dgx_h100", 1))
    assert any(words in p for p in problems), problems


def test_hybrid_sharding_of_experts_is_refused():
    plan = Plan(dp=8, tp=1, pp=1, ep=8, micro_batch_size=1, global_batch_size=8, zero_stage=3,
                dp_shard=4)
    problems = plan_problems(plan, load_transformer("mixtral-8x7b"), load_cluster("dgx_h100", 1))
    assert any("not modelled" in p for p in problems), problems


def test_cli_rejects_a_bad_dp_shard_in_one_line():
    out = predict_cli(dict(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=8,
                           zero_stage=3, dp_shard=0))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "dp_shard" in lines[0], out.stderr


def test_export_says_hybrid_sharding_in_each_framework():
    spec = load_transformer("llama3-8b")
    plan = Plan(dp=32, global_batch_size=32, dp_shard=8, **Z3)
    toml, _ = export(plan, spec, load_stack("torchtitan"), "torchtitan")
    assert "data_parallel_replicate_degree = 4" in toml
    assert "data_parallel_shard_degree = 8" in toml
    args, _ = export(plan, spec, load_stack("megatron-core"), "megatron")
    assert "--num-distributed-optimizer-instances 4" in args
    # DeepSpeed has no hybrid sharding today (MiCS was removed): refused, saying why.
    assert any("MiCS" in p for p in export_problems(plan, spec, "deepspeed"))
    with pytest.raises(InputError, match="dp_shard=8"):
        export(plan, spec, load_stack("deepspeed"), "deepspeed")


def test_search_plans_hybrid_sharding_inside_a_domain():
    """Several nodes and an FSDP2 stack: every layout whose dp ranks of one node are at least
    2 and fewer than dp gets a hybrid twin; the DeepSpeed stack and one node get none."""
    spec = load_transformer("llama3-8b")
    c = load_cluster("dgx_h100", 4, "torchtitan")
    assert hsdp_node(c) == 8
    assert hsdp_node(load_cluster("dgx_h100", 1, "torchtitan")) is None
    assert hsdp_node(load_cluster("dgx_a100_80g", 4, "deepspeed")) is None
    lays = Space.build(c.num_gpus, spec.num_layers, 64, "bf16", None, 8).layouts
    hybrid = lays[lays[:, 6] < lays[:, 2]]
    assert len(hybrid) and np.all(hybrid[:, 6] * hybrid[:, 0] * hybrid[:, 1] == 8)
    res = search(spec, c, 64)
    shards = {res.plan(i).zero_shard < res.plan(i).dp for i in range(min(len(res.step_time_s),
                                                                         2000))}
    assert shards == {True, False}
