"""Export to Megatron-LM / Megatron-Core command-line arguments (`pretrain_gpt.py`).

Flag names are those of Megatron-LM tag core_v0.15.0, megatron/training/arguments.py; in
core_v0.16 most of them are generated from the fields of megatron.core's ModelParallelConfig /
TransformerConfig under the same names (e.g. `--num-layers` -> `num_layers`), which is how
tests/test_export.py checks them against megatron-core 0.16.1."""

from __future__ import annotations

from planner.export.common import (argv_text, chunk_layers, effective_order, is_even_split,
                                   order_problem)
from planner.plan import Plan
from planner.stack import Stack
from planner.transformer import TransformerSpec

NAME = "megatron"
DESCRIPTION = "Megatron-LM / Megatron-Core command-line arguments (core_v0.15 flag names)"
# RankGenerator order "tp-cp-ep-dp-pp", or "tp-cp-ep-pp-dp" with --use-tp-pp-dp-mapping
# (arguments.py `--use-tp-pp-dp-mapping`; parallel_state.initialize_model_parallel `order`).
ORDERS = ("tp-cp-dp-pp", "tp-cp-pp-dp")
# Stack.attention_kernel -> `--attention-backend` (AttnBackend: flash, fused, unfused, local, auto).
ATTENTION_BACKEND = {"unfused_softmax": "unfused", "flash_attention_2": "flash",
                     "flash_attention_3": "flash", "cudnn": "fused", "sdpa": "auto"}


def problems(plan: Plan, spec: TransformerSpec) -> list[str]:
    """Why Megatron-LM cannot run the plan at all."""
    return order_problem(plan, "Megatron-LM", ORDERS)


def _parallel(plan: Plan, spec: TransformerSpec, stack: Stack | None) -> list[tuple[str, object]]:
    a: list[tuple[str, object]] = [("--tensor-model-parallel-size", plan.tp),
                                   ("--pipeline-model-parallel-size", plan.pp),
                                   ("--context-parallel-size", plan.cp)]
    if plan.cp > 1 and stack is not None:
        # `--cp-comm-type`: p2p (ring attention) or allgather (Llama 3's variant).
        a.append(("--cp-comm-type", "p2p" if stack.cp_impl == "ring" else "allgather"))
    if plan.pp > 1 and not is_even_split(plan, spec):
        a.append(("--pipeline-model-parallel-layout", layout(plan, spec)))
    elif plan.virtual_pipeline_stages > 1:
        a.append(("--num-layers-per-virtual-pipeline-stage", chunk_layers(plan, spec)[0]))
    if plan.sequence_parallel:
        a.append(("--sequence-parallel", None))
    if effective_order(plan) != effective_order(plan.model_copy(update={"order": ORDERS[0]})):
        a.append(("--use-tp-pp-dp-mapping", None))
    return a + _zero(plan, stack)


def _zero(plan: Plan, stack: Stack | None) -> list[tuple[str, object]]:
    """ZeRO 1: the distributed optimizer; 2 and 3: Megatron-FSDP with the matching
    `--data-parallel-sharding-strategy` (no_shard, optim, optim_grads, optim_grads_params)."""
    a: list[tuple[str, object]] = []
    if plan.zero_stage == 1:
        a.append(("--use-distributed-optimizer", None))
    elif plan.zero_stage >= 2:
        a += [("--use-megatron-fsdp", None), ("--data-parallel-sharding-strategy",
                                               "optim_grads" if plan.zero_stage == 2
                                               else "optim_grads_params")]
    if plan.zero_stage and plan.hsdp:
        # Hybrid sharding: dp / dp_shard optimizer instances of dp_shard ranks each (the
        # distributed optimizer, and Megatron-FSDP's HSDP, which it enables only above 1).
        a.append(("--num-distributed-optimizer-instances", plan.dp // plan.zero_shard))
    if stack is not None:
        if stack.grad_overlap and plan.dp * plan.cp > 1:
            a.append(("--overlap-grad-reduce", None))
        if stack.param_gather_overlap and plan.zero_stage == 1:
            a.append(("--overlap-param-gather", None))  # needs the distributed optimizer
        if stack.tp_comm_overlap and plan.sequence_parallel:
            a.append(("--tp-comm-overlap", None))  # needs sequence parallel
    return a


def layout(plan: Plan, spec: TransformerSpec) -> str:
    """`--pipeline-model-parallel-layout`: the chunks in chunk order, `|`-separated, E the
    embedding, t a block, L the loss (core_v0.15 arguments.py; PipelineParallelLayerLayout)."""
    sizes = chunk_layers(plan, spec)
    parts = []
    for c, n in enumerate(sizes):
        body = f"t*{n}" if n > 1 else "t" * n
        parts.append(("E" if c == 0 else "") + body + ("L" if c == len(sizes) - 1 else ""))
    return "|".join(parts)


def _training(plan: Plan, stack: Stack | None) -> list[tuple[str, object]]:
    a: list[tuple[str, object]] = [("--micro-batch-size", plan.micro_batch_size),
                                   ("--global-batch-size", plan.global_batch_size)]
    if plan.recompute == "full":
        a += [("--recompute-granularity", "full"), ("--recompute-method", "uniform"),
              ("--recompute-num-layers", 1)]
    elif plan.recompute == "selective":
        a.append(("--recompute-granularity", "selective"))  # default module: core_attn
    if plan.precision in ("bf16", "fp8"):
        a.append(("--bf16", None))
    elif plan.precision == "fp16":
        a += [("--fp16", None), ("--initial-loss-scale", 2**32)]  # dynamic loss scaling
    if plan.precision == "fp8":
        a += [("--fp8-format", "hybrid"), ("--fp8-recipe", "delayed")]
    if stack is not None:
        a.append(("--attention-backend", ATTENTION_BACKEND[stack.attention_kernel]))
        if stack.async_checkpoint:
            a.append(("--async-save", None))
    return a


def _model(spec: TransformerSpec) -> list[tuple[str, object]]:
    a: list[tuple[str, object]] = [("--num-layers", spec.num_layers),
                                   ("--hidden-size", spec.hidden_size),
                                   ("--num-attention-heads", spec.num_attention_heads)]
    if spec.num_kv_heads < spec.num_attention_heads:
        a += [("--group-query-attention", None), ("--num-query-groups", spec.num_kv_heads)]
    a += [("--ffn-hidden-size", spec.ffn_hidden_size), ("--seq-length", spec.seq_len),
          ("--max-position-embeddings", spec.seq_len), ("--vocab-size", spec.vocab_size),
          ("--make-vocab-size-divisible-by", 128)]
    if spec.mlp == "swiglu":  # the Llama family (planner/transformer.py)
        a += [("--swiglu", None), ("--normalization", "RMSNorm"),
              ("--position-embedding-type", "rope"), ("--disable-bias-linear", None),
              ("--attention-dropout", 0.0), ("--hidden-dropout", 0.0)]
    if not spec.tied_embeddings:
        a.append(("--untie-embeddings-and-output-weights", None))
    return a


def unexpressed(plan: Plan) -> list[str]:
    """Plan fields Megatron-LM has no setting for."""
    out = []
    if plan.schedule == "gpipe" and plan.pp > 1:
        out.append("schedule=gpipe: Megatron-LM runs 1F1B (same bubble, fewer micro-batches "
                   "in flight)")
    if plan.zero_stage == 2:
        out.append("zero_stage=2: exported as Megatron-FSDP optim_grads (gradients and "
                   "optimizer state sharded, FSDP-style)")
    if plan.pipeline_passes > 1:
        out.append(f"pipeline_passes={plan.pipeline_passes}: Megatron-LM runs every "
                   "micro-batch of a step in one pipeline schedule (one fill and drain: a "
                   "smaller bubble than planned)")
    return out


def render(plan: Plan, spec: TransformerSpec, stack: Stack | None) -> tuple[str, list[str]]:
    """The arguments for `torchrun ... pretrain_gpt.py`, and what they cannot say."""
    args = _parallel(plan, spec, stack) + _training(plan, stack) + _model(spec)
    return argv_text(args), unexpressed(plan)


def launcher(plan: Plan, spec: TransformerSpec, config_path: str | None,
             gpus_per_node: int) -> str:
    """How to start it."""
    nodes = max(1, plan.world_size // gpus_per_node)
    args = f"$(cat {config_path})" if config_path else "<the arguments above>"
    return (f"torchrun --nnodes {nodes} --nproc-per-node {min(gpus_per_node, plan.world_size)} "
            f"pretrain_gpt.py {args} <data, tokenizer and optimizer flags>")
