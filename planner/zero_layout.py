"""Where the ZeRO / FSDP groups of hybrid sharding land (Plan.dp_shard).

The data-parallel dimension splits in two: its innermost dp_shard ranks (in rank order) form a
shard group, which with the context-parallel ranks holds one sharded copy of the weights,
gradients and optimizer state, and the dp / dp_shard shard groups replicate it. This is
PyTorch's HSDP mesh, (replicate, shard) outermost first (torch.distributed.fsdp.fully_shard on
a 2-D DeviceMesh; torchtitan ParallelDims builds ["pp", "dp_replicate", "dp_shard", "cp",
"tp"]), and Megatron-Core's distributed-optimizer instances (consecutive data-parallel ranks
per instance, megatron/core/parallel_state.py). With the default rank order the shard group of
dp_shard * tp * cp <= GPUs per node sits inside a node, so the weight gathers and gradient
reduce-scatters stay on NVLink and only the replicas' all-reduce of 1 / (dp_shard * cp) of the
gradients crosses nodes.

Kinds: `zshard` (cp x the inner dp_shard ranks: gathers, reduce-scatters, the sharded
optimizer) and `zrep` (the dp / dp_shard replicas: the gradient shards' all-reduce). Without
hybrid sharding `zshard` is the dp x cp group and `zrep` has one rank. Planner (topology) and
executor (its HSDP mesh) both take their groups from here.
"""

from __future__ import annotations

import numpy as np

ZERO_KINDS: tuple[str, ...] = ("zshard", "zrep")

def split_order(order: str) -> list[str]:
    """The rank order (innermost first) with dp split into its shard part (inner) and its
    replicate part (outer)."""
    out: list[str] = []
    for d in order.split("-"):
        out += ["dps", "dpr"] if d == "dp" else [d]
    return out


def hsdp_meshes(sizes: dict[str, int], order: str, dp_shard: int) -> np.ndarray:
    """(meshes, dp / dp_shard, cp * dp_shard) array: every 2-D hybrid-sharding mesh of the
    layout `sizes` (tp, cp, dp, pp) and rank `order` (innermost first), replicas along the
    rows, the shard group (cp, then the inner dp ranks) along the columns."""
    dp = sizes["dp"]
    if dp_shard < 1 or dp % dp_shard:
        raise ValueError(f"dp_shard={dp_shard} does not divide dp={dp}")
    split = {**{k: v for k, v in sizes.items() if k != "dp"}, "dps": dp_shard,
             "dpr": dp // dp_shard}
    outer_first = list(reversed(split_order(order)))
    grid = np.arange(int(np.prod([split[d] for d in outer_first]))).reshape(
        [split[d] for d in outer_first])
    axes = [outer_first.index(d) for d in ("dpr", "cp", "dps")]
    return np.moveaxis(grid, axes, [-3, -2, -1]).reshape(-1, dp // dp_shard,
                                                          sizes["cp"] * dp_shard)


def zero_rank_groups(sizes: dict[str, int], order: str, dp_shard: int,
                     kind: str) -> np.ndarray:
    """(number of groups, group size) array of ranks of a ZeRO group kind (ZERO_KINDS): the
    rows (`zshard`) or the columns (`zrep`) of hsdp_meshes."""
    if kind not in ZERO_KINDS:
        raise ValueError(f"unknown ZeRO group kind '{kind}'; accepted: {', '.join(ZERO_KINDS)}")
    meshes = hsdp_meshes(sizes, order, dp_shard)
    if kind == "zshard":
        return meshes.reshape(-1, meshes.shape[2])
    return np.swapaxes(meshes, 1, 2).reshape(-1, meshes.shape[1])
