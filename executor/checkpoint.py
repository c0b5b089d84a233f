"""Checkpoint and resume with torch.distributed.checkpoint: model and optimizer state of every
rank (DTensor / FSDP shards included) plus the step and the losses so far. `latest` names the
newest complete checkpoint and is written last, so a crash mid-save leaves the previous one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from executor.parallelize import ParallelModel
from planner.schema import InputError, write_json_atomic


def _container(pm: ParallelModel) -> nn.Module:
    return nn.ModuleList(pm.parts)


def save(pm: ParallelModel, opt: torch.optim.Optimizer, step: int, losses: list[float],
         directory: str | Path) -> Path:
    """Collective: every rank writes its shards; rank 0 then points `latest` at them."""
    return timed_save(pm, opt, step, losses, directory)[0]


def directory_bytes(path: str | Path) -> int:
    """Bytes of every file under `path` (what a checkpoint wrote)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def saved_tensors(path: str | Path) -> int:
    """Tensors (items) a checkpoint holds, from DCP's metadata."""
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    return sum(1 for v in meta.state_dict_metadata.values() if hasattr(v, "size"))


def timed_save(pm: ParallelModel, opt: torch.optim.Optimizer, step: int, losses: list[float],
               directory: str | Path) -> tuple[Path, float]:
    """save(), and the wall seconds this rank spent in it: the stall training sees (the state
    dict, DCP's planning, the write with fsync (FileSystemWriter sync_files) and the barriers
    that end the call), counted from a barrier: the skew of the ranks' arrival is the step's,
    not the save's."""
    dist.barrier()
    t0 = time.perf_counter()
    root = Path(directory)
    path = root / f"step_{step:08d}"
    model_sd, optim_sd = get_state_dict(_container(pm), opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    dist.barrier()
    if dist.get_rank() == 0:
        write_json_atomic(path / "progress.json", {"step": step, "losses": losses,
                                                   "plan": pm.plan.to_json_dict()})
        write_json_atomic(root / "latest.json", {"step": step, "path": path.name})
    dist.barrier()
    return path, time.perf_counter() - t0


def load(pm: ParallelModel, opt: torch.optim.Optimizer, directory: str | Path) -> tuple[int,
                                                                                      list[float]]:
    """Restore the newest checkpoint in `directory`; returns (its step, losses up to it)."""
    root = Path(directory)
    latest = root / "latest.json"
    if not latest.is_file():
        raise InputError(f"--resume {root}: no latest.json (no complete checkpoint there)")
    info = json.loads(latest.read_text())
    path = root / info["path"]
    progress = json.loads((path / "progress.json").read_text())
    if progress["plan"] != pm.plan.to_json_dict():
        raise InputError(f"--resume {root}: the checkpoint was written with plan "
                         f"{progress['plan']}, not this one; resume needs the same plan")
    model_sd, optim_sd = get_state_dict(_container(pm), opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(_container(pm), opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    return int(progress["step"]), list(progress["losses"])
