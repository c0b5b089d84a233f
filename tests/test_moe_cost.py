"""Tier 1: the mixture-of-experts cost model against counted and published figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.cli import main
from planner.cost.evaluate import predict
from planner.cost.flops import attention_core_flops, model_flops_per_step
from planner.cost.moe_cost import blocks_hit
from planner.cost.params import (embedding_params, layer_params, moe_layer_params,
                                 stage_expert_params_per_rank, stage_params_per_rank)
from planner.hardware import load_cluster
from planner.moe import ffn_is_moe
from planner.plan import Plan
from planner.stages import rank_layer_ids, rank_layers, rank_moe_layers
from planner.transformer import load_transformer
from planner.validation import load_runs, shipped_set_path


@pytest.mark.parametrize("name", ["deepseek-v3", "tiny-moe", "qwen3-235b-a22b"])
@pytest.mark.parametrize("freq", [1, 2, 3])
def test_moe_layers_per_rank_match_the_cut(name, freq):
    """The closed form counts the MoE blocks of the blocks `rank_layer_ids` gives each rank,
    also with more chunks than blocks (empty chunks: tiny-moe at pp 2, v 3 holds layers 1, 3 on
    rank 0 and 0, 2 on rank 1; validate-local found the count off there)."""
    spec = load_transformer(name)
    spec = spec.model_copy(update={"moe": spec.moe.model_copy(update={"moe_layer_freq": freq})})
    L = spec.num_layers
    for pp in range(1, min(L, 12) + 1):
        for v in sorted(set(range(1, max(1, L // pp) + 1, 3)) | set(range(1, 7))):
            ranks = np.arange(pp)
            got = rank_moe_layers(spec, np.full(pp, pp), np.full(pp, v), ranks)
            want = [sum(ffn_is_moe(spec, i) for i in rank_layer_ids(L, pp, v, r)) for r in ranks]
            assert got.tolist() == want, (pp, v)


def test_qwen3_flops_per_token_match_modelzoo():
    """Megatron-MoE-ModelZoo's Qwen3-235B rows imply 147.3-148.2 GFLOP per token (TFLOP/s x
    GPUs x step / tokens; ../shared/validation/README.md, third set). Megatron counts causal
    attention at half the score FLOPs; we count it in full (the papers' MFU convention), so
    halving our attention core must land on theirs."""
    spec = load_transformer("qwen3-235b-a22b")
    ours = model_flops_per_step(spec, np.array([1]))[0] / spec.seq_len
    causal = ours - 3 * spec.num_layers * 0.5 * attention_core_flops(spec, np.array([1.0]))[0]
    assert causal / 1e9 == pytest.approx(147.9, rel=0.01)


def test_mixtral_most_loaded_shard_matches_megatrons_estimator():
    """Megatron-LM's theoretical memory estimator (megatron/training/theoretical_memory_usage.py,
    compute_weight_and_optimizer_memory) puts (transformer block / pp + embedding) / tp
    parameters on the most loaded shard, counting every expert on every tp rank: right exactly
    when ep x etp = tp (the issue's case where it is wrong is ep x etp != tp). Mixtral 8x7B,
    tp 2, ep 2, pp 4: our first stage (dense part + its experts) within 1% of that count; the
    estimator's weight + optimizer bytes (6 + 12/dp per parameter with the distributed
    optimizer) against ours, with the gradient width it assumes (4 bytes: Megatron accumulates
    bf16 gradients in fp32) in place of the planner's 2, within 5%."""
    spec = load_transformer("mixtral-8x7b")
    tp, pp, ep, dp = 2, 4, 2, 8
    h, V = spec.hidden_size, 32000
    attn = 2 * h * h * (1 + spec.num_kv_heads / spec.num_attention_heads)
    moe = 2 * h * (spec.moe.expert_ffn_hidden_size * spec.moe.num_experts * 1.5 + 1) + attn
    block = moe * spec.num_layers + h
    megatron = (block / pp + h * V) / tp  # padded vocab 32000 is already a multiple of 256
    layers = rank_layers(spec.num_layers, np.array([pp]), np.array([1]), np.array([0]))
    k = rank_moe_layers(spec, np.array([pp]), np.array([1]), np.array([0]))
    ours = (stage_params_per_rank(spec, np.array([tp]), layers, True, False, k)
            + stage_expert_params_per_rank(spec, np.array([ep]), np.array([1]), k))[0]
    assert ours == pytest.approx(megatron, rel=0.01)
    plan = Plan(dp=dp, tp=tp, pp=pp, ep=ep, micro_batch_size=1, global_batch_size=256,
                zero_stage=1, recompute="full", sequence_parallel=True)
    cluster = load_cluster("dgx_h100", 8, "deepspeed")  # ZeRO-1 as Megatron's: state sharded
    first = predict(spec, cluster, plan)["memory_by_stage"]["first"]
    state = first["weights_bytes"] + first["gradients_bytes"] + first["optimizer_bytes"]
    assert state + 2 * ours == pytest.approx(megatron * (6 + 12 / dp), rel=0.05)


def test_parameter_counts_of_an_moe_block():
    """An MoE block is its dense part plus num_experts experts; the model's total is the sum."""
    spec = load_transformer("mixtral-8x7b")
    dense_mlp = 3 * spec.hidden_size * spec.ffn_hidden_size
    assert moe_layer_params(spec) - layer_params(spec) == (
        spec.moe.num_experts * 3 * spec.hidden_size * spec.moe.expert_ffn_hidden_size
        + spec.hidden_size * spec.moe.num_experts - dense_mlp)
    assert embedding_params(spec) == spec.vocab_size * spec.hidden_size


def test_blocks_hit_bounds():
    """A token's k experts touch between 1 and min(k, blocks) blocks; round-robin routing
    touches fewer than learned routing, and both reach k when every block is one expert."""
    spec = load_transformer("deepseek-v3")
    rr = spec.model_copy(update={"moe": spec.moe.model_copy(update={"routing": "round_robin"})})
    for blocks in (2.0, 8.0, 64.0, 256.0):
        learned, robin = blocks_hit(spec, np.array([blocks]))[0], blocks_hit(rr, np.array([blocks]))[0]
        assert 1.0 <= robin <= learned <= min(8.0, blocks) + 1e-9
    assert blocks_hit(spec, np.array([256.0]))[0] == pytest.approx(8.0)


def _predict_json(capsys, *args) -> dict:
    assert main(["predict", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_for_an_moe_plan(capsys, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"dp": 16, "tp": 2, "pp": 8, "ep": 32, "micro_batch_size": 1,
                                "global_batch_size": 2048, "virtual_pipeline_stages": 4,
                                "schedule": "interleaved_1f1b", "zero_stage": 1,
                                "recompute": "selective", "sequence_parallel": True}))
    r = _predict_json(capsys, "-t", "qwen3-235b-a22b", "-c", "dgx_h100", "-n", "32",
                      "--plan", str(plan))
    for key in ("step_time_s", "step_time_range_s", "tokens_per_s", "mfu", "memory", "fits",
                "breakdown", "plan", "params", "active_params"):
        assert key in r
    assert r["plan"]["ep"] == 32 and r["breakdown"]["ep_comm_s"] > 0
    experts = r["memory"]["experts"]
    assert 0 < experts["weights_bytes"] < r["memory"]["weights_bytes"]
    assert 0 < experts["activations_bytes"] < r["memory"]["activations_bytes"]
    assert r["links"]["ep"]["size"] == 32 and r["links"]["ep"]["tier"] == "inter_node"
    dense = _predict_json(capsys, "-t", "llama3-8b", "-c", "dgx_h100", "--plan",
                          json.dumps({"dp": 8, "tp": 1, "pp": 1, "micro_batch_size": 1,
                                      "global_batch_size": 64}))
    assert "experts" not in dense["memory"] and dense["breakdown"]["ep_comm_s"] == 0
    assert not {"ep", "etp", "edp"} & set(dense["links"])


def test_bad_expert_parallel_plan_is_one_line(capsys):
    code = main(["predict", "-t", "mixtral-8x7b", "-c", "dgx_h100", "--plan",
                 json.dumps({"dp": 8, "tp": 1, "pp": 1, "ep": 3, "micro_batch_size": 1,
                             "global_batch_size": 64})])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "num_experts 8 is not divisible by ep=3" in err[0]
    assert "does not divide a pipeline stage's tp*cp*dp = 8" in err[0]


def test_ep_on_a_dense_model_is_refused(capsys):
    code = main(["predict", "-t", "llama3-8b", "-c", "dgx_h100", "--plan",
                 json.dumps({"dp": 8, "tp": 1, "pp": 1, "ep": 2, "micro_batch_size": 1,
                             "global_batch_size": 64})])
    assert code == 2 and "needs a mixture-of-experts spec" in capsys.readouterr().err


def test_moe_validation_set_accuracy_does_not_regress():
    """The shipped MoE runs (planner/validation/moe_runs.json; docs/accuracy.md logs the
    figures): recorded 11.9% mean, 28.6% max on all 13 (session 26: AutoModel's separate
    expert-bias kernels, attention-sink rescale and layout copies on the gpt-oss rows, its
    pipelined MoE stages kept gathered, Megatron's wgrad accumulation into main_grad, MLA's
    query / key assembly and AutoModel's unfused float32 RoPE, and the dropless tp4 ep8 row's
    load imbalance from the same source's forced / dropless pairs)."""
    from planner.validation import compare, summary
    s = summary(compare(load_runs(shipped_set_path("moe"))))
    assert s["count"] == 13
    assert s["mape_pct"] <= 11.9 + 0.5 and s["max_abs_error_pct"] <= 28.6 + 1.0, s


def test_deepep_kernel_efficiency_moves_dispatch_time_the_documented_way():
    """DeepEP's one-kernel dispatch at its measured share of the link (stack
    ep_link_efficiency, DeepEP docs/legacy.md) is faster than an NCCL all-to-all read off the
    ring curve with n-1 pairwise steps, for the same cross-node ep=32 plan; a lower efficiency
    is slower again."""
    from planner.hardware import load_cluster
    from planner.stack import load_stack
    spec = load_transformer("qwen3-235b-a22b")
    plan = Plan(dp=16, tp=2, pp=8, ep=32, micro_batch_size=1, global_batch_size=2048,
                virtual_pipeline_stages=4, schedule="interleaved_1f1b", zero_stage=1,
                sequence_parallel=True)
    base = load_stack("megatron-core-deepep")
    times = {}
    for label, eff in (("deepep", base.ep_link_efficiency), ("nccl", None), ("slow", 0.3)):
        cluster = load_cluster("dgx_h100", 32, base.model_copy(update={"ep_link_efficiency": eff}))
        times[label] = predict(spec, cluster, plan)["breakdown"]["ep_comm_s"]
    assert base.ep_link_efficiency == 0.86
    assert times["deepep"] < times["nccl"] < times["slow"], times


def test_expert_bias_costs_time_only_where_the_stack_adds_it_apart():
    """gpt-oss's expert biases (spec moe.expert_bias, from the HF import and the preset): NeMo
    AutoModel adds them in element-wise kernels of their own (stack expert_bias_bytes), which
    slows the step by the bytes it counts; Megatron-Core's TE GroupedLinear adds them in the
    GEMM (null), so the same plan's time does not move there; a spec without biases costs
    nothing extra on either stack."""
    from planner.cost.moe_cost import _expert_bias
    from planner.stack import load_stack
    spec = load_transformer("gpt-oss-120b")
    assert spec.moe.expert_bias
    plain = spec.model_copy(update={"moe": spec.moe.model_copy(update={"expert_bias": False})})
    plan = Plan(dp=64, tp=1, pp=1, ep=64, micro_batch_size=2, global_batch_size=512, zero_stage=3)
    step = {}
    for stack in ("nemo-automodel", "megatron-core"):
        cluster = load_cluster("dgx_h100", 8, stack)
        step[stack] = [predict(s, cluster, plan)["step_time_s"] for s in (spec, plain)]
    assert step["nemo-automodel"][0] > step["nemo-automodel"][1] * 1.02, step
    assert step["megatron-core"][0] == pytest.approx(step["megatron-core"][1], rel=1e-12)
    # The per-layer bytes: rows x (2f x (8 + 2) + h x (12 + 6)) through HBM.
    gpu, bias = load_cluster("dgx_h100", 1, "nemo-automodel").gpu, load_stack(
        "nemo-automodel").expert_bias_bytes
    rows = np.array([32768.0])
    f, b = _expert_bias(spec, gpu, rows, np.array([2 * 2880.0]), bias)
    moved = rows[0] * (2 * 2880 * 10 + 2880 * 18)
    assert f[0] + b[0] >= moved / (gpu.hbm_bandwidth_GBps * 1e9)
    assert _expert_bias(plain, gpu, rows, np.array([5760.0]), bias)[0][0] == 0.0


def test_attention_sinks_and_layout_copies_cost_only_outside_the_kernel():
    """gpt-oss under NeMo AutoModel's FlexAttention (stack nemo-automodel-flex): q, k, v and
    the output copied to and from the kernel's layout, and the sinks applied as a float32
    rescale of its output, both element-wise passes the step pays; Megatron-Core (TE's fused
    softmax takes the sinks; no copies) pays neither, and a spec without sinks pays only the
    copies."""
    from planner.stack import load_stack
    spec = load_transformer("gpt-oss-120b")
    assert spec.attention.sinks
    plain = spec.model_copy(update={"attention": spec.attention.model_copy(
        update={"sinks": False})})
    plan = Plan(dp=64, tp=1, pp=1, ep=64, micro_batch_size=2, global_batch_size=512, zero_stage=3)
    flex = load_stack("nemo-automodel-flex")
    none = flex.model_copy(update={"attention_layout_copy_bytes": 0.0})
    t = {}
    for label, stack in (("flex", flex), ("nocopy", none), ("mcore", "megatron-core")):
        c = load_cluster("dgx_h100", 8, stack)
        t[label] = [predict(s, c, plan)["step_time_s"] for s in (spec, plain)]
    assert t["flex"][0] > t["flex"][1] > t["nocopy"][1], t
    assert t["nocopy"][0] > t["nocopy"][1], t
    assert t["mcore"][0] == pytest.approx(t["mcore"][1], rel=1e-12), t


def test_mla_assembly_and_unfused_rope_cost_the_documented_way():
    """MLA's queries and keys are assembled from their no-rope and rotary parts by a copy on
    every stack (stack mla_assembly_bytes, 4 per element each way); NeMo AutoModel's
    DeepSeek-V3 attention also rotates q_pe in float32 complex arithmetic outside any fused
    kernel (mla_rope_*_bytes 28). Each costs time on an MLA model and none on a GQA one."""
    from planner.stack import load_stack
    am = load_stack("nemo-automodel")
    assert am.mla_assembly_bytes == 4.0 and am.mla_rope_fwd_bytes == am.mla_rope_bwd_bytes == 28.0
    no_rope = am.model_copy(update={"mla_rope_fwd_bytes": 0.0, "mla_rope_bwd_bytes": 0.0})
    bare = no_rope.model_copy(update={"mla_assembly_bytes": 0.0})
    plan = Plan(dp=64, tp=1, pp=4, ep=64, micro_batch_size=1, global_batch_size=512,
                virtual_pipeline_stages=8, schedule="interleaved_1f1b", zero_stage=2,
                recompute="full")
    dense = Plan(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=64, zero_stage=3)
    for spec, pl, nodes, slower in ((load_transformer("deepseek-v3"), plan, 32, True),
                                    (load_transformer("llama3-8b"), dense, 1, False)):
        t = [predict(spec, load_cluster("dgx_h100", nodes, st), pl)["step_time_s"]
             for st in (am, no_rope, bare)]
        if slower:
            assert t[0] > t[1] > t[2], t
        else:
            assert t[0] == pytest.approx(t[2], rel=1e-12), t


def test_wgrad_accumulation_fusion_costs_where_expert_gemms_are_small():
    """Megatron's gradient-accumulation fusion (stack wgrad_accumulates_in_gemm): each
    weight-gradient GEMM reads and writes the fp32 main_grad buffer (8 bytes per element, not
    one 2-byte write). Qwen3-235B at tp 4, ep 8 gives each of a rank's 16 experts 512 rows a
    micro-batch, so its wgrad GEMMs turn memory-bound and the step slows; the flag off is
    faster; a dense 8B block's large GEMMs stay compute-bound and hardly move (< 0.5%)."""
    from planner.stack import load_stack
    base = load_stack("megatron-core-deepep")
    assert base.wgrad_accumulates_in_gemm and base.grad_reduce_fp32
    moe = Plan(dp=8, tp=4, pp=8, ep=8, micro_batch_size=1, global_batch_size=2048,
               virtual_pipeline_stages=4, schedule="interleaved_1f1b", zero_stage=1,
               sequence_parallel=True)
    dense = Plan(dp=4, tp=2, pp=1, micro_batch_size=1, global_batch_size=512, zero_stage=1,
                 sequence_parallel=True)
    for spec, plan, nodes, lo in ((load_transformer("qwen3-235b-a22b"), moe, 32, 1.01),
                                  (load_transformer("llama3-8b"), dense, 1, 1.0)):
        t = {}
        for flag in (True, False):
            stack = base.model_copy(update={"wgrad_accumulates_in_gemm": flag})
            t[flag] = predict(spec, load_cluster("dgx_h100", nodes, stack), plan)["step_time_s"]
        assert t[True] >= t[False] * lo, (spec.name, t)
        if lo == 1.0:
            assert t[True] <= t[False] * 1.005, t


def test_load_imbalance_slows_time_but_not_stored_activations():
    """moe.load_imbalance sets the critical path (the most loaded rank of every block), so
    step time grows with it; which rank is most loaded changes from block to block, so the
    activations a rank stores over its stage stay at the balanced share and only the one
    dispatching block's buffers grow (the dropless tp4 ep8 ModelZoo row ran within 80 GiB)."""
    spec = load_transformer("qwen3-235b-a22b")
    plan = Plan(dp=8, tp=4, pp=8, ep=8, micro_batch_size=1, global_batch_size=2048,
                virtual_pipeline_stages=4, schedule="interleaved_1f1b", zero_stage=1,
                sequence_parallel=True)
    cluster = load_cluster("dgx_h100", 32, "megatron-core-deepep")
    out = {}
    for imb in (1.0, 1.79):
        s = spec.model_copy(update={"moe": spec.moe.model_copy(update={"load_imbalance": imb})})
        out[imb] = predict(s, cluster, plan)
    assert out[1.79]["step_time_s"] > out[1.0]["step_time_s"] * 1.1
    grow = out[1.79]["memory"]["peak_bytes"] / out[1.0]["memory"]["peak_bytes"]
    assert out[1.79]["memory"]["activations_bytes"] == out[1.0]["memory"]["activations_bytes"]
    assert 1.0 <= grow < 1.05, grow


def test_unstated_recompute_takes_the_lightest_that_fits():
    """A run whose source does not state recompute (gpt-oss-20b on 8 H100) is predicted with
    the lightest of none / selective / full under which the memory model fits; a stated one
    keeps its plan."""
    from planner.validation import run_cluster, run_plan, run_transformer
    runs = {r.name: r for r in load_runs(shipped_set_path("moe"))}
    r = runs["automodel-gpt_oss_20b-8gpu-dgx_h100-bf16-pp1ep8"]
    assert not r.recompute_stated and r.plan.recompute == "none"
    spec = run_transformer(r)
    modes = ("none", "selective", "full")
    # Its stack's bf16 model and Adam state fit it without recompute (AutoModel's default:
    # activation_checkpointing False); with an fp32 master beside the bf16 weights
    # (Megatron-style, 10 bytes more per parameter) it would need recompute.
    heavier = run_cluster(r).stack.model_copy(update={"optimizer_state": "fp32_master"})
    for cluster, lightest in ((run_cluster(r), "none"), (run_cluster(r, heavier), None)):
        plan = run_plan(r, spec, cluster)
        assert predict(spec, cluster, plan)["fits"]
        assert plan.recompute == lightest if lightest else plan.recompute != "none"
        for mode in modes[:modes.index(plan.recompute)]:
            assert not predict(spec, cluster,
                               r.plan.model_copy(update={"recompute": mode}))["fits"]
    stated = runs["automodel-gpt_oss_120b-64gpu-dgx_h100-bf16-pp1ep64"]
    assert stated.recompute_stated
    assert run_plan(stated, run_transformer(stated), run_cluster(stated)) == stated.plan
