"""The sbatch script `paraplan launch --slurm` writes: one `paraplan run` per node (srun starts
one task per node), each meeting the others at torchrun's c10d rendezvous on the first node.
Torch-free: the script is written on a login node."""

from __future__ import annotations

import shlex

from planner.plan import Plan
from planner.schema import InputError

RDZV_PORT = 29500


def node_layout(plan: Plan, nodes: int, gpus_per_node: int | None) -> int:
    """Ranks per node: the plan's world split evenly over `nodes`; InputError otherwise."""
    if nodes < 1:
        raise InputError(f"--nodes must be >= 1, got {nodes}")
    per_node = gpus_per_node or plan.world_size // nodes
    if per_node < 1 or nodes * per_node != plan.world_size:
        raise InputError(f"plan has {plan.world_size} ranks (dp {plan.dp} x tp {plan.tp} x pp "
                         f"{plan.pp} x cp {plan.cp}), not --nodes {nodes} x "
                         f"{gpus_per_node or 'world / nodes'} GPUs per node")
    return per_node


def sbatch_script(plan_arg: str, plan: Plan, nodes: int, per_node: int, *, time: str,
                  transformer: str | None = None, steps: int = 5, result: str = "run.json",
                  job_name: str = "paraplan") -> str:
    """The script's text. `plan_arg` (a path or inline JSON) is passed to `paraplan run` as
    given, so a plan file must be on a filesystem every node sees."""
    run = ["paraplan", "run", "--plan", plan_arg, "--steps", str(steps), "--out", result]
    if transformer:
        run += ["-t", transformer]
    # single quotes: srun's shell on each node expands $SLURM_NODEID, not this one
    per_task = (f"{shlex.join(run)} --nnodes $SLURM_NNODES --nproc-per-node {per_node} "
                f"--node-rank $SLURM_NODEID --rdzv-endpoint $MASTER_ADDR:{RDZV_PORT} "
                f"--rdzv-id $SLURM_JOB_ID")
    return "\n".join([
        "#!/bin/bash",
        f"# Written by `paraplan launch --slurm`: plan dp {plan.dp} x tp {plan.tp} x pp {plan.pp}"
        f" x cp {plan.cp} ({plan.world_size} ranks) on {nodes} nodes of {per_node} GPUs.",
        f"#SBATCH --job-name={job_name}",
        "# one node per plan node; srun starts one task (one torchrun) on each",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        "# torchrun starts this many ranks per node: ranks r..r+K-1 share a node, so tp groups",
        "# (innermost in the default order tp-cp-dp-pp) stay on NVLink",
        f"#SBATCH --gpus-per-node={per_node}",
        f"#SBATCH --time={time}",
        "set -euo pipefail",
        "",
        "# The first node of the allocation hosts the c10d rendezvous store (node_rank 0).",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "export MASTER_ADDR",
        "",
        "# On every node: torchrun --nnodes $SLURM_NNODES --nproc-per-node "
        f"{per_node} --rdzv-backend c10d",
        f"#   --rdzv-endpoint $MASTER_ADDR:{RDZV_PORT} --rdzv-id $SLURM_JOB_ID "
        "-m executor.worker <job>,",
        "# started by `paraplan run` (which writes the job and names a failing rank or a",
        "# node that never joined). SLURM_NODEID is the node rank; node 0 writes "
        f"{result}.",
        f"srun --nodes={nodes} --ntasks-per-node=1 bash -c {shlex.quote(per_task)}",
        ""])
