"""What a search computes before the GPU matters: which candidates are valid (with the pruning
counts and examples) and each valid candidate's peak memory. The rules read the cluster only
through its GPU count, node shape, whether its GPU runs the search's precision (where it does
not, the message names the GPU and its precisions) and its stack's ZeRO implementation
(planner/validity.py, planner/search/prune.py); the memory model reads only the stack
(planner/cost/memory.py). So `paraplan estimate`, which searches one space on several GPU types
of the same size, computes them once: inside `shared_space()` a search keeps them per block,
keyed by everything they read, for the next search with the same key
(tests/test_search_speed_identity.py compares the results with and without sharing)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from planner.hardware import PRECISIONS, Cluster
from planner.transformer import TransformerSpec

_MEMO: dict | None = None  # "key": the latest key, and block -> its valid part; None: off


@contextmanager
def shared_space() -> Iterator[None]:
    """Searches inside share their GPU-independent part (see module docstring)."""
    global _MEMO
    outer, _MEMO = _MEMO, {"key": None}
    try:
        yield
    finally:
        _MEMO = outer


def space_key(spec: TransformerSpec, cluster: Cluster, global_batch: int, precision: str,
              block_candidates: int, hybrid: bool = True) -> tuple | None:
    """Everything the valid part of a search reads; None outside shared_space."""
    if _MEMO is None:
        return None
    # The precision rule reads the one precision every candidate has: where the GPU runs it
    # the rule passes them all and reads nothing else of the GPU (so an A100, without fp8,
    # shares with an H100); where not, its message names the GPU and what it supports.
    gpu = None if cluster.gpu.peak_flops(precision) is not None else (
        tuple(cluster.gpu.peak_flops(p) is not None for p in PRECISIONS), cluster.gpu.name)
    return (spec.model_dump_json(), cluster.stack.model_dump_json(), cluster.num_gpus,
            cluster.num_nodes, cluster.gpus_per_node, gpu, global_batch, precision,
            block_candidates, hybrid)


def get(key: tuple | None, block: int) -> tuple | None:
    """A block's stored valid part (None: not stored)."""
    if key is None or _MEMO is None or _MEMO["key"] != key:
        return None
    return _MEMO.get(block)


def put(key: tuple | None, block: int, value: tuple) -> None:
    """Store a block's valid part; only the latest key's blocks are kept."""
    if key is None or _MEMO is None:
        return
    if _MEMO["key"] != key:
        _MEMO.clear()
        _MEMO["key"] = key
    _MEMO[block] = value
