"""Export to a torchtitan TOML job config (`--job.config_file F`).

Targets torchtitan 0.2.2 (PyPI), the last release read from TOML: torchtitan/config/job_config.py
(`JobConfig`: [model], [training], [parallelism], [activation_checkpoint], [compile],
[quantize.linear.float8]). torchtitan 0.3 replaced TOML with Python config functions."""

from __future__ import annotations

from planner.export.common import chunk_layers, order_problem, toml_text
from planner.plan import Plan
from planner.stack import Stack
from planner.transformer import TransformerSpec

NAME = "torchtitan"
DESCRIPTION = "torchtitan 0.2.2 TOML job config"
# ParallelDims builds its mesh as ["pp", "dp_replicate", "dp_shard", "cp", "tp"], outermost
# first (torchtitan/distributed/parallel_dims.py): tp-cp-dp-pp innermost first.
ORDERS = ("tp-cp-dp-pp",)
# torchtitan/models/llama3/__init__.py `llama3_args` (dim, layers, heads, kv heads; the FFN
# width its FeedForward derives from ffn_dim_multiplier and multiple_of).
FLAVORS = {"8B": (4096, 32, 32, 8, 14336), "70B": (8192, 80, 64, 8, 28672),
           "405B": (16384, 126, 128, 8, 53248)}
SCHEDULES = {"1f1b": "1F1B", "gpipe": "GPipe", "interleaved_1f1b": "Interleaved1F1B"}


def problems(plan: Plan, spec: TransformerSpec) -> list[str]:
    """Why torchtitan cannot run the plan at all."""
    out = order_problem(plan, "torchtitan", ORDERS)
    if spec.mlp != "swiglu":
        out.append("torchtitan has no GPT-2/3 family model (gelu MLP, LayerNorm, learned "
                   "positions); its dense models are Llama-style")
    if plan.precision == "fp16":
        out.append("precision fp16: torchtitan's training.mixed_precision_param is bfloat16 "
                   "or float32")
    if plan.zero_stage == 0 and plan.dp > 1 and plan.tp * plan.pp * plan.cp > 1:
        out.append("zero_stage 0 with tp, pp or cp > 1: torchtitan applies DDP only without "
                   "other parallelism ('DDP has not supported > 1D parallelism'); use "
                   "zero_stage >= 1 (FSDP2 / HSDP)")
    divisor = plan.tp * (2 * plan.cp if plan.cp > 1 else 1)
    if spec.seq_len % divisor:
        out.append(f"seq_len {spec.seq_len} is not divisible by tp * 2 * cp = {divisor} "
                   "(torchtitan's seq_len_divisor)")
    return out


def flavor(spec: TransformerSpec) -> str | None:
    """The torchtitan llama3 flavor with this shape, if any."""
    shape = (spec.hidden_size, spec.num_layers, spec.num_attention_heads, spec.num_kv_heads,
             spec.ffn_hidden_size)
    return next((name for name, dims in FLAVORS.items() if dims == shape), None)


def _data_parallel(plan: Plan) -> dict[str, object]:
    """zero 0: DDP (replicate); 1-2: FSDP2 kept gathered through the step; 3: resharded."""
    if plan.zero_stage == 0:
        return {"data_parallel_replicate_degree": plan.dp, "data_parallel_shard_degree": 1}
    return {"data_parallel_replicate_degree": plan.dp // plan.zero_shard,
            "data_parallel_shard_degree": plan.zero_shard,
            "fsdp_reshard_after_forward": "always" if plan.zero_stage == 3 else "never"}


def _pipeline(plan: Plan, spec: TransformerSpec) -> dict[str, object]:
    if plan.pp == 1:
        return {"pipeline_parallel_degree": 1}
    parts, start, sizes = [], 0, chunk_layers(plan, spec)
    for c, n in enumerate(sizes):  # chunk c runs on pp rank c % pp (looped placement)
        names = [f"layers.{i}" for i in range(start, start + n)]
        start += n
        parts.append((["tok_embeddings"] if c == 0 else []) + names
                     + (["norm", "output"] if c == len(sizes) - 1 else []))
    return {"pipeline_parallel_degree": plan.pp,
            "pipeline_parallel_schedule": SCHEDULES[plan.schedule],
            "pipeline_parallel_microbatch_size": plan.micro_batch_size,
            "module_fqns_per_model_part": parts}


def _parallelism(plan: Plan, spec: TransformerSpec, stack: Stack | None) -> dict[str, object]:
    t = _data_parallel(plan)
    t["tensor_parallel_degree"] = plan.tp
    t["enable_async_tensor_parallel"] = bool(stack and stack.tp_comm_overlap and plan.tp > 1)
    t.update(_pipeline(plan, spec))
    t["context_parallel_degree"] = plan.cp
    if plan.cp > 1:
        # 'allgather' gathers every K/V shard (Llama 3); 'alltoall' rotates them (ring).
        t["context_parallel_rotate_method"] = ("alltoall" if stack and stack.cp_impl == "ring"
                                               else "allgather")
    return t


def _training(plan: Plan, spec: TransformerSpec) -> dict[str, object]:
    # Without PP, local_batch_size is one micro-batch and torchtitan accumulates
    # global / (local * dp) of them; with PP it is one pipeline schedule's share of the
    # per-replica batch (cut into pipeline_parallel_microbatch_size micro-batches), and
    # torchtitan runs global / (local * dp) = pipeline_passes schedules per step.
    local = (plan.global_batch_size // (plan.dp * plan.pipeline_passes) if plan.pp > 1
             else plan.micro_batch_size)
    return {"local_batch_size": local, "global_batch_size": plan.global_batch_size,
            "seq_len": spec.seq_len,
            "mixed_precision_param": "float32" if plan.precision == "fp32" else "bfloat16"}


def _tables(plan: Plan, spec: TransformerSpec, stack: Stack | None) -> dict[str, dict]:
    model: dict[str, object] = {"name": "llama3", "flavor": flavor(spec) or "custom"}
    fp8 = plan.precision == "fp8"
    if fp8:
        model["converters"] = ["quantize.linear.float8"]
    ac: dict[str, object] = {"mode": plan.recompute}
    if plan.recompute == "selective":
        ac["selective_ac_option"] = "op"
    async_tp = bool(stack and stack.tp_comm_overlap and plan.tp > 1)
    tables = {"model": model, "training": _training(plan, spec),
              "parallelism": _parallelism(plan, spec, stack), "activation_checkpoint": ac,
              # async TP works only compiled; float8 is meant to run compiled
              "compile": {"enable": fp8 or async_tp, "components": ["model", "loss"]}}
    if fp8:
        shard = plan.zero_stage > 0 and plan.dp > 1
        tables["quantize.linear.float8"] = {"recipe_name": "tensorwise",
                                            "enable_fsdp_float8_all_gather": shard,
                                            "precompute_float8_dynamic_scale_for_fsdp": shard}
    if stack is not None and stack.async_checkpoint:
        tables["checkpoint"] = {"async_mode": "async"}
    return tables


def unexpressed(plan: Plan, spec: TransformerSpec) -> list[str]:
    """Plan and spec fields torchtitan cannot say."""
    out = []
    if flavor(spec) is None:
        out.append(f"model shape: no torchtitan llama3 flavor has hidden {spec.hidden_size}, "
                   f"{spec.num_layers} layers, {spec.num_attention_heads}/{spec.num_kv_heads} "
                   f"heads, ffn {spec.ffn_hidden_size}; register one named 'custom'")
    if spec.tied_embeddings:
        out.append("tied_embeddings: torchtitan's llama3 keeps the output layer untied")
    if plan.zero_stage == 1:
        out.append("zero_stage=1: FSDP2 has no optimizer-only sharding; exported as ZeRO-2 "
                   "(fsdp_reshard_after_forward = never)")
    if plan.zero_stage == 0 and plan.cp > 1:
        out.append("zero_stage=0 with cp > 1: torchtitan shards weights over the cp ranks "
                   "with FSDP2 (its fsdp mesh is dp_shard x cp)")
    if plan.tp > 1 and not plan.sequence_parallel:
        out.append("sequence_parallel=false: torchtitan's tensor parallel always shards the "
                   "norms over the sequence")
    if plan.recompute == "selective":
        out.append("recompute=selective: torchtitan's op-level selective AC saves matmul and "
                   "attention outputs, not Megatron's recomputed attention core")
    return out


def render(plan: Plan, spec: TransformerSpec, stack: Stack | None) -> tuple[str, list[str]]:
    """The TOML text and what it cannot say."""
    header = ["torchtitan 0.2.2 job config written by `paraplan export`",
              f"plan: {plan.model_dump_json()}", f"model: {spec.name}"]
    return toml_text(header, _tables(plan, spec, stack)), unexpressed(plan, spec)


def launcher(plan: Plan, spec: TransformerSpec, config_path: str | None,
             gpus_per_node: int) -> str:
    """How to start it."""
    nodes = max(1, plan.world_size // gpus_per_node)
    return (f"torchrun --nnodes {nodes} --nproc-per-node {min(gpus_per_node, plan.world_size)} "
            f"-m torchtitan.train --job.config_file {config_path or 'job.toml'}")
