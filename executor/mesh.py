"""The DeviceMesh of a Plan. Its shape is `plan.mesh_dims()` (outermost first), the same layout
planner/topology.py reads, so rank r sits at the same (pp, dp, cp, tp) coordinate in both: the
planner's communication model and the executor's process groups describe the same groups
(tests/test_executor_equivalence.py checks every group on every rank). Mixture-of-experts
models add the expert groups (etp, ep, edp), built from planner/expert_layout.py's
`expert_rank_groups`. Hybrid sharding (plan.dp_shard < dp) splits the mesh's dp dimension
into dp_rep (outer) and dp_shard (inner), as planner/zero_layout.py splits it (the same ranks
at the same coordinates); a test checks its groups against the planner's."""

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
    def hybrid(self) -> bool:
        """Hybrid sharding: the mesh's dp dimension is split into dp_rep x dp_shard."""
        return "dp_rep" in self.mesh.mesh_dim_names

    @property
    def dp_cp_mesh(self) -> DeviceMesh:
        """dp x cp flattened to one dimension: the group that reduces gradients and shards ZeRO
        state (context-parallel ranks hold the same weights)."""
        # torch's (private) flatten, as torchtitan
        return self.sub("dp_rep", "dp_shard", "dp", "cp")._flatten("dp_cp")

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh FSDP2 shards over: dp x cp (1-D); with hybrid sharding the 2-D (dp_rep,
        dp_shard x cp) mesh, which fully_shard replicates over its first dimension and shards
        over its second (HSDP; torchtitan's ("dp_replicate", "dp_shard_cp")). Sliced from the
        root mesh, so that FSDP2 can combine it with the tensor-parallel mesh, wherever that is
        a valid slice (cp inside dp in the rank order, or cp = 1); otherwise made from the
        planner's groups (planner/zero_layout.py), which FSDP2 cannot combine with tp."""
        p = self.plan
        if not self.hybrid:
            return self.dp_cp_mesh
        if self._hsdp is None:
            names = self.mesh.mesh_dim_names
            if p.cp == 1:
                self._hsdp = self.mesh["dp_rep", "dp_shard"]
            elif names.index("cp") > names.index("dp_shard"):
                self.sub("dp_shard", "cp")._flatten("dp_shard_cp")
                self._hsdp = self.mesh["dp_rep", "dp_shard_cp"]
            else:
                if p.tp > 1:
                    raise ValueError(
                        f"dp_shard={p.dp_shard} with tp={p.tp} and cp={p.cp} outside dp in "
                        f"order '{p.order}': the executor cannot build FSDP2's 2-D mesh from "
                        "the same root mesh as the tensor-parallel one; put cp inside dp (e.g. "
                        "tp-cp-dp-pp)")
                self._hsdp = self._hsdp_from_groups()
        return self._hsdp

    def _hsdp_from_groups(self) -> DeviceMesh:
        """The 2-D HSDP mesh from process groups every rank creates in the same order, all
        ranks together (as expert_groups), from the planner's groups."""
        p = self.plan
        sizes = {"tp": p.tp, "cp": p.cp, "dp": p.dp, "pp": p.pp}
        me, mine = dist.get_rank(), None
        for mesh in hsdp_meshes(sizes, p.order, p.zero_shard).tolist():
            rows = [dist.new_group(r) for r in mesh]
            cols = [dist.new_group(list(c)) for c in zip(*mesh)]
            for i, r in enumerate(mesh):
                if me in r:
                    mine = (mesh, cols[r.index(me)], rows[i])
        mesh, rep, shard = mine
        return DeviceMesh.from_group([rep, shard], self.mesh.device_type, mesh=mesh,
                                     mesh_dim_names=("dp_rep", "dp_shard_cp"))

    def group(self, name: str) -> dist.ProcessGroup:
        if name == "dp" and self.hybrid:
            return self.sub("dp_rep", "dp_shard")._flatten("dp").get_group()
        return self.mesh.get_group(name)

    def coord(self, name: str) -> int:
        if name == "dp" and self.hybrid:  # rank order: dp index = replica * dp_shard + shard
            return (self.mesh.get_local_rank("dp_rep") * self.plan.zero_shard
                    + self.mesh.get_local_rank("dp_shard"))
        return self.mesh.get_local_rank(name)

    def group_ranks(self) -> dict[str, list[int]]:
        """Global ranks of this rank's group of each kind (planner.topology.KINDS names)."""
        out = {n: dist.get_process_group_ranks(self.group(n)) for n in ("tp", "cp", "dp", "pp")}
        out["dpcp"] = dist.get_process_group_ranks(self.dp_cp_mesh.get_group())
        if self.hybrid:  # planner/zero_layout.py's kinds: the FSDP mesh's two dimensions
            out["zshard"] = dist.get_process_group_ranks(self.fsdp_mesh.get_group(1))
            out["zrep"] = dist.get_process_group_ranks(self.fsdp_mesh.get_group(0))
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


def mesh_shape(plan: Plan) -> list[tuple[str, int]]:
    """(dimension, size) outermost first: plan.mesh_dims(), with dp split into dp_rep (outer)
    and dp_shard (inner) under hybrid sharding: the same ranks at the same coordinates, as
    planner/zero_layout.py splits it."""
    out: list[tuple[str, int]] = []
    for name, size in plan.mesh_dims():
        if name == "dp" and plan.hsdp:
            out += [("dp_rep", plan.dp // plan.zero_shard), ("dp_shard", plan.zero_shard)]
        else:
            out.append((name, size))
    return out


def build_mesh(plan: Plan, device_type: str) -> ParallelMesh:
    """All processes must call this together (it creates the process groups)."""
    dims = mesh_shape(plan)
    mesh = init_device_mesh(device_type, tuple(s for _, s in dims),
                            mesh_dim_names=tuple(n for n, _ in dims))
    return ParallelMesh(mesh, plan)
