"""`Measurement`: what a real run of a Plan measured (written by the executor, read by the
planner's compare and report). Torch-free, like the other nouns."""

from __future__ import annotations

import statistics

from pydantic import Field

from planner.plan import Plan
from planner.schema import FrozenModel
from planner.transformer import TransformerSpec


class RankMemory(FrozenModel):
    """Bytes one rank held (CPU: counted tensors; GPU: also the allocator's peak)."""

    rank: int = Field(ge=0)
    """Global rank."""
    params_bytes: int = Field(ge=0)
    """Parameters this rank holds (its shards)."""
    grads_bytes: int = Field(ge=0)
    """Gradients after backward (its shards)."""
    optimizer_bytes: int = Field(ge=0)
    """Optimizer state tensors."""
    activations_bytes: int = Field(ge=0)
    """Peak bytes saved for backward (autograd saved-tensor hooks), parameters excluded."""
    peak_rss_bytes: int | None = Field(default=None, ge=0)
    """Process resident-set high-water mark over the timed steps (CPU)."""
    device_peak_bytes: int | None = Field(default=None, ge=0)
    """Accelerator allocator peak (GPU runs)."""
    node_rank: int | None = Field(default=None, ge=0)
    """The node this rank ran on (`paraplan run --node-rank`; 0 on one machine); None in
    measurements written before multi-node launch."""
    host: str | None = None
    """Hostname of the rank's machine."""


class Environment(FrozenModel):
    """Where the run happened."""

    torch_version: str
    python_version: str
    backend: str
    """gloo or nccl."""
    device: str
    """cpu or cuda."""
    device_names: list[str]
    threads_per_rank: int = Field(ge=1)
    hostname: str
    platform: str


class Measurement(FrozenModel):
    """A timed training run of one plan."""

    plan: Plan
    transformer: TransformerSpec
    world_size: int = Field(ge=1)
    warmup_steps: int = Field(ge=0)
    first_step: int = Field(ge=1)
    """Step number of losses[0]."""
    losses: list[float]
    """Loss of every step from first_step, warm-up included, and those before a resume (read
    from the checkpoint): the run's whole loss curve (mean over the global batch)."""
    step_times_s: list[float]
    """Timed (post-warm-up) steps, slowest rank per step."""
    step_time_s: float = Field(gt=0)
    """Median of step_times_s."""
    tokens_per_s: float = Field(gt=0)
    memory: list[RankMemory]
    data: str
    """synthetic (seeded) or the file used."""
    environment: Environment
    started_at: str
    finished_at: str
    checkpoint_stall_s: list[float] | None = None
    """Wall seconds of each checkpoint save (`--save-every`), slowest rank: the training stall.
    None if the run saved none."""
    checkpoint_bytes: int | None = Field(default=None, ge=0)
    """Bytes one checkpoint wrote (the size of the last checkpoint's directory)."""
    checkpoint_tensors: int | None = Field(default=None, ge=0)
    """Tensors (DCP items) one checkpoint holds."""

    skipped_steps: int | None = Field(default=None, ge=0)
    """fp16 runs: optimizer steps skipped because the loss-scaled gradients overflowed on some
    rank (every rank skips together; the loss scale is halved each time). None for other
    precisions."""

    @staticmethod
    def median(times: list[float]) -> float:
        return statistics.median(times)
