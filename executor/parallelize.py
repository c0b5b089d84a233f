"""Turn a TransformerSpec and a Plan into this rank's parallel model, in one fixed order:

1. build the whole model from one seed (every rank gets the same initial weights);
2. set activation recompute (full: each block checkpointed; selective: the attention core);
3. cut this rank's pipeline stage(s) (pp > 1);
4. tensor (and sequence) parallel on each stage (tp > 1);
5. context parallel: K/V gathered over the cp group, positions offset by this rank's chunk;
6. data parallel / ZeRO (executor/parallel/data.py says which mechanism for which stage).

Mixture-of-experts models (executor/moe.py) also keep only this rank's experts before step 4
and give the MoE layers their expert-parallel groups (executor/parallel/expert.py); their
experts reduce gradients over the edp group, not dp x cp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from executor.mesh import ParallelMesh
from executor.moe import MoE, moe_layers
from executor.parallel import data as dpar
from executor.parallel.expert import apply_expert_parallel, etp_shard_dims, expert_parameters
from executor.parallel.ps import check_plan
from executor.parallel.pipeline import build_schedule, cut_stage, stage_indices
from executor.parallel.tensor import apply_tensor_parallel
from executor.precision import LossScaler, ScaledLoss, convert_fp8, make_scaler
from executor.transformer import ContextParallel, Transformer
from planner.cost.params import padded_vocab
from planner.plan import Plan
from planner.transformer import TransformerSpec


@dataclass
class ParallelModel:
    """This rank's share of the model and how to run a step with it."""

    plan: Plan
    mesh: ParallelMesh
    parts: list[nn.Module]
    stage_ids: list[int]
    dp_mode: str
    device: torch.device = torch.device("cpu")
    """Where this rank's parameters, batches and loss tensors live."""
    schedule: object | None = None
    tied: list[tuple[nn.Parameter, dist.ProcessGroup]] = field(default_factory=list)
    skip_in_norm: set[int] = field(default_factory=set)
    scaler: LossScaler | None = None
    """fp16 plans: dynamic loss scaling (executor/precision.py)."""
    scaled_loss: ScaledLoss = field(default_factory=lambda: ScaledLoss(loss_fn))
    """The pipeline schedule's loss_fn, multiplied by this step's loss scale."""
    is_moe: bool = False
    """The model has MoE blocks (this rank may hold none: a dense pipeline stage)."""
    moe: list[MoE] = field(default_factory=list)
    """This rank's mixture-of-experts layers (empty for a dense model)."""
    experts: list[nn.Parameter] = field(default_factory=list)
    """Their routed experts' parameters, which reduce over edp (executor/parallel/expert.py)."""
    etp_dims: dict[int, int] = field(default_factory=dict)
    """etp > 1: id of each expert weight slice -> the dimension the etp group splits."""

    @property
    def is_first(self) -> bool:
        return 0 in self.stage_ids

    @property
    def is_last(self) -> bool:
        return self.plan.pp * self.plan.virtual_pipeline_stages - 1 in self.stage_ids

    def parameters(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for part in self.parts:
            for p in part.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the routed experts' (all of them for a dense model)."""
        ids = {id(p) for p in self.experts}
        return [p for p in self.parameters() if id(p) not in ids] if ids else self.parameters()

    @property
    def expert_sync(self) -> bool:
        """Whether expert gradients need the explicit edp all-reduce after backward (FSDP and
        DDP reduce them otherwise)."""
        return bool(self.experts) and self.dp_mode in ("allreduce", "none")

    def buffers(self) -> list[torch.Tensor]:
        """Non-trainable state (rotary tables): saved for backward, but not activations."""
        return [b for part in self.parts for b in part.buffers()]

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters by the whole model's names (DDP's 'module.' prefix removed)."""
        out = {}
        for part in self.parts:
            for name, p in part.named_parameters():
                out[name.removeprefix("module.")] = p
        return out


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (works on vocab-sharded DTensor logits inside
    torch.distributed.tensor.parallel.loss_parallel)."""
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1))


def build_model(spec: TransformerSpec, plan: Plan, seed: int) -> Transformer:
    """The whole model, seeded, with the plan's recompute mode and its vocabulary padding (the
    same on every rank and in the single-process reference, which builds it for the same plan)."""
    torch.manual_seed(seed)
    model = Transformer(spec, vocab_rows=int(padded_vocab(spec, plan.tp)))
    for block in model.layers.values():
        block.full_recompute = plan.recompute == "full"
        block.attention.selective_recompute = plan.recompute == "selective"
    return model


def parallelize(spec: TransformerSpec, plan: Plan, pm: ParallelMesh, device: torch.device,
                seed: int = 0) -> ParallelModel:
    """This rank's ParallelModel (all ranks call it together: it creates groups)."""
    if plan.grad_sync == "parameter_server":
        check_plan(plan)
    whole = build_model(spec, plan, seed)
    convert_fp8(whole, plan, device)
    if plan.pp > 1:
        ids = stage_indices(plan, pm.coord("pp"))
        parts = [cut_stage(whole, plan, s) for s in ids]
    else:
        ids, parts = [0], [whole]
    chunk = spec.seq_len // plan.cp
    moe = spec.moe is not None
    egroups = pm.expert_groups() if moe else {}  # every rank creates every group
    for part in parts:
        part.position_offset = pm.coord("cp") * chunk
        if moe:
            apply_expert_parallel(moe_layers([part]), plan, egroups,
                                  pm.group("tp") if plan.tp > 1 else None,
                                  pm.group("cp") if plan.cp > 1 else None)
        if plan.tp > 1:
            apply_tensor_parallel(part, pm.tp_mesh, plan.sequence_parallel)
        if plan.cp > 1:
            ctx = ContextParallel(pm.group("cp"))
            for block in part.layers.values():
                block.attention.context = ctx
        part.to(device)
    pmodel = ParallelModel(plan, pm, parts, ids, dpar.mode(plan), device)
    pmodel.scaler = make_scaler(plan, pmodel.dp_mode, device)
    if moe and pmodel.dp_mode == "ps" and plan.tp > 1:
        raise ValueError("grad_sync parameter_server with a mixture-of-experts model needs tp=1")
    if pmodel.dp_mode == "fsdp":
        dpar.apply_fsdp(parts, pm.fsdp_mesh, plan, pm.edp_mesh() if moe else None)
    elif pmodel.dp_mode == "ddp":
        pmodel.parts = [dpar.wrap_ddp(parts[0], pm.dp_cp_mesh.get_group())]
    pmodel.is_moe, pmodel.moe = moe, moe_layers(pmodel.parts)
    pmodel.experts = expert_parameters(pmodel.moe)  # after FSDP, which replaces parameters
    pmodel.etp_dims = etp_shard_dims(pmodel.moe) if plan.etp > 1 else {}
    if plan.pp > 1 and spec.tied_embeddings:  # after FSDP, which replaces the parameters
        _tie_across_stages(pmodel)
    if plan.pp > 1:
        pmodel.schedule = build_schedule(pmodel.parts, ids, plan, pm.group("pp"), device,
                                          pmodel.scaled_loss)
    return pmodel


def _tie_across_stages(pmodel: ParallelModel) -> None:
    """The first stage's embedding and the last stage's head are one matrix in the model, two
    copies here (Megatron-LM does the same): their gradients are summed over a group of the
    two ranks, and the head copy is left out of the gradient norm."""
    mesh = pmodel.mesh.mesh
    pp_dim = mesh.mesh_dim_names.index("pp")
    lines = mesh.mesh.movedim(pp_dim, -1).reshape(-1, mesh.mesh.shape[pp_dim])
    me = dist.get_rank()
    for line in lines.tolist():
        group = dist.new_group([line[0], line[-1]])  # every rank creates every group, in order
        if me in (line[0], line[-1]):
            for part in pmodel.parts:
                if part.tok_embeddings is not None:
                    pmodel.tied.append((part.tok_embeddings.weight, group))
                if part.output is not None:
                    pmodel.tied.append((part.output.weight, group))
                    pmodel.skip_in_norm.add(id(part.output.weight))
