"""The search space: the full cartesian product of every plan field's domain, generated as
arrays, one block of layouts at a time.

Domains (for a spec, a cluster of N GPUs and a global batch B):
  (tp, cp, dp, pp)     every ordered factorization of N into four factors
  micro_batch_size     every divisor of B
  schedule, virtual    1f1b and gpipe with 1 stage per rank; interleaved_1f1b with
                       v = 2..max_virtual(num_layers) (other pairings are not plans, so not
                       generated); stages may hold unequal numbers of layers
  zero_stage           0..3 (the search prunes stage 1 where the stack runs ZeRO as FSDP2 and
                       it is the same plan as stage 2, see planner/search/prune.py: not on
                       the Megatron stacks, whose stage 2 reduces every backward, unless one
                       micro-batch and one stage make them equal)
  recompute            none, selective, full
  sequence_parallel    off, on
  (ep, etp)            mixture-of-experts specs only: ep every divisor of num_experts and etp
                       1 or tp (Megatron-Core's two usual foldings: experts without tensor
                       parallelism, or split like the dense layers), with ep*etp dividing
                       tp*cp*dp and etp dividing the expert width; (1, 1) for dense specs
  dp_shard             dp (full sharding) and, where the stack runs ZeRO as FSDP2 and the
                       cluster spans several scale-up domains (nodes, or NVLink domains), the
                       data-parallel ranks of one domain, domain / (tp*cp), when that is at
                       least 2, divides dp and is smaller (hybrid sharding inside a domain,
                       replicas across; dense specs only)
The rank order stays the default (`tp-cp-dp-pp`); precision is the user's choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np

from planner.hardware import PRECISIONS
from planner.plan import DEFAULT_ORDER, ORDERS, RECOMPUTE, SCHEDULES
from planner.plan_arrays import PlanArrays
from planner.search.prune import Grid


# Default global batch: 4 x 2^20 tokens, Llama 3 405B's initial batch (Llama Team 2024,
# arXiv 2407.21783, section 3.4.1: 4M tokens in sequences of 4,096, i.e. 1,024 x 4,096).
DEFAULT_BATCH_TOKENS = 4 * 2**20


def batch_sequences(batch_tokens: float, seq_len: int) -> int:
    """The one rule for a global batch given in tokens (`paraplan search`'s and `paraplan
    estimate`'s defaults, and `--global-batch-tokens`): batch_tokens / seq_len sequences,
    rounded to the nearest power of two (in log2; at least 1). The result depends on the model
    only, never on the cluster, so every cluster is planned for the same batch, and it divides
    by every power-of-two data-parallel width and micro-batch."""
    return 2 ** max(0, round(math.log2(max(1.0, batch_tokens / seq_len))))


def max_virtual(num_layers: int) -> int:
    """Most virtual stages (model chunks per rank) a plan can have. Every chunk but the first
    and the last holds at least one layer; those two may hold only the embedding and the head
    (Megatron-LM's --account-for-embedding-in-pipeline-split and
    --account-for-loss-in-pipeline-split; megatron/training/arguments.py): pp * v <= num_layers
    + 2. Interleaving needs pp >= 2, hence v <= (num_layers + 2) // 2. (Per-plan,
    planner.validity rejects pp * v > num_layers + 2.)"""
    return max(1, (num_layers + 2) // 2)


def divisors(n: int) -> list[int]:
    """Sorted divisors of n >= 1."""
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def layouts(num_gpus: int, moe=None) -> np.ndarray:
    """(k, 6) array of (tp, cp, dp, pp, ep, etp) with tp*cp*dp*pp = num_gpus; ep = etp = 1
    unless `moe` (a planner.moe.MoESpec) is given (see the module docstring)."""
    out = []
    for tp in divisors(num_gpus):
        for cp in divisors(num_gpus // tp):
            for dp in divisors(num_gpus // (tp * cp)):
                pp = num_gpus // (tp * cp * dp)
                for ep, etp in _expert_splits(tp, tp * cp * dp, moe):
                    out.append((tp, cp, dp, pp, ep, etp))
    return np.array(out, dtype=np.int64)


def _expert_splits(tp: int, stage_ranks: int, moe) -> list[tuple[int, int]]:
    if moe is None:
        return [(1, 1)]
    out = []
    for etp in sorted({1, tp}):
        if moe.expert_ffn_hidden_size % etp:
            continue
        out += [(ep, etp) for ep in divisors(moe.num_experts) if stage_ranks % (ep * etp) == 0]
    return out


def with_shards(lays: np.ndarray, gpus_per_node: int | None) -> np.ndarray:
    """`layouts` rows with a dp_shard column: dp, and (`gpus_per_node`, the scale-up domain's
    GPUs, given) each dense row's domain-local shard group (module docstring) as a second
    row."""
    full = np.column_stack([lays, lays[:, 2]])
    if gpus_per_node is None:
        return full
    tp, cp, dp, ep, etp = lays[:, 0], lays[:, 1], lays[:, 2], lays[:, 4], lays[:, 5]
    fits = (gpus_per_node % (tp * cp) == 0) & (ep * etp == 1)
    node = np.where(fits, gpus_per_node // (tp * cp), 0)
    ok = fits & (node >= 2) & (node < dp) & (dp % np.maximum(node, 1) == 0)
    hybrid = np.column_stack([lays[ok], node[ok]])
    # Each layout's rows together (full sharding first), the layouts in their order.
    rows = np.concatenate([full, hybrid])
    key = np.concatenate([np.arange(len(lays)), np.flatnonzero(ok)])
    return rows[np.argsort(key, kind="stable")]


LAYOUT_COLUMNS = ("tp", "cp", "dp", "pp", "ep", "etp", "dp_shard")  # Space.layouts' columns


@dataclass(frozen=True)
class Space:
    """Domains of the searched fields."""

    layouts: np.ndarray
    mbs: np.ndarray
    vpp: np.ndarray
    precision: str
    order: str = DEFAULT_ORDER

    @staticmethod
    def build(num_gpus: int, num_layers: int, global_batch: int, precision: str,
              moe=None, hsdp_gpus_per_node: int | None = None) -> "Space":
        """`hsdp_gpus_per_node`: the scale-up domain's GPUs, to search hybrid sharding
        inside it (with_shards); None: full sharding only."""
        return Space(layouts=with_shards(layouts(num_gpus, moe), hsdp_gpus_per_node),
                     mbs=np.array(divisors(global_batch)),
                     vpp=np.arange(1, max_virtual(num_layers) + 1), precision=precision)

    @property
    def schedules(self) -> tuple[np.ndarray, np.ndarray]:
        """(schedule code, virtual stages) pairs."""
        v = [int(x) for x in self.vpp if x > 1]
        sched = [SCHEDULES.index("1f1b"), SCHEDULES.index("gpipe")] + \
            [SCHEDULES.index("interleaved_1f1b")] * len(v)
        return np.array(sched), np.array([1, 1] + v)

    @property
    def per_layout(self) -> int:
        """Candidates per layout."""
        return len(self.mbs) * len(self.schedules[0]) * 4 * len(RECOMPUTE) * 2

    @property
    def size(self) -> int:
        """Total candidates."""
        return len(self.layouts) * self.per_layout

    def columns(self, global_batch: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(the settings other than the layout, one entry per column of every grid; the fields
        one value for the whole search)."""
        sched, vpp = self.schedules
        grid = np.meshgrid(self.mbs, np.arange(len(sched)), np.arange(4),
                           np.arange(len(RECOMPUTE)), np.array([False, True]), indexing="ij")
        grid = [g.ravel() for g in grid]
        cols = {"mbs": grid[0], "vpp": vpp[grid[1]], "schedule": sched[grid[1]],
                "zero": grid[2], "recompute": grid[3], "sp": grid[4]}
        const = {"gbs": global_batch, "precision": PRECISIONS.index(self.precision),
                 "order": ORDERS.index(self.order), "grad_sync": 0, "ps_servers": 0,
                 "ps_placement": 0, "passes": 1}  # ring gradient sync, one pipeline schedule
        # per step: PlanArrays' defaults
        return cols, const

    def grids(self, global_batch: int, layouts_per_block: int) -> Iterator[Grid]:
        """Consecutive blocks of layouts, each as a Grid (layouts x the other settings), which
        validity pruning reads factored (planner/search/prune.py)."""
        cols, const = self.columns(global_batch)
        for start in range(0, len(self.layouts), layouts_per_block):
            yield Grid(rows=self._rows(slice(start, start + layouts_per_block)), cols=cols,
                       const=const)

    def _rows(self, idx: slice) -> dict[str, np.ndarray]:
        lay = self.layouts[idx]
        return {k: lay[:, i] for i, k in enumerate(LAYOUT_COLUMNS)}

    def field(self, global_batch: int, name: str, layout: np.ndarray,
              col: np.ndarray) -> np.ndarray:
        """Field `name` of candidates (layout[i], col[i]) (indices into `layouts` and the
        grids' columns), as Grid.cells builds it: the same values and dtype."""
        if name in LAYOUT_COLUMNS:
            return self.layouts[:, LAYOUT_COLUMNS.index(name)][layout]
        cols, const = self.columns(global_batch)
        if name in cols:
            return cols[name][col]
        return np.full(len(layout), const[name], dtype=bool if name == "sp" else np.int64)

    def cells(self, global_batch: int, layout: np.ndarray, col: np.ndarray) -> PlanArrays:
        """Candidates (layout[i], col[i]) as PlanArrays (see `field`)."""
        return PlanArrays(**{f.name: self.field(global_batch, f.name, layout, col)
                             for f in fields(PlanArrays)})

    def blocks(self, global_batch: int, layouts_per_block: int) -> Iterator[tuple[int, PlanArrays]]:
        """(layouts in block, candidates as PlanArrays) for consecutive blocks of layouts."""
        for g in self.grids(global_batch, layouts_per_block):
            yield g.shape[0], g.row_cells(np.arange(g.shape[0]))
