"""Tensor (and sequence) parallelism with torch.distributed.tensor.parallel, Megatron-style:
QKV and MLP-up column-parallel, output projection and MLP-down row-parallel, vocab-parallel
embedding (executor/parallel/vocab.py) and LM head with loss_parallel (Shoeybi et al. 2019;
Korthikanti et al. 2022 for the sequence-parallel norms).

Mixture-of-experts FFNs (executor/moe.py): the shared experts are split like the dense MLP
(Megatron-Core's SharedExpertMLP); the router and the routed experts stay whole (the experts
are placed by expert parallelism, executor/parallel/expert.py). The MoE layer sees the whole,
replicated tokens: under sequence parallelism they are all-gathered on the way in and its
output is cut back to this rank's sequence chunk on the way out."""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                               PrepareModuleInputOutput, RowwiseParallel,
                                               SequenceParallel, parallelize_module)

from executor.moe import MoE
from executor.parallel.vocab import PartialSum, VocabParallelEmbedding
from executor.transformer import Transformer


def apply_tensor_parallel(model: Transformer, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` (a whole model or one pipeline stage) over the tensor-parallel mesh."""
    seq = Shard(1) if sequence_parallel else Replicate()
    tied = (model.output is not None and model.tok_embeddings is not None
            and model.output.weight is model.tok_embeddings.weight)
    top: dict = {}
    if model.tok_embeddings is not None:
        model.tok_embeddings = VocabParallelEmbedding(model.tok_embeddings, mesh)
        if model.pos_embeddings is not None:
            model.pos_embeddings = VocabParallelEmbedding(model.pos_embeddings, mesh)
        model.embedding_reduce = PartialSum(mesh, seq)
    if model.norm is not None and sequence_parallel:
        top["norm"] = SequenceParallel()
    if model.output is not None:
        top["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1),
                                        use_local_output=False)  # logits stay sharded: loss_parallel
    parallelize_module(model, mesh, top)
    if tied:  # both became Shard(0) DTensors of the same values; share one parameter again
        model.output.weight = model.tok_embeddings.weight
    for block in model.layers.values():
        plan: dict = {
            "attention": PrepareModuleInput(input_layouts=(seq, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
        }
        if isinstance(block.mlp, MoE):
            plan.update(_moe_plan(block.mlp, seq))
        else:
            plan.update({
                "mlp": PrepareModuleInput(input_layouts=(seq,),
                                          desired_input_layouts=(Replicate(),)),
                "mlp.w1": ColwiseParallel(),
                "mlp.w2": RowwiseParallel(output_layouts=seq)})
            if block.mlp.w3 is not None:
                plan["mlp.w3"] = ColwiseParallel()
        if sequence_parallel:
            plan["attention_norm"] = SequenceParallel()
            plan["ffn_norm"] = SequenceParallel()
        parallelize_module(block, mesh, plan)


def _moe_plan(moe: MoE, seq) -> dict:
    """The MoE layer in and out as plain replicated tensors; shared experts column/row split."""
    plan: dict = {"mlp": PrepareModuleInputOutput(
        input_layouts=(seq,), desired_input_layouts=(Replicate(),), use_local_input=True,
        output_layouts=(Replicate(),), desired_output_layouts=(seq,), use_local_output=True)}
    if moe.shared is not None:
        plan["mlp.shared.w1"] = ColwiseParallel()
        plan["mlp.shared.w2"] = RowwiseParallel()
        if moe.shared.w3 is not None:
            plan["mlp.shared.w3"] = ColwiseParallel()
    return plan
