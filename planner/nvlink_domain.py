"""Scale-up domains: the GPUs that share one switched fabric (NVLink + NVSwitch).

On an 8-GPU server the domain is the node. On a rack-scale system (GB200 NVL72: 18 compute
trays of 4 GPUs behind 9 NVLink Switch trays, one NVLink domain of 72 GPUs) a domain spans
several nodes: a group of ranks inside it communicates at NVLink bandwidth whatever node its
members sit on, and only traffic between domains uses the scale-out NICs.

A profile's "node" stays the unit that `num_nodes` counts and that owns `nics_per_node` NICs
(8 GPUs for gb200_nvl72: two compute trays, as the validation runs count GB200 jobs in
8-GPU units). `intra_node.domain_gpus` (a whole number of nodes) is the size of one physical
domain.

Placement of a job on domains: it uses the fewest domains that can hold it, split evenly over
them when that is a whole number of nodes each, else filled in node order with the last one
partial. Even splits are what SLURM's `--segment` gives on GB200 (the job's nodes come in
segments that each sit in one NVLink domain): Megatron-Core's MoE model zoo runs Qwen3-235B
with EP=64 on 256 GB200 GPUs with `SEGMENT=16` trays ("Should be EP // 4"; yanring/
Megatron-MoE-ModelZoo best_practice/qwen3/run_gb200_235b.sh @020b813, sbatch_benchmarking.sh
`--segment=${SEGMENT}`), i.e. 4 racks x 64 GPUs, not 72 + 72 + 72 + 40. So 256 GPUs of NVL72
are 4 domains of 64; 264 GPUs (33 nodes, no even split) are 72 + 72 + 72 + 48. A profile with
a smaller `domain_gpus` models a scheduler that caps what a job gets of each rack.
"""

from __future__ import annotations

import numpy as np

from planner.hardware import Cluster


def gpus_per_domain(cluster: Cluster) -> int:
    """GPUs of one full scale-up domain (`intra_node.domain_gpus`, else `gpus_per_node`)."""
    d = cluster.intra_node.domain_gpus
    return cluster.gpus_per_node if d is None else d


def nodes_per_domain(cluster: Cluster) -> int:
    """Nodes of one full domain (1 unless the fabric spans nodes)."""
    return gpus_per_domain(cluster) // cluster.gpus_per_node


def nodes_in_domain(cluster: Cluster) -> np.ndarray:
    """(domains the job uses,) nodes of the job in each (module docstring: fewest domains,
    even split when whole nodes allow, else in order with the last one partial)."""
    full, n = nodes_per_domain(cluster), cluster.num_nodes
    count = -(-n // full)
    if n % count == 0:
        return np.full(count, n // count)
    return np.array([full] * (n // full) + [n % full])


def domain_of_node(cluster: Cluster) -> np.ndarray:
    """(num_nodes,) domain index of each node: consecutive nodes fill a domain, then the next."""
    sizes = nodes_in_domain(cluster)
    return np.repeat(np.arange(len(sizes)), sizes)
