"""`Plan`: the parallel layout noun, written by the search and read by the executor.

The rank `order` names the dimensions from innermost (fastest-varying rank index) to outermost, as
Megatron-LM's RankGenerator does: the default `tp-cp-dp-pp` puts a tensor-parallel group on
consecutive ranks (inside one node) and pipeline stages furthest apart. `mesh_dims()` gives the
same layout outermost-first, the order torch's `DeviceMesh` expects; planner/topology and the
executor both build their groups from it.
"""

from __future__ import annotations

from itertools import permutations
from typing import Literal

from pydantic import Field, field_validator

from planner.schema import FrozenModel

DIMS: tuple[str, ...] = ("tp", "cp", "dp", "pp")
DEFAULT_ORDER = "tp-cp-dp-pp"
ORDERS: tuple[str, ...] = tuple("-".join(p) for p in permutations(DIMS))
SCHEDULES: tuple[str, ...] = ("1f1b", "gpipe", "interleaved_1f1b")
RECOMPUTE: tuple[str, ...] = ("none", "selective", "full")
GRAD_SYNCS: tuple[str, ...] = ("ring", "tree", "hierarchical", "parameter_server")
PS_PLACEMENTS: tuple[str, ...] = ("colocated", "dedicated")


class Plan(FrozenModel):
    """One parallel training configuration. Keys are the DESIGN.md interface contract."""

    dp: int = Field(ge=1)
    """Data-parallel replicas."""
    tp: int = Field(ge=1)
    """Tensor-parallel width (Megatron column/row split of attention and MLP)."""
    pp: int = Field(ge=1)
    """Pipeline stages."""
    cp: int = Field(default=1, ge=1)
    """Context-parallel width (sequence split across ranks, ring exchange of K/V)."""
    ep: int = Field(default=1, ge=1)
    """Expert-parallel width: routed experts split over ep ranks (MoE specs only). Megatron-Core's
    parallel folding: experts fold over the tp x cp x dp ranks of a pipeline stage as
    etp x ep x edp (etp innermost, in rank order), edp = tp*cp*dp / (etp*ep)."""
    etp: int = Field(default=1, ge=1)
    """Expert tensor-parallel width: each expert's MLP split over etp ranks (MoE specs only)."""
    micro_batch_size: int = Field(ge=1)
    """Sequences per micro-batch per data-parallel replica."""
    global_batch_size: int = Field(ge=1)
    """Sequences per optimizer step across all replicas."""
    virtual_pipeline_stages: int = Field(default=1, ge=1)
    """Model chunks per pipeline rank (interleaved 1F1B); 1 otherwise."""
    schedule: Literal["1f1b", "gpipe", "interleaved_1f1b"] = "1f1b"
    """Pipeline schedule."""
    pipeline_passes: int = Field(default=1, ge=1)
    """Pipeline schedules run per optimizer step, each over num_micro_batches / pipeline_passes
    micro-batches with its own fill and drain (pp > 1 only). 1: every micro-batch in one
    schedule, as Megatron-Core runs them. Frameworks that accumulate gradients around
    torch.distributed.pipelining call the schedule once per accumulation step (torchtitan's and
    NeMo AutoModel's train loops, local_batch_size samples each), and its last backward syncs
    the gradients each time (PipelineStage.backward_maybe_with_nosync)."""
    zero_stage: int = Field(default=0, ge=0, le=3)
    """0: replicated optimizer; 1: optimizer state sharded over dp; 2: + gradients; 3: + weights."""
    dp_shard: int | None = Field(default=None, ge=1)
    """ZeRO / FSDP shard group: the state zero_stage shards is split over the innermost
    dp_shard data-parallel ranks (with cp) and replicated over the dp / dp_shard groups, whose
    gradient shards are all-reduced (hybrid sharding, HSDP: PyTorch FSDP2 on a (replicate,
    shard) mesh, FSDP1 HYBRID_SHARD, torchtitan data_parallel_shard_degree; Megatron-Core
    num_distributed_optimizer_instances = dp / dp_shard). null: every dp rank (full
    sharding). Must divide dp; below dp it needs zero_stage >= 1."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation: none, selective (attention core, Korthikanti et al. 2022), full
    (every layer's forward)."""
    sequence_parallel: bool = False
    """Shard LayerNorm/dropout activations over the tp group (needs tp > 1)."""
    precision: Literal["bf16", "fp16", "fp8", "fp32"] = "bf16"
    """Compute precision of matmuls (mixed precision keeps fp32 master weights except for fp32)."""
    order: str = DEFAULT_ORDER
    """Rank order, innermost dimension first: a permutation of tp, cp, dp, pp joined by '-'."""
    grad_sync: Literal["ring", "tree", "hierarchical", "parameter_server"] = "ring"
    """Gradient synchronisation over dp x cp: ring all-reduce (today's model), NCCL's double
    binary tree, hierarchical (intra-node reduce-scatter, inter-node all-reduce, intra-node
    all-gather) or a parameter server (workers push gradient shards, pull weight shards)."""
    ps_servers: int = Field(default=0, ge=0)
    """Parameter-server shards (server ranks); 0 unless grad_sync is parameter_server."""
    ps_placement: Literal["colocated", "dedicated"] = "colocated"
    """Parameter servers on worker ranks (colocated shards) or on extra nodes (dedicated; cost
    model only, the executor refuses it)."""

    @field_validator("order")
    @classmethod
    def _order(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ORDERS:
            raise ValueError(f"order must be a '-'-joined permutation of tp, cp, dp, pp "
                             f"(innermost first), e.g. '{DEFAULT_ORDER}'")
        return v

    @property
    def world_size(self) -> int:
        """GPUs the plan needs: dp * tp * pp * cp."""
        return self.dp * self.tp * self.pp * self.cp

    @property
    def zero_shard(self) -> int:
        """Data-parallel ranks one copy of the ZeRO-sharded state is split over (dp_shard, or
        dp when unset)."""
        return self.dp if self.dp_shard is None else self.dp_shard

    @property
    def hsdp(self) -> bool:
        """Hybrid sharding: the ZeRO shard group is smaller than dp (PlanArrays.hsdp's twin)."""
        return self.zero_shard < self.dp

    @property
    def zero_label(self) -> str:
        """The ZeRO stage as the tables print it: z3, or z3/8 for hybrid sharding over 8."""
        return f"z{self.zero_stage}" + (f"/{self.dp_shard}" if self.hsdp else "")

    @property
    def edp(self) -> int:
        """Expert data-parallel width: tp*cp*dp / (etp*ep) (integer for valid plans)."""
        return self.tp * self.cp * self.dp // (self.etp * self.ep)

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per step per pipeline (rounded down if the batch does not divide)."""
        return self.global_batch_size // (self.dp * self.micro_batch_size)

    @property
    def micro_batches_per_pass(self) -> int:
        """Micro-batches of one pipeline schedule (num_micro_batches / pipeline_passes)."""
        return self.num_micro_batches // self.pipeline_passes

    def mesh_dims(self) -> list[tuple[str, int]]:
        """(dimension, size) outermost first: the shape of `arange(world).reshape(...)`."""
        sizes = {"tp": self.tp, "cp": self.cp, "dp": self.dp, "pp": self.pp}
        return [(d, sizes[d]) for d in reversed(self.order.split("-"))]

    def to_json_dict(self) -> dict:
        """The flat contract dict (every key present)."""
        return self.model_dump()

