"""Token batches: synthetic (seeded, the default) or windows of a token file (.npy or .bin of
token ids, or any other file read as bytes). Batch t is a pure function of (seed, t), so a
resumed run sees the same data as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from planner.plan import Plan
from planner.schema import InputError


class TokenSource:
    def __init__(self, vocab_size: int, seq_len: int, path: str | None = None, seed: int = 0):
        self.vocab, self.seq, self.seed = vocab_size, seq_len, seed
        self.tokens: np.ndarray | None = None
        self.name = "synthetic"
        if path:
            self.tokens = _read_tokens(Path(path), vocab_size)
            self.name = str(path)
            if len(self.tokens) < seq_len + 2:
                raise InputError(f"--data {path}: {len(self.tokens)} tokens, need at least "
                                 f"seq_len + 2 = {seq_len + 2}")

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """(batch_size, seq_len + 1) token ids for step `step`."""
        if self.tokens is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return torch.randint(0, self.vocab, (batch_size, self.seq + 1), generator=g)
        span = len(self.tokens) - self.seq - 1
        starts = (np.arange(batch_size) + step * batch_size) * 9973 % span  # spread windows
        rows = [self.tokens[s:s + self.seq + 1] for s in starts]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def _read_tokens(path: Path, vocab: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"--data: file not found: {path}")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r").reshape(-1)
    elif path.suffix == ".bin":  # nanoGPT convention: uint16 token ids
        arr = np.memmap(path, dtype=np.uint16, mode="r")
    else:
        return np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64) % vocab
    if arr.size and int(arr.max()) >= vocab:
        raise InputError(f"--data {path}: token id {int(arr.max())} >= vocab_size {vocab}")
    return np.asarray(arr, dtype=np.int64)


def local_batch(full: torch.Tensor, plan: Plan, dp_rank: int,
                cp_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's inputs and next-token targets: its dp share of the rows, its cp chunk of
    the sequence."""
    rows = plan.global_batch_size // plan.dp
    part = full[dp_rank * rows:(dp_rank + 1) * rows]
    x, y = part[:, :-1], part[:, 1:]
    chunk = x.shape[1] // plan.cp
    sl = slice(cp_rank * chunk, (cp_rank + 1) * chunk)
    return x[:, sl].contiguous(), y[:, sl].contiguous()
