"""The DeviceMesh of a Plan. Its shape is `plan.mesh_dims()` (outermost first), the same layout
planner/topology.py reads, so rank r sits at the same (pp, dp, cp, tp) coordinate in both: the
planner's communication model and the executor's process groups describe the same groups
(tests/test_executor_equivalence.py checks every group on every rank). Mixture-of-experts
models add the expert groups (etp, ep, edp), built from planner/expert_layout.py's
`expert_rank_groups`, so planner and executor agree on them by construction."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planner.expert_layout import EXPERT_KINDS, expert_rank_groups
from planner.plan import Plan


@dataclass
class ParallelMesh:
    """The mesh, its sub-meshes and this rank's coordinates."""

    mesh: DeviceMesh
    plan: Plan
    _expert: dict[str, dist.ProcessGroup] = field(default_factory=dict)

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
        for kind, group in self._expert.items():
            out[kind] = dist.get_process_group_ranks(group)
        return out

    def expert_groups(self) -> dict[str, dist.ProcessGroup]:
        """This rank's etp, ep and edp groups (all ranks call it together the first time: every
        rank creates every group, kinds and groups in the same order). A group's ranks are in
        ascending order, so a rank's place in its ep group decides which experts it holds."""
        if not self._expert:
            p = self.plan
            sizes = {"tp": p.tp, "cp": p.cp, "dp": p.dp, "pp": p.pp}
            me = dist.get_rank()
            for kind in EXPERT_KINDS:
                for ranks in expert_rank_groups(sizes, p.order, p.ep, p.etp, kind).tolist():
                    group = dist.new_group(sorted(ranks))
                    if me in ranks:
                        self._expert[kind] = group
        return self._expert

    def edp_mesh(self) -> DeviceMesh:
        """A 1-D mesh over this rank's edp group (ZeRO shards expert state over it)."""
        return DeviceMesh.from_group(self.expert_groups()["edp"], self.mesh.device_type)


def build_mesh(plan: Plan, device_type: str) -> ParallelMesh:
    """All processes must call this together (it creates the process groups)."""
    dims = plan.mesh_dims()
    mesh = init_device_mesh(device_type, tuple(s for _, s in dims),
                            mesh_dim_names=tuple(n for n, _ in dims))
    return ParallelMesh(mesh, plan)
