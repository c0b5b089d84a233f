"""The cost model's entry points. `evaluate` runs over any number of plans at once (the search);
`predict` is `evaluate` on a batch of one, shaped as the `paraplan predict --json` contract."""

from __future__ import annotations

from typing import Any

import numpy as np

from planner.cost.flops import hardware_flops_per_step, model_flops_per_step
from planner.cost.layout import link_arrays, topology_for
from planner.cost.memory import memory_breakdown, memory_by_stage, stage_memory
from planner.cost.params import active_params, total_params
from planner.cost.peak import peak_bytes
from planner.cost.shape_cache import on_groups
from planner.cost.step_time import shapes, step_breakdown
from planner.hardware import Cluster
from planner.plan import Plan
from planner.plan_arrays import PlanArrays
from planner.schema import InputError
from planner.topology import Topology
from planner.transformer import TransformerSpec
from planner.uncertainty import cluster_band
from planner.validity import plan_problems
from planner.zero_layout import ZERO_KINDS

BREAKDOWN_KEYS = ("compute_s", "tp_comm_s", "cp_comm_s", "pp_comm_s", "dp_comm_s", "ep_comm_s",
                  "host_s", "bubble_s", "optimizer_s")
EXPERT_MEMORY_KEYS = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes")
MEMORY_KEYS = ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes",
               "transient_bytes", "buffers_bytes", "framework_bytes")


def evaluate(spec: TransformerSpec, cluster: Cluster, topo: Topology,
             P: PlanArrays, with_memory: bool = True) -> dict[str, np.ndarray]:
    """Every figure for every plan in `P` (plans must be valid: see validity.invalid_masks).
    `with_memory=False` leaves out the memory figures and `fits` (the search has them from
    `peak_memory` already)."""
    links, _ = link_arrays(topo, P, experts=spec.moe is not None)
    sh = shapes(cluster, P)
    out = step_breakdown(spec, cluster, P, sh, links)
    if with_memory:
        mem = memory_breakdown(spec, cluster, P, sh, cluster.stack.flash_attention)
        out.update({f"memory.{k}": v for k, v in mem.items()})
        out["fits"] = mem["peak_bytes"] <= cluster.gpu.memory_bytes
    step = out["step_time_s"]
    n = cluster.num_gpus
    model, hw = on_groups(lambda p, s, _: (model_flops_per_step(spec, p.gbs),
                                           hardware_flops_per_step(spec, p.gbs, p.recompute)),
                          P, sh, None, P.groups("gbs", "recompute"))
    out["tokens_per_s"] = P.gbs * spec.seq_len / step
    out["model_tflops_per_gpu"] = model / (step * n) / 1e12
    out["hardware_tflops_per_gpu"] = hw / (step * n) / 1e12
    out["mfu"] = model / (step * n * sh.peak)
    return out


def peak_memory(spec: TransformerSpec, cluster: Cluster, P: PlanArrays) -> np.ndarray:
    """Peak bytes per GPU only (the search's cheap first pass: memory_breakdown's peak_bytes,
    planner/cost/peak.py)."""
    sh = shapes(cluster, P)
    return peak_bytes(spec, cluster, P, sh, cluster.stack.flash_attention)


def predict(spec: TransformerSpec, cluster: Cluster, plan: Plan,
            topo: Topology | None = None) -> dict[str, Any]:
    """The `paraplan predict --json` object for one plan; InputError if the plan is invalid."""
    problems = plan_problems(plan, spec, cluster)
    if problems:
        raise InputError("plan is invalid for this model and cluster: " + "; ".join(problems))
    topo = topo or topology_for(cluster)
    P = PlanArrays.from_plans([plan])
    r = {k: v[0] for k, v in evaluate(spec, cluster, topo, P).items()}
    _, layouts = link_arrays(topo, P, experts=spec.moe is not None)
    sh, flash = shapes(cluster, P), cluster.stack.flash_attention

    def whole(comp: dict[str, np.ndarray]) -> dict[str, int]:
        return {k: int(round(float(v[0]))) for k, v in comp.items()}
    by_stage = {name: whole(comp) for name, comp in memory_by_stage(spec, cluster, P, sh,
                                                                    flash).items()}
    per_stage = [whole(stage_memory(spec, cluster, P, sh, flash, np.array([s]), s == 0,
                                    s == plan.pp - 1)) for s in range(plan.pp)]
    mem = {k: int(round(float(r[f"memory.{k}"]))) for k in MEMORY_KEYS}
    mem["peak_bytes"] = int(round(float(r["memory.peak_bytes"])))
    mem["capacity_bytes"] = cluster.gpu.memory_bytes
    if spec.moe is not None:
        # The routed experts' share of the totals above (weights ... activations), apart.
        mem["experts"] = {k: int(round(float(r[f"memory.experts.{k}"])))
                          for k in EXPERT_MEMORY_KEYS}
    step, band = float(r["step_time_s"]), cluster_band(cluster)
    low, high = band.factors
    return {
        "transformer": spec.name,
        "cluster": cluster.name,
        "stack": cluster.stack.name,
        "num_gpus": cluster.num_gpus,
        "plan": plan.to_json_dict(),
        "step_time_s": step,
        # The true step time's 10th-90th percentile range from the validation residuals of
        # this stack family and GPU generation (planner/uncertainty.py); holds step_time_s.
        "step_time_range_s": [step * low, step * high],
        "step_time_band": band.as_json(),
        "tokens_per_s": float(r["tokens_per_s"]),
        "model_tflops_per_gpu": float(r["model_tflops_per_gpu"]),
        "hardware_tflops_per_gpu": float(r["hardware_tflops_per_gpu"]),
        "mfu": float(r["mfu"]),
        "memory": mem,
        "fits": bool(r["fits"]),
        "memory_by_stage": by_stage,
        "memory_per_stage": per_stage,
        "breakdown": {k: float(r[k]) for k in BREAKDOWN_KEYS},
        "links": {k: {"size": g.size, "tier": g.tier, "link": g.link_name,
                      "bandwidth_GBps": g.bandwidth_GBps, "ranks_per_node": g.ranks_per_node,
                      "nodes_spanned": g.nodes_spanned}
                  for k, g in layouts[0].items()
                  # The ZeRO groups only where they differ from dp x cp (hybrid sharding).
                  if g.size > 1 and (k not in ZERO_KINDS or plan.hsdp)},
        "params": total_params(spec),
        "active_params": active_params(spec),
        "model_flops_per_step": float(model_flops_per_step(spec, np.array([plan.global_batch_size]))[0]),
    }
