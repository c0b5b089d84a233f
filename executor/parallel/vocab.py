"""Vocabulary-parallel embedding (Shoeybi et al. 2019, section 3: the embedding table split by
rows over the tensor-parallel group, each rank looking up only the tokens it owns, the partial
outputs summed), written by hand.

Why not `RowwiseParallel` on the `nn.Embedding`: its forward is right, but DTensor in torch 2.13
has no row-sharded strategy for `embedding_dense_backward` (torch/distributed/tensor/_ops/
_embedding_ops.py lists column-sharded, batch-sharded and partial ones), so backward runs the
lookup's gradient replicated: every rank computes and keeps a gradient of the *whole* table (a
Replicate DTensor beside its Shard(0) parameter), tp times the bytes the plan accounts for.
Here the lookup runs on the local shard as a plain tensor, so autograd returns the gradient of
the local rows only, as Megatron-LM's VocabParallelEmbedding does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Shard, distribute_tensor


class VocabParallelEmbedding(nn.Module):
    """Replaces an `nn.Embedding`: `weight` becomes a Shard(0) DTensor over `mesh` (same name,
    so checkpoints and tied heads see the same parameter); the output is this rank's partial
    lookup as a Partial DTensor, summed by `PartialSum` after the token and position lookups
    are added (one collective for both, as the cost model counts it:
    planner/cost/step_time.py, `_embedding_comm`)."""

    def __init__(self, embedding: nn.Embedding, mesh: DeviceMesh):
        super().__init__()
        self.mesh = mesh
        self.num_embeddings = embedding.num_embeddings
        self.weight = nn.Parameter(distribute_tensor(embedding.weight.detach(), mesh, [Shard(0)]))
        # torch.chunk's split, which Shard(0) uses: ceil(V / tp) rows per rank, the last short
        # (the token table is padded to a multiple of tp, so only positions can be uneven).
        rows = math.ceil(self.num_embeddings / mesh.size())
        self.first_row = mesh.get_local_rank() * rows

    def forward(self, tokens: torch.Tensor) -> DTensor:
        w = self.weight.to_local()  # its gradient comes back as a Shard(0) DTensor
        ids = tokens - self.first_row
        outside = (ids < 0) | (ids >= w.shape[0])
        out = F.embedding(ids.masked_fill(outside, 0), w)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return DTensor.from_local(out, self.mesh, [Partial()], run_check=False)


class PartialSum(nn.Module):
    """Sums partial embedding lookups over the tensor-parallel group into `output_layout`:
    all-reduce (Replicate), or reduce-scatter over the sequence (Shard(1), sequence parallel);
    backward is the matching identity or all-gather (Shoeybi et al. 2019, section 3;
    Korthikanti et al. 2022, section 4.2.2). Returns a plain local tensor."""

    def __init__(self, mesh: DeviceMesh, output_layout: Placement):
        super().__init__()
        self.mesh, self.output_layout = mesh, output_layout

    def forward(self, x: DTensor) -> torch.Tensor:
        return x.redistribute(self.mesh, [self.output_layout]).to_local()
