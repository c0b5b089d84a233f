"""Export to a DeepSpeed JSON config and its launcher line.

Key names: DeepSpeed 0.19.8, deepspeed/runtime/config.py (`train_batch_size`,
`train_micro_batch_size_per_gpu`, `gradient_accumulation_steps`), zero/config.py
(`zero_optimization.stage`), precision_config.py (`bf16`, `fp16` with `loss_scale` 0 = dynamic),
activation_checkpointing/config.py. Tensor and pipeline parallelism go through Megatron-DeepSpeed
(`pretrain_gpt.py --deepspeed`, flags of its megatron/arguments.py)."""

from __future__ import annotations

import json

from planner.export.common import argv_text, is_even_split, order_problem
from planner.plan import Plan
from planner.stack import Stack
from planner.transformer import TransformerSpec

NAME = "deepspeed"
DESCRIPTION = "DeepSpeed 0.19 JSON config (Megatron-DeepSpeed for tp / pp)"
# Megatron-DeepSpeed's mpu / PipeModelDataParallelTopology: axes pipe, data, model outermost first.
ORDERS = ("tp-cp-dp-pp",)


def problems(plan: Plan, spec: TransformerSpec) -> list[str]:
    """Why DeepSpeed cannot run the plan at all."""
    out = order_problem(plan, "Megatron-DeepSpeed", ORDERS)
    if plan.cp > 1:
        out.append(f"cp={plan.cp}: DeepSpeed has no context parallelism (Ulysses sequence "
                   "parallelism splits attention heads, a different plan)")
    if plan.hsdp:
        out.append(f"dp_shard={plan.dp_shard}: DeepSpeed shards ZeRO state over every "
                   "data-parallel rank; its hybrid sharding, MiCS (mics_shard_size), was removed "
                   "(DeepSpeed 0.19 rejects the key: deepspeedai/DeepSpeed#8489), and ZeRO++'s "
                   "zero_hpz_partition_size keeps a second copy of the weights only; leave "
                   "dp_shard unset")
    if plan.pp > 1 and plan.zero_stage >= 2:
        out.append(f"zero_stage {plan.zero_stage} with pp={plan.pp}: DeepSpeed's pipeline "
                   "engine rejects it ('ZeRO-2 and ZeRO-3 are incompatible with pipeline "
                   "parallelism', deepspeed/runtime/pipe/engine.py)")
    return out


def config(plan: Plan, stack: Stack | None) -> dict:
    """The DeepSpeed config dict."""
    cfg: dict = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.global_batch_size // (plan.dp
                                                                  * plan.micro_batch_size),
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": plan.zero_stage},
        "bf16": {"enabled": plan.precision in ("bf16", "fp8")},
        "fp16": {"enabled": plan.precision == "fp16"},
    }
    if plan.precision == "fp16":  # dynamic loss scaling (loss_scale 0), DeepSpeed's defaults
        cfg["fp16"].update({"loss_scale": 0, "initial_scale_power": 16,
                            "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1})
    if plan.zero_stage and stack is not None:
        cfg["zero_optimization"]["overlap_comm"] = stack.grad_overlap
    if plan.recompute != "none":
        cfg["activation_checkpointing"] = {"partition_activations": False,
                                           "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    return cfg


def megatron_deepspeed_args(plan: Plan, spec: TransformerSpec,
                            config_path: str) -> list[tuple[str, object]]:
    """Megatron-DeepSpeed `pretrain_gpt.py` flags for the tp / pp split and the model."""
    a: list[tuple[str, object]] = [
        ("--tensor-model-parallel-size", plan.tp), ("--pipeline-model-parallel-size", plan.pp),
        ("--micro-batch-size", plan.micro_batch_size),
        ("--global-batch-size", plan.global_batch_size), ("--num-layers", spec.num_layers),
        ("--hidden-size", spec.hidden_size), ("--num-attention-heads", spec.num_attention_heads),
        ("--num-key-value-heads", spec.num_kv_heads), ("--ffn-hidden-size", spec.ffn_hidden_size),
        ("--seq-length", spec.seq_len), ("--max-position-embeddings", spec.seq_len)]
    if spec.mlp == "swiglu":
        a += [("--swiglu", None), ("--normalization", "rmsnorm"),
              ("--use-rotary-position-embeddings", None), ("--disable-bias-linear", None)]
    if not spec.tied_embeddings:
        a.append(("--untie-embeddings-and-output-weights", None))
    if plan.sequence_parallel:
        a.append(("--sequence-parallel", None))
    if plan.precision in ("bf16", "fp8", "fp16"):
        a.append(("--fp16" if plan.precision == "fp16" else "--bf16", None))
    if plan.recompute == "full":
        a += [("--recompute-granularity", "full"), ("--deepspeed-activation-checkpointing", None)]
    elif plan.recompute == "selective":
        a.append(("--recompute-granularity", "selective"))
    if plan.pp == 1:
        a.append(("--no-pipeline-parallel", None))
    return a + [("--deepspeed", None), ("--deepspeed_config", config_path),
                ("--zero-stage", plan.zero_stage)]


def unexpressed(plan: Plan, spec: TransformerSpec) -> list[str]:
    """Plan fields DeepSpeed cannot say."""
    out = []
    if plan.virtual_pipeline_stages > 1:
        out.append(f"virtual_pipeline_stages={plan.virtual_pipeline_stages} "
                   "(interleaved_1f1b): DeepSpeed's pipeline engine has no interleaving; it "
                   "runs one chunk per stage")
    elif plan.schedule == "gpipe" and plan.pp > 1:
        out.append("schedule=gpipe: DeepSpeed's pipeline engine runs its own 1F1B-style "
                   "TrainSchedule")
    if plan.pipeline_passes > 1:
        out.append(f"pipeline_passes={plan.pipeline_passes}: DeepSpeed's pipeline engine runs "
                   "gradient_accumulation_steps micro-batches in one schedule per step (one "
                   "fill and drain: a smaller bubble than planned)")
    if plan.pp > 1 and not is_even_split(plan, spec):
        out.append("uneven pipeline stages (extra blocks on ranks 1..k): DeepSpeed's "
                   "PipelineModule partitions by its own partition_method")
    if plan.precision == "fp8":
        out.append("precision=fp8: DeepSpeed has no fp8 setting; exported as bf16 (fp8 GEMMs "
                   "need Transformer Engine inside the model)")
    if plan.recompute == "selective" and plan.tp * plan.pp == 1:
        out.append("recompute=selective: plain DeepSpeed checkpoints what the training script "
                   "wraps in deepspeed.checkpointing.checkpoint")
    return out


def render(plan: Plan, spec: TransformerSpec, stack: Stack | None) -> tuple[str, list[str]]:
    """The JSON text and what it cannot say."""
    return json.dumps(config(plan, stack), indent=2) + "\n", unexpressed(plan, spec)


def launcher(plan: Plan, spec: TransformerSpec, config_path: str | None,
             gpus_per_node: int) -> str:
    """`deepspeed` launcher line: a plain training script without tp / pp, else
    Megatron-DeepSpeed's pretrain_gpt.py with its parallel and model flags."""
    path = config_path or "ds_config.json"
    nodes = max(1, plan.world_size // gpus_per_node)
    head = (f"deepspeed --num_nodes {nodes} --num_gpus {min(gpus_per_node, plan.world_size)} ")
    if plan.tp * plan.pp == 1:
        return head + f"train.py --deepspeed --deepspeed_config {path}"
    args = argv_text(megatron_deepspeed_args(plan, spec, path)).replace(" \\\n", " ").strip()
    return head + "pretrain_gpt.py " + args
