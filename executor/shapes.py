"""Which distinct executor code paths ("shapes") the search emits for a small model on a few
processes, with one plan for each: what the equivalence tests and the benchmark run."""

from __future__ import annotations

from planner.hardware import Cluster, load_cluster
from planner.plan import Plan
from planner.search.search import search
from planner.transformer import TransformerSpec

from executor.parallel.data import mode


def shape(p: Plan) -> tuple:
    """What changes the executor's code path: sizes, schedule, data-parallel mechanism
    (executor/parallel/data.py: none, DDP, explicit all-reduce, FSDP2) and sequence parallel.
    ZeRO-1/2 and ZeRO-3 share the FSDP2 path and differ only in when weights are re-gathered."""
    return (p.dp, p.tp, p.pp, p.cp, p.schedule, mode(p), p.sequence_parallel)


def one_node(world: int, base: str = "dgx_h100") -> Cluster:
    """A single node of `world` devices; only the layout matters to which plans are valid."""
    data = load_cluster(base).model_dump()
    data.update(gpus_per_node=world, num_nodes=1, name=f"{base}-{world}")
    return Cluster.model_validate(data)


def emitted_shapes(spec: TransformerSpec, cluster: Cluster, global_batch: int) -> dict[tuple,
                                                                                       Plan]:
    """One plan per shape among the plans the search emits, the best-ranked of each."""
    res = search(spec, cluster, global_batch, "fp32")
    out: dict[tuple, Plan] = {}
    for i in range(res.fitting):
        p = res.plan(i)
        out.setdefault(shape(p), p)
    return out
