"""The DeviceMesh of a Plan. Its shape is `plan.mesh_dims()` (outermost first), the same layout
planner/topology.py reads, so rank r sits at the same (pp, dp, cp, tp) coordinate in both: the
planner's communication model and the executor's process groups describe the same groups
(tests/test_executor_equivalence.py checks every group on every rank)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planner.plan import Plan


@dataclass
class ParallelMesh:
    """The mesh, its sub-meshes and this rank's coordinates."""

    mesh: DeviceMesh
    plan: Plan

    def sub(self, *names: str) -> DeviceMesh:
        """Sub-mesh over dimensions (any order given; sliced in mesh order)."""
        ordered = tuple(n for n in self.mesh.mesh_dim_names if n in names)
        return self.mesh[ordered]

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.sub("tp")

    @property
    def dp_cp_mesh(self) -> DeviceMesh:
        """dp x cp flattened to one dimension: the group that reduces gradients and shards ZeRO
        state (context-parallel ranks hold the same weights)."""
        return self.sub("dp", "cp")._flatten("dp_cp")  # torch's (private) flatten, as torchtitan

    def group(self, name: str) -> dist.ProcessGroup:
        return self.mesh.get_group(name)

    def coord(self, name: str) -> int:
        return self.mesh.get_local_rank(name)

    def group_ranks(self) -> dict[str, list[int]]:
        """Global ranks of this rank's group of each kind (planner.topology.KINDS names)."""
        out = {n: dist.get_process_group_ranks(self.group(n)) for n in ("tp", "cp", "dp", "pp")}
        out["dpcp"] = dist.get_process_group_ranks(self.dp_cp_mesh.get_group())
        return out


def build_mesh(plan: Plan, device_type: str) -> ParallelMesh:
    """All processes must call this together (it creates the process groups)."""
    dims = plan.mesh_dims()
    mesh = init_device_mesh(device_type, tuple(s for _, s in dims),
                            mesh_dim_names=tuple(n for n, _ in dims))
    return ParallelMesh(mesh, plan)
