"""Why a plan is invalid for a spec and a cluster: vectorized masks that the search uses to prune
(with counts per reason) and `plan_problems` uses for one plan (with the numbers in the message).
Memory fit is not checked here; it is a cost-model result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from planner.hardware import PRECISIONS, Cluster
from planner.plan import Plan
from planner.plan_arrays import G_PS, G_RING, PS_COLOCATED, S_1F1B, S_INTERLEAVED, PlanArrays
from planner.transformer import TransformerSpec

Mask = Callable[[TransformerSpec, Cluster, PlanArrays], np.ndarray]
Message = Callable[[TransformerSpec, Cluster, PlanArrays, int], str]


@dataclass(frozen=True)
class Check:
    """One rule: `invalid` marks the plans that break it; `message` explains plan i."""

    key: str
    summary: str
    invalid: Mask
    message: Message


def _has_precision(cluster: Cluster) -> np.ndarray:
    return np.array([cluster.gpu.peak_flops(p) is not None for p in PRECISIONS])


def _i(a: np.ndarray, i: int) -> int:
    return int(a[i])


CHECKS: tuple[Check, ...] = (
    Check("world_size", "dp*tp*pp*cp differs from the GPU count",
          lambda s, c, P: P.dp * P.tp * P.pp * P.cp != c.num_gpus,
          lambda s, c, P, i: (f"dp*tp*pp*cp = {_i(P.dp, i)}*{_i(P.tp, i)}*{_i(P.pp, i)}*"
                              f"{_i(P.cp, i)} = {_i(P.dp * P.tp * P.pp * P.cp, i)} but the cluster "
                              f"has {c.num_gpus} GPUs ({c.num_nodes} nodes x {c.gpus_per_node})")),
    Check("heads_tp", "attention heads not divisible by tp",
          lambda s, c, P: s.num_attention_heads % P.tp != 0,
          lambda s, c, P, i: (f"num_attention_heads {s.num_attention_heads} is not divisible by "
                              f"tp={_i(P.tp, i)}")),
    Check("kv_heads_tp", "kv heads not divisible by tp",
          lambda s, c, P: s.num_kv_heads % P.tp != 0,
          lambda s, c, P, i: (f"num_kv_heads {s.num_kv_heads} is not divisible by tp={_i(P.tp, i)} "
                              "(each tp rank needs whole key/value groups)")),
    Check("ffn_tp", "ffn_hidden_size not divisible by tp",
          lambda s, c, P: s.ffn_hidden_size % P.tp != 0,
          lambda s, c, P, i: (f"ffn_hidden_size {s.ffn_hidden_size} is not divisible by "
                              f"tp={_i(P.tp, i)}")),
    # The first and last chunks may hold only the embedding and only the head (Megatron-LM's
    # --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split, or a
    # --pipeline-model-parallel-layout of "E|...|L"): planner.stages.layer_split leaves them
    # empty first, so num_layers >= pp * v - 2 is what every inner chunk needs.
    Check("layers_pp", "fewer layers than inner pipeline chunks",
          lambda s, c, P: s.num_layers < P.pp * P.vpp - 2,
          lambda s, c, P, i: (f"num_layers {s.num_layers} is less than pp*"
                              f"virtual_pipeline_stages - 2 = {_i(P.pp, i)}*{_i(P.vpp, i)} - 2 = "
                              f"{_i(P.pp * P.vpp - 2, i)} (every chunk but the first and the "
                              "last, which may hold only the embedding and the head, needs a "
                              "block)")),
    Check("batch", "global batch not divisible by dp*micro-batch",
          lambda s, c, P: P.gbs % (P.dp * P.mbs) != 0,
          lambda s, c, P, i: (f"global_batch_size {_i(P.gbs, i)} is not divisible by "
                              f"dp*micro_batch_size = {_i(P.dp, i)}*{_i(P.mbs, i)} = "
                              f"{_i(P.dp * P.mbs, i)}")),
    Check("passes_need_pp", "pipeline_passes > 1 with pp=1",
          lambda s, c, P: (P.passes > 1) & (P.pp < 2),
          lambda s, c, P, i: (f"pipeline_passes={_i(P.passes, i)} needs pp >= 2 (it counts "
                              "pipeline schedules per step); use 1 with pp=1")),
    Check("passes_micro_batches", "micro-batches not divisible by pipeline_passes",
          lambda s, c, P: P.micro_batches % P.passes != 0,
          lambda s, c, P, i: (f"the {_i(P.micro_batches, i)} micro-batches per step are not "
                              f"divisible by pipeline_passes={_i(P.passes, i)} (each schedule "
                              "runs the same number)")),
    Check("interleaved_needs_v", "interleaved_1f1b without virtual stages",
          lambda s, c, P: (P.schedule == S_INTERLEAVED) & (P.vpp < 2),
          lambda s, c, P, i: ("schedule interleaved_1f1b needs virtual_pipeline_stages >= 2, got "
                              f"{_i(P.vpp, i)}")),
    Check("v_needs_interleaved", "virtual stages without interleaved_1f1b",
          lambda s, c, P: (P.schedule != S_INTERLEAVED) & (P.vpp > 1),
          lambda s, c, P, i: (f"virtual_pipeline_stages={_i(P.vpp, i)} needs schedule "
                              "interleaved_1f1b")),
    Check("interleaved_needs_pp", "interleaved_1f1b with pp=1",
          lambda s, c, P: (P.schedule == S_INTERLEAVED) & (P.pp < 2),
          lambda s, c, P, i: "schedule interleaved_1f1b needs pp >= 2, got pp=1"),
    Check("interleaved_micro_batches", "interleaved: micro-batches not a multiple of pp",
          # Megatron-LM's interleaved schedule requires it (pipeline_parallel/schedules.py).
          lambda s, c, P: (P.schedule == S_INTERLEAVED) & (P.pass_micro_batches % P.pp != 0),
          lambda s, c, P, i: (f"schedule interleaved_1f1b needs the number of micro-batches "
                              f"per schedule ({_i(P.pass_micro_batches, i)}) to be a multiple of "
                              f"pp={_i(P.pp, i)}")),
    Check("1f1b_micro_batches", "1f1b with fewer micro-batches than stages",
          # torch.distributed.pipelining's Schedule1F1B rejects it (the executor's schedule).
          lambda s, c, P: (P.schedule == S_1F1B) & (P.pp > 1) & (P.pass_micro_batches < P.pp),
          lambda s, c, P, i: (f"schedule 1f1b needs at least pp={_i(P.pp, i)} micro-batches per "
                              f"schedule, got {_i(P.pass_micro_batches, i)} (use gpipe, a "
                              "smaller micro_batch_size or fewer pipeline_passes)")),
    Check("sp_needs_tp", "sequence parallel with tp=1",
          lambda s, c, P: P.sp & (P.tp < 2),
          lambda s, c, P, i: "sequence_parallel needs tp >= 2 (it shards activations over tp)"),
    Check("cp_seq", "seq_len not divisible by 2*cp",
          # Load-balanced causal context parallelism splits the sequence into 2*cp chunks.
          lambda s, c, P: (P.cp > 1) & (s.seq_len % (2 * P.cp) != 0),
          lambda s, c, P, i: (f"seq_len {s.seq_len} is not divisible by 2*cp = {_i(2 * P.cp, i)} "
                              "(load-balanced causal context parallelism)")),
    Check("precision", "precision not supported by the GPU",
          lambda s, c, P: ~_has_precision(c)[P.precision],
          lambda s, c, P, i: (f"precision {PRECISIONS[_i(P.precision, i)]} is not supported by "
                              f"{c.gpu.name}; accepted: "
                              f"{', '.join(p for p in PRECISIONS if c.gpu.peak_flops(p))}")),
    Check("ps_servers", "parameter_server without servers, or servers without it",
          lambda s, c, P: (P.grad_sync == G_PS) != (P.ps_servers > 0),
          lambda s, c, P, i: ("grad_sync parameter_server needs ps_servers >= 1" if
                              _i(P.grad_sync, i) == G_PS else
                              f"ps_servers={_i(P.ps_servers, i)} needs grad_sync "
                              "parameter_server")),
    Check("ps_colocated", "more colocated servers than dp*cp worker ranks",
          # Colocated shards live on the data-parallel worker ranks (one shard per rank at most).
          lambda s, c, P: ((P.grad_sync == G_PS) & (P.ps_placement == PS_COLOCATED)
                           & (P.ps_servers > P.dp * P.cp)),
          lambda s, c, P, i: (f"colocated ps_servers={_i(P.ps_servers, i)} exceeds dp*cp = "
                              f"{_i(P.dp * P.cp, i)} (the shards live on worker ranks)")),
    Check("ps_layout", "parameter_server with ZeRO or tp/pp/cp > 1",
          # The servers already shard weights and optimizer state (ZeRO would shard them twice),
          # and shards are cut from the whole flat model, which needs tp = pp = cp = 1.
          lambda s, c, P: (P.grad_sync == G_PS) & ((P.zero > 0) | (P.tp * P.pp * P.cp > 1)),
          lambda s, c, P, i: ("grad_sync parameter_server needs zero_stage 0 and tp = pp = cp = 1"
                              " (the servers shard the whole flat model and its optimizer state)")),
)


def _experts(s: TransformerSpec) -> int:
    return s.moe.num_experts if s.moe else 1


def _expert_ffn(s: TransformerSpec) -> int:
    return s.moe.expert_ffn_hidden_size if s.moe else 1


MOE_CHECKS: tuple[Check, ...] = (
    Check("ep_dense", "ep or etp > 1 for a dense model",
          lambda s, c, P: (s.moe is None) & ((P.ep > 1) | (P.etp > 1)),
          lambda s, c, P, i: (f"ep={_i(P.ep, i)}, etp={_i(P.etp, i)}: expert parallelism needs a "
                              "mixture-of-experts spec (this one has no `moe`); use ep = etp = 1")),
    Check("experts_ep", "routed experts not divisible by ep",
          lambda s, c, P: _experts(s) % P.ep != 0,
          lambda s, c, P, i: (f"num_experts {_experts(s)} is not divisible by ep={_i(P.ep, i)} "
                              "(every expert-parallel rank holds whole experts)")),
    Check("ep_fold", "ep*etp does not divide a stage's tp*cp*dp ranks",
          # Megatron-Core parallel folding: experts use etp x ep x edp over the same ranks.
          lambda s, c, P: (P.tp * P.cp * P.dp) % (P.ep * P.etp) != 0,
          lambda s, c, P, i: (f"ep*etp = {_i(P.ep, i)}*{_i(P.etp, i)} = {_i(P.ep * P.etp, i)} "
                              f"does not divide a pipeline stage's tp*cp*dp = "
                              f"{_i(P.tp * P.cp * P.dp, i)} ranks (experts fold over them as "
                              "etp x ep x edp)")),
    Check("expert_ffn_etp", "expert_ffn_hidden_size not divisible by etp",
          lambda s, c, P: _expert_ffn(s) % P.etp != 0,
          lambda s, c, P, i: (f"moe.expert_ffn_hidden_size {_expert_ffn(s)} is not divisible by "
                              f"etp={_i(P.etp, i)}")),
    Check("ep_ps", "expert parallelism with a parameter server",
          lambda s, c, P: (P.grad_sync == G_PS) & (P.ep * P.etp > 1),
          lambda s, c, P, i: ("grad_sync parameter_server needs ep = etp = 1 (the servers shard "
                              "the whole flat model)")),
)

# Hybrid sharding (Plan.dp_shard): the shard group is the innermost dp_shard of the dp ranks.
HSDP_CHECKS: tuple[Check, ...] = (
    Check("dp_shard_dp", "dp_shard does not divide dp",
          lambda s, c, P: P.dp % P.dp_shard != 0,
          lambda s, c, P, i: (f"dp_shard={_i(P.dp_shard, i)} does not divide dp={_i(P.dp, i)} "
                              "(the dp ranks split into dp / dp_shard replicas of dp_shard "
                              "ranks each)")),
    Check("dp_shard_zero", "dp_shard < dp with zero_stage 0",
          lambda s, c, P: P.hsdp & (P.zero == 0),
          lambda s, c, P, i: (f"dp_shard={_i(P.dp_shard, i)} < dp={_i(P.dp, i)} shards ZeRO "
                              "state over part of the data-parallel ranks, but zero_stage 0 "
                              "shards nothing: use zero_stage >= 1, or leave dp_shard unset")),
    Check("dp_shard_sync", "dp_shard < dp with a grad_sync other than ring",
          lambda s, c, P: P.hsdp & (P.grad_sync != G_RING),
          lambda s, c, P, i: (f"dp_shard={_i(P.dp_shard, i)} < dp: hybrid sharding reduces "
                              "gradients by reduce-scatter in the shard group and all-reduce "
                              "across replicas; set grad_sync to ring (its default)")),
    Check("dp_shard_ep", "dp_shard < dp with expert parallelism",
          lambda s, c, P: P.hsdp & (P.ep * P.etp > 1),
          lambda s, c, P, i: (f"dp_shard={_i(P.dp_shard, i)} < dp with ep={_i(P.ep, i)}, "
                              f"etp={_i(P.etp, i)}: hybrid sharding of expert-parallel plans is "
                              "not modelled; leave dp_shard unset")),
)
CHECKS = CHECKS + MOE_CHECKS + HSDP_CHECKS


def invalid_masks(spec: TransformerSpec, cluster: Cluster, P: PlanArrays) -> dict[str, np.ndarray]:
    """key -> boolean array (True = plan breaks the rule)."""
    n = len(P)
    return {ch.key: np.broadcast_to(np.asarray(ch.invalid(spec, cluster, P), bool), (n,))
            for ch in CHECKS}


def plan_problems(plan: Plan, spec: TransformerSpec, cluster: Cluster) -> list[str]:
    """Every reason `plan` cannot run `spec` on `cluster` (empty list: valid)."""
    P = PlanArrays.from_plans([plan])
    return [ch.message(spec, cluster, P, 0) for ch in CHECKS if bool(np.asarray(
        ch.invalid(spec, cluster, P)).reshape(-1)[0])]


CLUSTER_CHECKS = ("world_size", "precision")


def spec_problems(plan: Plan, spec: TransformerSpec) -> list[str]:
    """The reasons that do not depend on a cluster (for runs on whatever machine is at hand)."""
    P = PlanArrays.from_plans([plan])
    return [ch.message(spec, None, P, 0) for ch in CHECKS if ch.key not in CLUSTER_CHECKS
            and bool(np.asarray(ch.invalid(spec, None, P)).reshape(-1)[0])]
