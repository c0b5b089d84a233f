"""What a rank holds, by category: parameter, gradient and optimizer bytes counted from tensors,
activations as the peak of bytes saved for backward (autograd saved-tensor hooks), and the
process's resident-set high-water mark. On GPU the allocator's own peak is added."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch
from torch.distributed._functional_collectives import AsyncCollectiveTensor
from torch.distributed.tensor import DTensor

from executor.launch import MMAP_THRESHOLD_BYTES


def _local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding `t`'s bytes on this rank: a DTensor's local shard; the result
    of a functional collective (an AsyncCollectiveTensor wrapper, whose own storage is not
    addressable) unwrapped."""
    t = t._local_tensor if isinstance(t, DTensor) else t
    while isinstance(t, AsyncCollectiveTensor):
        t = t.elem
    return t


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among `tensors` (local shards of DTensors)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        t = _local(t)
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for state in opt.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor))


class SavedTensorMeter:
    """Context manager counting bytes autograd keeps for backward, live and peak. Storages are
    counted once however many views are saved; parameters are excluded (they are not
    activations)."""

    def __init__(self, params) -> None:
        self.params = {_local(p).untyped_storage().data_ptr() for p in params}
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self._ctx = None

    def _pack(self, t: torch.Tensor):
        loc = _local(t)
        key = 0
        if not _is_param(t) and not _is_param(loc):
            try:
                key = loc.untyped_storage().data_ptr()
            except RuntimeError:  # storage already released (e.g. FSDP's gathered weights)
                key = 0
        if key and key not in self.params:
            if key not in self.refs:
                self.sizes[key] = loc.untyped_storage().nbytes()
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
            self.refs[key] = self.refs.get(key, 0) + 1
            return _Saved(self, key, t)
        return _Saved(None, 0, t)

    @staticmethod
    def _unpack(saved: "_Saved") -> torch.Tensor:
        return saved.tensor

    def release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.sizes.pop(key)

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def _is_param(t: torch.Tensor) -> bool:
    """A parameter or a view of one (linear layers save weight.t()): weights, not activations."""
    return isinstance(t, torch.nn.Parameter) or isinstance(getattr(t, "_base", None),
                                                            torch.nn.Parameter)


class _Saved:
    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: SavedTensorMeter | None, key: int, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        if self.meter is not None:
            self.meter.release(self.key)


def reset_peak_rss() -> None:
    """Start a new resident-set high-water mark (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    """VmHWM of this process (Linux), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def configure_process(num_threads: int) -> None:
    """What every rank sets before its process group, in both launch harnesses (torchrun,
    executor/worker.py; the forked world, executor/local.py), so they time the same thing:
    the thread count, and the allocator's mmap threshold (mallopt: a forked child cannot take
    MALLOC_MMAP_THRESHOLD_ from its environment, which glibc reads at process start only)."""
    os.environ["OMP_NUM_THREADS"] = str(num_threads)
    torch.set_num_threads(num_threads)
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: the allocator's own behaviour stands
        pass
