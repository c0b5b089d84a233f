"""The DeviceMesh of a Plan. Its shape is `plan.mesh_dims()` (outermost first), the same layout
planner/topology.py reads, so rank r sits at the same (pp, dp, cp, tp) coordinate in both: the
planner's communication model and the executor's process groups describe the same groups
(tests/test_executor_equivalence.py checks every group on every rank). Mixture-of-experts
models add the expert groups (etp, ep, edp), built from planner/expert_layout.py's
`expert_rank_groups`, and hybrid sharding (plan.dp_shard < dp) its 2-D FSDP mesh from
planner/zero_layout.py's `hsdp_meshes`, so planner and executor agree on them by
construction."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planner.expert_layout import EXPERT_KINDS, expert_rank_groups
from planner.plan import Plan
from planner.zero_layout import hsdp_meshes


@dataclass
class ParallelMesh:
    """The mesh, its sub-meshes and this rank's coordinates."""

    mesh: DeviceMesh
    plan: Plan
    _expert: dict[str, dist.ProcessGroup] = field(default_factory=dict)
    _hsdp: DeviceMesh | None = None

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

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh FSDP2 shards over: dp x cp (1-D); with hybrid sharding (plan.dp_shard <
        dp) the 2-D (dp_rep, dp_shard_cp) mesh, which fully_shard replicates over its first
        dimension and shards over its second (HSDP; torchtitan's ("dp_replicate",
        "dp_shard_cp")). The 2-D mesh is made of the planner's groups (planner/zero_layout.py)
        from process groups every rank creates in the same order the first time, all ranks
        together (as expert_groups): slicing the mesh instead fails for rank orders that put cp
        outside dp."""
        p = self.plan
        if p.zero_shard == p.dp:
            return self.dp_cp_mesh
        if self._hsdp is None:
            sizes = {"tp": p.tp, "cp": p.cp, "dp": p.dp, "pp": p.pp}
            me, mine = dist.get_rank(), None
            for mesh in hsdp_meshes(sizes, p.order, p.zero_shard).tolist():
                rows = [dist.new_group(r) for r in mesh]
                cols = [dist.new_group(list(c)) for c in zip(*mesh)]
                for i, r in enumerate(mesh):
                    if me in r:
                        mine = (mesh, cols[r.index(me)], rows[i])
            mesh, rep, shard = mine
            self._hsdp = DeviceMesh.from_group([rep, shard], self.mesh.device_type, mesh=mesh,
                                               mesh_dim_names=("dp_rep", "dp_shard_cp"))
        return self._hsdp

    def group(self, name: str) -> dist.ProcessGroup:
        return self.mesh.get_group(name)

    def coord(self, name: str) -> int:
        return self.mesh.get_local_rank(name)

    def group_ranks(self) -> dict[str, list[int]]:
        """Global ranks of this rank's group of each kind (planner.topology.KINDS names)."""
        out = {n: dist.get_process_group_ranks(self.group(n)) for n in ("tp", "cp", "dp", "pp")}
        out["dpcp"] = dist.get_process_group_ranks(self.dp_cp_mesh.get_group())
        if self.plan.zero_shard < self.plan.dp:  # planner/zero_layout.py's kinds
            out["zshard"] = dist.get_process_group_ranks(self.fsdp_mesh.get_group("dp_shard_cp"))
            out["zrep"] = dist.get_process_group_ranks(self.fsdp_mesh.get_group("dp_rep"))
        else:
            out["zshard"], out["zrep"] = out["dpcp"], [dist.get_rank()]
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
