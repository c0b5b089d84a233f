"""Pipeline stages: which blocks each pipeline rank holds and which pipeline rank a global rank
is. The one place this is decided; the cost model (params, memory, step time), `compare` and the
executor's stage cutting (executor/parallel/pipeline.py) all call it, and
tests/test_stages.py holds it against the executor's stage modules.

The model's blocks are cut into pp x v consecutive chunks (v = virtual stages); pipeline rank r
runs chunks r, r + pp, r + 2 pp, ... (Megatron-LM's interleaved placement, Narayanan et al. 2021,
section 2.2.1). Chunk 0, on rank 0, holds the embedding; the last chunk, on rank pp - 1, the head.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from planner.plan import Plan
from planner.plan_arrays import field_codes, group_codes, representatives


def layer_split(num_layers: int, num_chunks: int) -> list[int]:
    """Blocks per pipeline chunk, as even as possible; the leftover blocks go to chunks 1, 2, ...
    so the first and last chunks (which also hold the embedding and the head) are the lighter
    ones, as in Llama 3's 126 layers over 16 stages (Llama Team 2024, section 3.3.2)."""
    base, extra = divmod(num_layers, num_chunks)
    return [base + (1 if 1 <= i <= extra else 0) for i in range(num_chunks)]


def rank_chunks(pp: int, vpp: int, pp_rank: int) -> list[int]:
    """Chunk indices pipeline rank `pp_rank` runs, in order."""
    return [pp_rank + i * pp for i in range(vpp)]


def chunk_layer_ids(num_layers: int, pp: int, vpp: int, chunk: int) -> range:
    """Global block indices of one chunk (consecutive, sized by `layer_split`)."""
    sizes = layer_split(num_layers, pp * vpp)
    start = sum(sizes[:chunk])
    return range(start, start + sizes[chunk])


def rank_layer_ids(num_layers: int, pp: int, vpp: int, pp_rank: int) -> list[int]:
    """Global block indices held by pipeline rank `pp_rank` (all its chunks)."""
    return [i for c in rank_chunks(pp, vpp, pp_rank)
            for i in chunk_layer_ids(num_layers, pp, vpp, c)]


def rank_layers(num_layers: int, pp: np.ndarray, vpp: np.ndarray,
                pp_rank: np.ndarray) -> np.ndarray:
    """How many blocks pipeline rank `pp_rank` holds: `len(rank_layer_ids(...))` in closed form
    over arrays of plans. Chunk c gets one extra block when 1 <= c <= extra, and rank r's chunks
    are r + k pp for k < v."""
    chunks = pp * vpp
    base, extra = num_layers // chunks, num_layers % chunks
    pp_rank = np.asarray(pp_rank)
    at_zero = np.minimum(vpp - 1, extra // pp)  # chunks pp, 2 pp, ... <= extra
    others = np.where(extra >= pp_rank, np.minimum(vpp, (extra - pp_rank) // pp + 1), 0)
    return vpp * base + np.where(pp_rank == 0, at_zero, others)


def rank_moe_layers(spec, pp: np.ndarray, vpp: np.ndarray, pp_rank: np.ndarray) -> np.ndarray:
    """How many of pipeline rank `pp_rank`'s blocks have routed experts (planner/moe.py
    ffn_is_moe: block i >= first_dense_layers with (i - first) % moe_layer_freq == 0), over
    arrays of plans; zeros for a dense spec. Closed form over the rank's chunks (the cut of
    `layer_split`: chunk c starts at c base + min(max(c - 1, 0), extra)), so the search pays
    one vectorized pass per virtual stage, not one per plan; tests/test_stages.py holds it
    against `rank_layer_ids`."""
    pp, vpp, pp_rank = (np.asarray(a, dtype=np.int64) for a in np.broadcast_arrays(
        np.asarray(pp), np.asarray(vpp), np.asarray(pp_rank)))
    if spec.moe is None:
        return np.zeros(pp.shape)
    L, first, freq = spec.num_layers, spec.moe.first_dense_layers, spec.moe.moe_layer_freq
    chunks = pp * vpp
    base, extra = L // chunks, L % chunks
    if freq == 1:
        # Every block from `first` on is MoE: the rank's blocks minus those below `first`,
        # which only chunks starting below `first` hold (starts grow with c; with more chunks
        # than blocks, base 0, chunk c starts at c - 1, not at c).
        dense = np.zeros(pp.shape, dtype=np.int64)
        for k in range(int(vpp.max(initial=1))):
            c = pp_rank + k * pp
            start = c * base + np.minimum(np.maximum(c - 1, 0), extra)
            if int(start.min(initial=first)) >= first:
                break
            size = base + ((c >= 1) & (c <= extra))
            dense += np.where(k < vpp, np.clip(first - start, 0, size), 0)
        return (rank_layers(L, pp, vpp, pp_rank) - dense).astype(float)

    def upto(x: np.ndarray) -> np.ndarray:  # MoE blocks among ids < x
        return np.where(x > first, -(-(x - first) // freq), 0)
    out = np.zeros(pp.shape, dtype=np.int64)
    for k in range(int(vpp.max(initial=1))):
        c = pp_rank + k * pp
        start = c * base + np.minimum(np.maximum(c - 1, 0), extra)
        size = base + ((c >= 1) & (c <= extra))
        out += np.where(k < vpp, upto(start + size) - upto(start), 0)
    return out.astype(float)


@lru_cache(maxsize=65536)
def _interleaved_states(num_layers: int, pp: int, vpp: int, pp_rank: int, m: int
                        ) -> tuple[tuple[int, int, int], ...]:
    """What a pipeline rank holds under the interleaved schedule, walked op by op: (blocks,
    chunk-0 forwards, last-chunk forwards) in flight after each forward, the Pareto-maximal
    ones (any peak in bytes is at one of them). 2 (pp - r - 1) + (v - 1) pp warm-up forwards,
    then one forward and one backward in turn; forwards take the micro-batches in groups of pp
    through local chunks 0, 1, ..., v - 1, backwards through v - 1, ..., 0 (Narayanan et al.
    2021, section 2.2.1; Megatron-LM's and torch.distributed.pipelining's Interleaved1F1B).
    Chunks differ in blocks when the split is uneven (lighter or empty end chunks), so the peak
    need not come right after the warm-up; both sequences repeat every pp v ops, so one period
    past the warm-up finds it."""
    split = layer_split(num_layers, pp * vpp)
    sizes = np.array([split[pp_rank + j * pp] for j in range(vpp)])
    total = m * vpp
    warm = min(total, 2 * (pp - pp_rank - 1) + (vpp - 1) * pp)
    steps = min(total - warm, pp * vpp + 1)
    k = np.arange(warm + steps)
    fwd = (k // pp) % vpp  # local chunk of forward k
    bwd = vpp - 1 - fwd[:steps]  # local chunk of backward i (the same grouping, reversed)

    def held(chunks: np.ndarray) -> np.ndarray:
        each = np.stack([sizes[chunks], chunks == 0, chunks == vpp - 1], axis=1)
        return np.vstack([np.zeros((1, 3)), np.cumsum(each, axis=0)])
    f, b = held(fwd), held(bwd)
    # after the warm-up, and after steady forward warm + i (before backward i)
    states = np.unique(np.vstack([f[warm:warm + 1], f[warm + 1:warm + steps + 1] - b[:steps]]),
                       axis=0)
    ge = (states[:, None, :] >= states[None, :, :]).all(axis=2)  # [a, b]: a >= b everywhere
    dominated = (ge & ~np.eye(len(states), dtype=bool)).any(axis=0)  # rows are unique
    return tuple(tuple(int(x) for x in row) for row in states[~dominated])


def interleaved_peak_bytes(num_layers: int, pp: np.ndarray, vpp: np.ndarray,
                           pp_rank: np.ndarray, micro_batches: np.ndarray, block: np.ndarray,
                           first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Peak bytes a pipeline rank saves for backward under the interleaved schedule: `block`
    per block and micro-batch in flight, `first` per in-flight forward of its first chunk (the
    embedding's, on pipeline rank 0; else 0), `last` per one of its last chunk (the head's, on
    the last rank; else 0), over arrays of plans; `_interleaved_states` walked once per
    distinct (pp, v, rank, micro-batches) (the plan arrays' grouping, planner.plan_arrays
    group_codes), its states gathered back as one table."""
    pp, vpp, pp_rank, m = (np.asarray(a, dtype=np.int64).ravel() for a in np.broadcast_arrays(
        np.asarray(pp), np.asarray(vpp), np.asarray(pp_rank), np.asarray(micro_batches)))
    n = len(pp)
    if n == 0:
        return np.zeros(0)
    # Past one period after the warm-up the walk never reaches the last forwards, so more
    # micro-batches than that hold the same: one walk for all of them.
    cap = (2 * (pp - pp_rank - 1) + (2 * vpp - 1) * pp + 1) // vpp + 1
    m = np.minimum(m, cap)
    inv, k = group_codes([field_codes(c) for c in (pp, vpp, pp_rank, m)])
    rep = representatives(inv, k)
    states = [_interleaved_states(num_layers, int(pp[r]), int(vpp[r]), int(pp_rank[r]),
                                  int(m[r])) for r in rep]
    table = np.zeros((k, max(len(x) for x in states), 3))
    for i, x in enumerate(states):
        table[i, :len(x)] = x
        table[i, len(x):] = x[0]  # padding repeats a real state
    t = table[inv]  # (n, states, 3)
    block, first, last = (np.broadcast_to(np.asarray(a, dtype=float), (n,))[:, None]
                          for a in (block, first, last))
    return (t[..., 0] * block + t[..., 1] * first + t[..., 2] * last).max(axis=1)


def holds_embedding(pp_rank: np.ndarray) -> np.ndarray:
    """Whether pipeline rank `pp_rank` holds the embedding (chunk 0)."""
    return np.asarray(pp_rank) == 0


def holds_head(pp: np.ndarray, pp_rank: np.ndarray) -> np.ndarray:
    """Whether pipeline rank `pp_rank` holds the final norm and LM head (the last chunk)."""
    return np.asarray(pp_rank) == np.asarray(pp) - 1


def heaviest_middle(pp: np.ndarray) -> np.ndarray:
    """The pipeline rank that bounds every rank strictly between the first and the last, or -1
    where there is none (pp <= 2). It is rank 1: over ranks 1..pp-2 the blocks held
    (`rank_layers`: extra blocks go to the lowest chunks) and the micro-batches in flight (1F1B:
    pp - s; interleaved: 2 (pp - s - 1) + (v - 1) pp + 1; GPipe: all) never grow with the rank,
    and neither does anything else the cost model charges a middle rank for; tests/test_stages.py
    checks it against every stage on random plans."""
    pp = np.asarray(pp)
    return np.where(pp > 2, 1, -1)


def pipeline_rank(plan: Plan, rank: int) -> int:
    """The pipeline rank (0..pp-1) that global `rank` runs: its coordinate along the pp
    dimension of `Plan.mesh_dims()`, the layout torch's DeviceMesh and planner/topology share."""
    if not 0 <= rank < plan.world_size:
        raise ValueError(f"rank {rank} is outside the plan's world of {plan.world_size}")
    stride = 1
    for dim, size in reversed(plan.mesh_dims()):  # innermost first
        if dim == "pp":
            return (rank // stride) % size
        stride *= size
    raise AssertionError("pp is always a mesh dimension")
