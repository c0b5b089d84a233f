"""One test per built-in stack: a sourced behaviour of that stack moves a prediction the way its
source says (hardware_profiles/stacks/*.json). Each flips one field of the stack and compares."""

from __future__ import annotations

import pytest

from planner.cost.evaluate import predict
from planner.hardware import load_cluster
from planner.plan import Plan
from planner.transformer import load_transformer
from planner.stack import load_stack

L8 = "llama3-8b"


def _predict(stack, cluster="dgx_h100", nodes=1, model=L8, **plan):
    base = dict(dp=1, tp=1, pp=1, micro_batch_size=1, global_batch_size=8, precision="bf16")
    base.update(plan)
    c = load_cluster(cluster, nodes, stack)
    return predict(load_transformer(model), c, Plan(**base))


def _flip(name: str, **fields):
    return load_stack(name).model_copy(update=fields)


def test_megatron_core_tp_overlap_lowers_exposed_tp_time():
    """Megatron-Core tp_comm_overlap (TE userbuffers): TP collectives hide behind the GEMMs."""
    off = _predict(_flip("megatron-core", tp_comm_overlap=False), tp=8, sequence_parallel=True)
    on = _predict(_flip("megatron-core", tp_comm_overlap=True), tp=8, sequence_parallel=True)
    assert on["breakdown"]["tp_comm_s"] < 0.5 * off["breakdown"]["tp_comm_s"]
    assert on["step_time_s"] < off["step_time_s"]


def test_megatron_lm_2021_unfused_attention_raises_long_sequence_time():
    """Megatron-LM 2021's unfused softmax puts the s x s scores through HBM: the longer the
    sequence, the more it costs against a fused (FlashAttention) kernel."""
    spec = load_transformer("gpt3-1.3b").model_copy(update={"seq_len": 8192})
    c_unf = load_cluster("dgx_a100_80g", 1, "megatron-lm-2021")
    c_fa = c_unf.model_copy(update={"stack": _flip("megatron-lm-2021",
                                                   attention_kernel="flash_attention_2")})
    plan = Plan(dp=8, tp=1, pp=1, micro_batch_size=1, global_batch_size=8, recompute="full")
    assert predict(spec, c_unf, plan)["step_time_s"] > 1.2 * predict(spec, c_fa, plan)["step_time_s"]


def test_fsdp_eager_elementwise_costs_more_than_fused():
    """Eager PyTorch norms / RoPE / SwiGLU move several times the bytes of fused kernels
    (stacks/fsdp.json elementwise_traffic, counted from the ops)."""
    eager = _predict("fsdp", dp=8, global_batch_size=16, micro_batch_size=2, zero_stage=3)
    fused = _predict(_flip("fsdp", elementwise_traffic=1.0), dp=8, global_batch_size=16,
                     micro_batch_size=2, zero_stage=3)
    assert eager["breakdown"]["compute_s"] > fused["breakdown"]["compute_s"]


def test_deepspeed_grad_overlap_off_raises_dp_time():
    """DeepSpeed 2021 / Megatron-LM 2021 reduce gradients after backward (not overlapped)."""
    kw = dict(cluster="dgx_a100_80g", nodes=2, dp=16, global_batch_size=16)
    off = _predict("deepspeed", **kw)
    on = _predict(_flip("deepspeed", grad_overlap=True), **kw)
    assert off["breakdown"]["dp_comm_s"] > on["breakdown"]["dp_comm_s"]


def test_deepspeed_param_gather_overlap_lowers_zero1_gather():
    """ZeRO-1's parameter all-gather behind the next forward (Megatron overlap_param_gather)."""
    kw = dict(cluster="dgx_a100_80g", nodes=2, dp=16, global_batch_size=64, zero_stage=1)
    off = _predict("deepspeed", **kw)
    on = _predict(_flip("deepspeed", param_gather_overlap=True), **kw)
    assert on["breakdown"]["dp_comm_s"] < off["breakdown"]["dp_comm_s"]


def test_torchtitan_fa2_slower_than_fa3_on_h100_long_sequence():
    """FlashAttention-2 on Hopper reaches ~35% of peak where FA3 reaches up to 75% (Shah et al.
    2024): the GPU profile's attention_efficiency_by_kernel."""
    spec = load_transformer(L8).model_copy(update={"seq_len": 32768})
    plan = Plan(dp=1, tp=8, pp=1, micro_batch_size=1, global_batch_size=1, recompute="full")
    fa2 = predict(spec, load_cluster("dgx_h100", 1, "torchtitan"), plan)
    fa3 = predict(spec, load_cluster("dgx_h100", 1, _flip("torchtitan",
                                                          attention_kernel="flash_attention_3")),
                  plan)
    assert fa2["breakdown"]["compute_s"] > 1.1 * fa3["breakdown"]["compute_s"]


def test_torchtitan_fp8_casts_shrink_small_model_fp8_gain():
    """torchao tensorwise float8 casts (amax pass + cast) eat part of the fp8 GEMM gain."""
    kw = dict(dp=8, global_batch_size=16, micro_batch_size=2, zero_stage=3, precision="fp8")
    with_casts = _predict("torchtitan", **kw)
    no_casts = _predict(_flip("torchtitan", fp8_cast_bytes_per_element=0.0), **kw)
    assert with_casts["step_time_s"] > no_casts["step_time_s"]


def test_overlap_slowdown_is_not_free():
    """Hidden FSDP gathers still cost the compute they run beside (Lee et al. 2025)."""
    c = load_cluster("dgx_h100", 1, "torchtitan")
    free = c.model_copy(update={"gpu": c.gpu.model_copy(update={"overlap_compute_slowdown": 0.0})})
    spec = load_transformer(L8)
    plan = Plan(dp=8, tp=1, pp=1, micro_batch_size=2, global_batch_size=16, zero_stage=3)
    assert predict(spec, c, plan)["breakdown"]["dp_comm_s"] > \
        predict(spec, free, plan)["breakdown"]["dp_comm_s"]


def test_megatron_core_sync_dp_exposes_the_distributed_optimizer():
    """megatron-core-sync-dp (FlagPerf's launch: no --overlap-grad-reduce /
    --overlap-param-gather) exposes the gradient reduce-scatter and parameter all-gather that
    megatron-core hides behind compute; nothing else changes."""
    over = _predict("megatron-core", nodes=4, dp=16, tp=2, global_batch_size=128, zero_stage=1,
                    sequence_parallel=True)
    sync = _predict("megatron-core-sync-dp", nodes=4, dp=16, tp=2, global_batch_size=128,
                    zero_stage=1, sequence_parallel=True)
    assert sync["breakdown"]["dp_comm_s"] > 3 * over["breakdown"]["dp_comm_s"]
    assert sync["breakdown"]["compute_s"] == over["breakdown"]["compute_s"]
    assert sync["step_time_s"] > over["step_time_s"]


def test_cp_block_overhead_adds_to_context_parallel_plans_only():
    """The calibrated per-block framework time of context parallelism (stack
    cp_block_overhead_s, fitted by `paraplan calibrate` on a cp=2 probe) is paid by cp > 1 plans,
    once per block per micro-batch (again for the recomputed forward), and by no other plan."""
    stack = load_stack("megatron-core")
    slow = stack.model_copy(update={"cp_block_overhead_s": 1e-3})
    cp = dict(nodes=1, cp=2, dp=4, global_batch_size=8)
    base, more = _predict(stack, **cp), _predict(slow, **cp)
    blocks_x_mb = 32 * 8 // 4  # 32 blocks, 2 micro-batches per rank of 4 dp replicas
    assert more["breakdown"]["cp_comm_s"] - base["breakdown"]["cp_comm_s"] == \
        pytest.approx(blocks_x_mb * 1e-3, rel=1e-6)
    dp_only = dict(nodes=1, dp=8, global_batch_size=8)
    assert _predict(slow, **dp_only)["step_time_s"] == _predict(stack, **dp_only)["step_time_s"]


def test_recompute_block_overhead_adds_to_recomputing_plans_only():
    """The calibrated framework time of a checkpointed region (stack
    recompute_block_overhead_s, fitted by `paraplan calibrate` on a full-recompute probe) is
    paid once per block per micro-batch by selective and full recompute, by no plan without."""
    stack = load_stack("megatron-core")
    slow = stack.model_copy(update={"recompute_block_overhead_s": 1e-3})
    blocks_x_mb = 32 * 8 // 8  # 32 blocks, 1 micro-batch per rank of 8 dp replicas
    for mode in ("selective", "full"):
        plan = dict(nodes=1, dp=8, global_batch_size=8, recompute=mode)
        assert _predict(slow, **plan)["breakdown"]["compute_s"] - \
            _predict(stack, **plan)["breakdown"]["compute_s"] == \
            pytest.approx(blocks_x_mb * 1e-3, rel=1e-6)
    plain = dict(nodes=1, dp=8, global_batch_size=8)
    assert _predict(slow, **plain)["step_time_s"] == _predict(stack, **plain)["step_time_s"]


def test_fsdp_unit_step_overhead_is_paid_once_per_unit_per_step():
    """The calibrated per-step framework time of an FSDP unit (stack fsdp_unit_step_overhead_s,
    fitted by `paraplan calibrate` on a ZeRO-2 probe beside the ZeRO-3 one: the sharded update
    of its parameters) is paid once per unit (32 blocks and the root) per step by every ZeRO
    stage, whatever the micro-batch count, and by no plan without ZeRO."""
    stack = load_stack("torchtitan")
    slow = stack.model_copy(update={"fsdp_unit_step_overhead_s": 1e-3})
    for zero in (1, 2, 3):
        for m in (1, 4):
            plan = dict(nodes=1, dp=8, global_batch_size=8 * m, zero_stage=zero)
            assert _predict(slow, **plan)["breakdown"]["dp_comm_s"] - \
                _predict(stack, **plan)["breakdown"]["dp_comm_s"] == \
                pytest.approx(33 * 1e-3, rel=1e-6), (zero, m)
    plain = dict(nodes=1, dp=8, global_batch_size=8)
    assert _predict(slow, **plain)["step_time_s"] == _predict(stack, **plain)["step_time_s"]


def test_grad_reduce_fp32_doubles_gradient_bytes_and_their_collective():
    """Megatron-LM with --bf16 (megatron-core-sync-dp, FlagPerf's scripts) accumulates and
    reduces gradients in fp32; NVIDIA's performance recipes (megatron-core) reduce in bf16.
    fp16 plans keep fp16 gradients either way."""
    kw = dict(cluster="dgx_h100", nodes=2, dp=16, global_batch_size=16, zero_stage=1)
    bf16 = _predict(_flip("megatron-core-sync-dp", grad_reduce_fp32=False), **kw)
    fp32 = _predict("megatron-core-sync-dp", **kw)
    assert fp32["memory"]["gradients_bytes"] == pytest.approx(
        2 * bf16["memory"]["gradients_bytes"])
    assert fp32["breakdown"]["dp_comm_s"] > 1.3 * bf16["breakdown"]["dp_comm_s"]
    half = dict(kw, precision="fp16")
    assert (_predict("megatron-core-sync-dp", **half)["step_time_s"]
            == _predict(_flip("megatron-core-sync-dp", grad_reduce_fp32=False),
                        **half)["step_time_s"])


def test_torchtitan_op_level_checkpointing_saves_less_than_attention_core():
    """torchtitan's op-level selective checkpointing keeps the block input, the attention
    output and every second matmul output; Megatron-LM's selective recompute redoes only the
    attention core and keeps the rest, several times more."""
    kw = dict(dp=8, global_batch_size=8, zero_stage=3, recompute="selective")
    op = _predict("torchtitan", **kw)["memory"]["activations_bytes"]
    core = _predict(_flip("torchtitan", selective_recompute="attention_core"),
                    **kw)["memory"]["activations_bytes"]
    assert op < 0.6 * core


def test_torchtitan_reduce_scatters_every_micro_batch_without_a_pipeline():
    """torchtitan's gradient accumulation does not defer FSDP2's gradient sync: each
    micro-batch gathers again and reduce-scatters (more exposed DP time), and no unsharded
    gradients of the whole model wait between micro-batches (less memory). With a pipeline,
    torch.distributed.pipelining defers it, so the flip changes nothing."""
    kw = dict(cluster="dgx_h100", nodes=4, dp=32, global_batch_size=256, zero_stage=3)
    every = _predict("torchtitan", **kw)
    deferred = _predict(_flip("torchtitan", fsdp_defer_grad_sync=True), **kw)
    assert every["breakdown"]["dp_comm_s"] > 2 * deferred["breakdown"]["dp_comm_s"]
    assert every["memory"]["buffers_bytes"] < 0.2 * deferred["memory"]["buffers_bytes"]
    pp = dict(kw, dp=16, pp=2)
    assert (_predict("torchtitan", **pp)["step_time_s"]
            == _predict(_flip("torchtitan", fsdp_defer_grad_sync=True), **pp)["step_time_s"])


def test_torchtitan_fp8_all_gather_halves_the_block_gathers():
    """torchao float8 with enable_fsdp_float8_all_gather gathers each block in fp8: less exposed
    FSDP time for an fp8 plan (no overlap, so every gather shows), nothing for a bf16 one."""
    kw = dict(cluster="dgx_h100", nodes=4, dp=32, global_batch_size=32, zero_stage=3)
    off = _flip("torchtitan", fp8_weight_gather=False, grad_overlap=False)
    on = _flip("torchtitan", fp8_weight_gather=True, grad_overlap=False)
    fp8_on = _predict(on, precision="fp8", **kw)["breakdown"]["dp_comm_s"]
    fp8_off = _predict(off, precision="fp8", **kw)["breakdown"]["dp_comm_s"]
    assert fp8_on < 0.85 * fp8_off
    assert (_predict(on, **kw)["breakdown"]["dp_comm_s"]
            == _predict(off, **kw)["breakdown"]["dp_comm_s"])


def test_transformer_engine_fp8_caches_weights_and_saves_fp8_inputs():
    """Transformer Engine (megatron-core) keeps fp8 weight copies and transposes between
    micro-batches (more buffer memory) and saves fp8 GEMM inputs (fewer activation bytes);
    under ZeRO-3 there is no whole-model copy to cache."""
    kw = dict(dp=4, tp=2, sequence_parallel=True, global_batch_size=64, zero_stage=1)
    bf16 = _predict("megatron-core", **kw)["memory"]
    fp8 = _predict("megatron-core", precision="fp8", **kw)["memory"]
    blocks = 32 * 218e6 / 2  # Llama-3 8B's block weights per tp rank, roughly
    assert fp8["buffers_bytes"] - bf16["buffers_bytes"] == pytest.approx(2 * blocks, rel=0.05)
    assert fp8["activations_bytes"] < 0.85 * bf16["activations_bytes"]
    z3 = dict(kw, zero_stage=3)
    assert (_predict("megatron-core", precision="fp8", **z3)["memory"]["buffers_bytes"]
            == _predict("megatron-core", **z3)["memory"]["buffers_bytes"])


def test_expert_units_reduce_scatter_every_micro_batch_like_dense_ones():
    """FSDP2's expert units follow the stack's gradient-sync rule like the dense units: without
    deferral (torchtitan) each micro-batch gathers and reduce-scatters the experts again."""
    kw = dict(cluster="dgx_h100", nodes=4, dp=32, ep=8, global_batch_size=256, zero_stage=2,
              model="qwen3-30b-a3b")
    every = _predict(_flip("torchtitan", grad_overlap=False), **kw)["breakdown"]["dp_comm_s"]
    deferred = _predict(_flip("torchtitan", grad_overlap=False, fsdp_defer_grad_sync=True),
                        **kw)["breakdown"]["dp_comm_s"]
    assert every > 4 * deferred


def test_megatron_fsdp_reduces_sharded_gradients_every_backward():
    """Megatron-Core's FSDP (sharded_grads_reduce_each_backward) reduce-scatters every
    backward at stages 2-3, with a pipeline too: more exposed DP time than a deferred sync,
    and no unsharded gradients of the stage kept between micro-batches. Stage 1 (the
    distributed optimizer) still defers; stage 2 keeps its weights unsharded, so it gathers
    them once a step, not per micro-batch."""
    kw = dict(cluster="dgx_h100", nodes=4, dp=32, global_batch_size=256)
    deferred = _flip("megatron-core", sharded_grads_reduce_each_backward=False)
    for extra in ({}, {"dp": 16, "pp": 2}):
        each = _predict("megatron-core", **{**kw, **extra}, zero_stage=3)
        kept = _predict(deferred, **{**kw, **extra}, zero_stage=3)
        assert each["breakdown"]["dp_comm_s"] > kept["breakdown"]["dp_comm_s"]
        assert each["memory"]["buffers_bytes"] < 0.5 * kept["memory"]["buffers_bytes"]
    z1 = [_predict(s, **kw, zero_stage=1)["step_time_s"] for s in ("megatron-core", deferred)]
    assert z1[0] == z1[1]
    # Stage 2 against stage 3: the same reduce-scatters, but no per-micro-batch gathers.
    z2 = _predict("megatron-core", **kw, zero_stage=2)["breakdown"]["dp_comm_s"]
    z3 = _predict("megatron-core", **kw, zero_stage=3)["breakdown"]["dp_comm_s"]
    assert z2 < z3


def test_optimizer_state_sets_bytes_per_parameter_at_rest():
    """stack.optimizer_state: Megatron's fp32 master beside 16-bit weights (2 + 4 + 12 with
    fp32 gradients), PyTorch FSDP's fp32 resident parameters (4 + 4 + 8), a bf16 model under
    torch.optim (2 + 2 + 4); fp32 plans keep 4 + 4 + 8 under all three. The Adam update
    moves fewer bytes with less state."""
    kw = dict(cluster="dgx_h100", nodes=1, dp=8, global_batch_size=64, zero_stage=3)
    got = {}
    for state in ("fp32_master", "fp32_params", "bf16_params"):
        stack = _flip("torchtitan", optimizer_state=state)
        m = _predict(stack, **kw)
        total = m["memory"]["weights_bytes"] + m["memory"]["gradients_bytes"] + \
            m["memory"]["optimizer_bytes"]
        got[state] = (total, m["memory"]["weights_bytes"], m["breakdown"]["optimizer_s"],
                      _predict(stack, **kw, precision="fp32")["memory"]["optimizer_bytes"])
    per = {k: v[0] / (got["bf16_params"][0] / 8) for k, v in got.items()}
    assert per == pytest.approx({"fp32_master": 18, "fp32_params": 16, "bf16_params": 8})
    assert got["fp32_params"][1] == pytest.approx(2 * got["bf16_params"][1])
    assert got["bf16_params"][2] < got["fp32_params"][2] < got["fp32_master"][2]
    assert len({v[3] for v in got.values()}) == 1  # fp32 plans: the same 8 bytes of moments


def test_loss_softmax_in_16_bits_saves_half_the_logit_memory_and_traffic():
    """stack.loss_softmax_bytes 2 (NeMo AutoModel's MaskedCrossEntropy, fp32_upcast false)
    against 4 (an fp32 softmax): the last stage saves 2 bytes less per logit, and the loss's
    memory-bound passes move less."""
    kw = dict(cluster="dgx_h100", nodes=1, dp=8, global_batch_size=64, micro_batch_size=2)
    fp32 = _predict(_flip("torchtitan", loss_softmax_bytes=4.0), **kw)
    bf16 = _predict(_flip("torchtitan", loss_softmax_bytes=2.0), **kw)
    logits = 2 * 8192 * 128256  # mbs x seq x vocab (128,256 pads to itself at tp 1)
    saved = fp32["memory"]["activations_bytes"] - bf16["memory"]["activations_bytes"]
    assert saved == pytest.approx(2 * logits, rel=1e-6)
    assert bf16["breakdown"]["compute_s"] < fp32["breakdown"]["compute_s"]
