"""`Cluster`: the hardware noun. GPUs (peak FLOP/s per dtype, memory, HBM bandwidth, efficiency
curves), nodes, and links by tier. Every number is data in `hardware_profiles/` with a source; the
code holds no hardware constants.

Units are in the key: `_bytes`, `_s`, `_tflops` (1e12 FLOP/s, dense), `_GBps` (1e9 bytes/s per
direction), `_usd`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from planner.schema import FrozenModel, InputError, read_json, validate_as
from planner.reliability import Storage
from planner.stack import DEFAULT_STACK, Stack, load_stack
from planner.legacy_profiles import split_legacy_software

Precision = Literal["bf16", "fp16", "fp8", "fp32"]
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp8", "fp32")


def _check_curve(points: list[tuple[float, float]], name: str) -> list[tuple[float, float]]:
    if not points:
        raise ValueError(f"{name} needs at least one [x, efficiency] point")
    xs = [x for x, _ in points]
    if any(x <= 0 for x in xs) or any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"{name} x values must be > 0 and strictly increasing, got {xs}")
    bad = [y for _, y in points if not 0 < y <= 1]
    if bad:
        raise ValueError(f"{name} efficiencies must be in (0, 1], got {bad}")
    return points


class PeakTflops(FrozenModel):
    """Dense (no structured sparsity) peak throughput per precision, in TFLOP/s; null where the
    hardware has no such path (e.g. fp8 on A100)."""

    bf16: float | None = Field(gt=0)
    """bf16 tensor-core peak."""
    fp16: float | None = Field(gt=0)
    """fp16 tensor-core peak."""
    fp8: float | None = Field(default=None, gt=0)
    """fp8 tensor-core peak (null if unsupported)."""
    fp32: float | None = Field(gt=0)
    """Plain fp32 peak (CUDA cores on NVIDIA; PyTorch's default for fp32 matmuls)."""
    tf32: float | None = Field(default=None, gt=0)
    """tf32 tensor-core peak (informational; fp32 plans use the fp32 figure)."""


class GPU(FrozenModel):
    """One accelerator: capacity, peak rates and how close real kernels come to them."""

    name: str = Field(min_length=1)
    """Profile name, e.g. `a100_80g`."""
    description: str = ""
    """Human-readable product name."""
    memory_bytes: int = Field(gt=0)
    """Device memory capacity in bytes."""
    peak_tflops: PeakTflops
    """Dense peak per precision."""
    hbm_bandwidth_GBps: float = Field(gt=0)
    """Device memory bandwidth, 1e9 bytes/s."""
    gemm_efficiency: list[tuple[float, float]]
    """[GFLOP per GEMM kernel, fraction of peak] points; interpolated in log(size), clamped at the
    ends. The largest point is the measured maximum achievable matmul FLOP/s (MAMF)."""
    hbm_efficiency: list[tuple[float, float]]
    """[MB moved per memory-bound kernel, fraction of HBM bandwidth] points."""
    gemm_sustained_fraction: float = Field(default=1.0, gt=0, le=1)
    """Fraction of the micro-benchmark curve that GEMMs sustain inside a training step (real
    shapes, clocks under sustained load, library versions)."""
    fp8_gemm_scale: float = Field(default=1.0, gt=0, le=1)
    """fp8 GEMMs reach this times the bf16 fraction of their (fp8) peak (measured MAMF ratio).
    Required in a profile with an fp8 peak; the default only fills GPUs without fp8."""
    attention_efficiency: float = Field(gt=0, le=1)
    """Fraction of peak a fused (flash) attention kernel reaches on the FLOPs it executes."""
    kernel_overhead_s: float = Field(ge=0)
    """Fixed time per kernel (launch and tail), added to every modelled kernel."""
    attention_efficiency_by_kernel: dict[str, float] = Field(default_factory=dict)
    """Fused attention efficiency per stack attention kernel (`flash_attention_2`, ...) where it
    differs from `attention_efficiency` on this GPU (FA2 on Hopper lacks FA3's warp
    specialisation and fp8/TMA paths)."""
    sustained_clock_fraction: float = Field(default=1.0, gt=0, le=1)
    """Tensor-core clock sustained under long GEMM-heavy training load (power limit) over the
    clock the MAMF micro-benchmark behind `gemm_efficiency` ran at; scales GEMM and fused
    attention throughput. 1.0 where `gemm_sustained_fraction` was fitted (A100)."""
    overlap_compute_slowdown: float = Field(default=0.0, ge=0, lt=1)
    """Fractional slowdown of compute while a collective runs beside it (NCCL/RCCL kernels take
    SMs and HBM bandwidth): hidden communication of duration c behind compute costs
    slowdown x min(c, compute) seconds."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Field name -> where the number comes from."""
    notes: list[str] = Field(default_factory=list)
    """Caveats: which numbers are estimates until calibrated."""

    @field_validator("gemm_efficiency")
    @classmethod
    def _gemm_curve(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return _check_curve(v, "gemm_efficiency")

    @field_validator("hbm_efficiency")
    @classmethod
    def _hbm_curve(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return _check_curve(v, "hbm_efficiency")

    @model_validator(mode="after")
    def _fp8_scale_stated(self) -> "GPU":
        # 1.0 (fp8 as close to its peak as bf16) is an assumption no GPU has measured (the
        # measured MAMF ratios in ../shared/hardware/efficiencies.json are 0.88-0.98), so a GPU
        # that can run fp8 must state its figure rather than inherit the default unseen.
        if self.peak_tflops.fp8 is not None and "fp8_gemm_scale" not in self.model_fields_set:
            raise ValueError("a GPU with a peak_tflops.fp8 needs fp8_gemm_scale (fp8 GEMM "
                             "efficiency / bf16 GEMM efficiency, e.g. the measured MAMF ratio)")
        return self

    def peak_flops(self, precision: str) -> float | None:
        """Peak FLOP/s for a plan precision, None if the GPU lacks it."""
        tf = getattr(self.peak_tflops, precision)
        return None if tf is None else tf * 1e12


class _Tier(FrozenModel):
    """Fields every link tier has."""

    name: str = Field(min_length=1)
    """e.g. `NVLink 3 via NVSwitch`, `InfiniBand HDR 200 Gb/s`."""
    latency_s: float = Field(ge=0)
    """Per-step latency of a collective on this tier (alpha in the alpha-beta model); also the
    latency of one point-to-point send."""
    call_latency_s: float = Field(default=0.0, ge=0)
    """Fixed cost of each collective call on top of its steps (launch, rendezvous); 0 where the
    step latency already covers it."""
    efficiency: list[tuple[float, float]]
    """[message MB, fraction of bandwidth] reached by ring collectives (bus bandwidth / spec)."""

    @field_validator("efficiency")
    @classmethod
    def _curve(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return _check_curve(v, "efficiency")


class IntraNodeLink(_Tier):
    """The GPU-to-GPU fabric inside a node (NVLink + NVSwitch, xGMI mesh, PCIe, shared memory)."""

    topology: Literal["switch", "full_mesh"]
    """`switch`: each GPU has `bandwidth_GBps` into a non-blocking switch, whatever the group size.
    `full_mesh`: one direct link per GPU pair of `pair_bandwidth_GBps`, so a group of k GPUs
    reaches (k-1) x pair bandwidth per GPU, capped at `bandwidth_GBps`."""
    bandwidth_GBps: float = Field(gt=0)
    """Per-GPU bandwidth per direction."""
    pair_bandwidth_GBps: float | None = Field(default=None, gt=0)
    """Per-pair bandwidth per direction (full_mesh only)."""
    domain_gpus: int | None = Field(default=None, ge=1)
    """GPUs on one switched fabric when it spans several nodes (a multi-node NVLink domain:
    GB200 NVL72's 72 GPUs); a whole number of nodes. Null: one node's `gpus_per_node`, as on
    every 8-GPU server. How a job's nodes are placed on domains: planner/nvlink_domain.py."""

    @model_validator(mode="after")
    def _mesh_needs_pair(self) -> "IntraNodeLink":
        if self.topology == "full_mesh" and self.pair_bandwidth_GBps is None:
            raise ValueError("topology 'full_mesh' needs pair_bandwidth_GBps")
        if self.topology == "full_mesh" and self.domain_gpus is not None:
            raise ValueError("domain_gpus needs topology 'switch' (a full mesh has no switch "
                             "to span nodes)")
        return self


class InterNodeLink(_Tier):
    """The scale-out network (InfiniBand, RoCE, EFA): NICs per node into a non-blocking fabric."""

    nics_per_node: int = Field(ge=1)
    """Compute NICs per node (storage NICs excluded)."""
    nic_bandwidth_GBps: float = Field(gt=0)
    """Per-NIC bandwidth per direction, 1e9 bytes/s (a 200 Gb/s NIC is 25 GB/s)."""


class Prices(FrozenModel):
    """List prices in USD with the date each was stated. Prices move fast: check the dates."""

    rent_per_gpu_hour_usd: float | None = Field(default=None, gt=0)
    """On-demand cloud price per GPU-hour for this GPU in an 8-GPU instance."""
    rent_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}(-\d{2})?$")
    """When the rent price was stated (YYYY-MM-DD or YYYY-MM)."""
    purchase_per_gpu_usd: float | None = Field(default=None, gt=0)
    """Reported purchase price per GPU of an 8-GPU system (reseller listing or estimate)."""
    purchase_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}(-\d{2})?$")
    """When the purchase price was stated."""
    node_power_kw: float | None = Field(default=None, gt=0)
    """Maximum power of one node, kW (an upper bound on what training draws)."""


class Cluster(FrozenModel):
    """A homogeneous cluster: `num_nodes` nodes of `gpus_per_node` GPUs."""

    name: str = Field(min_length=1)
    """Preset name, e.g. `dgx_a100_80g`."""
    description: str = ""
    """Human-readable system name."""
    gpu: GPU
    """The accelerator in every slot."""
    gpus_per_node: int = Field(ge=1)
    """GPUs per node sharing the intra-node fabric."""
    num_nodes: int = Field(default=1, ge=1)
    """Number of nodes (scale with `--num-nodes`)."""
    intra_node: IntraNodeLink
    """Fabric inside a node."""
    inter_node: InterNodeLink | None = None
    """Network between nodes; null for a single-node machine."""
    stack: Stack | None = None
    """The training stack the cost model plans for (planner/stack.py). Hardware profiles hold
    none; `load_cluster` binds one (`--stack`, else the profile's own, as a calibrated CPU
    profile has, else `megatron-core`)."""
    host_op_s: float = Field(default=0.0, ge=0)
    """CPU time of dispatching and launching one eager PyTorch op on this node's host CPU (the
    kernel itself runs asynchronously on the GPU). With the stack's op counts it gives the
    host time of a block, which shows when it exceeds the GPU time (planner/cost/host.py).
    0: not modelled (CPU profiles, where the ranks run the ops themselves)."""
    prices: Prices | None = None
    """What the GPUs cost to rent or buy, with dates (sources in `sources`)."""
    storage: str | Storage = "parallel_fs"
    """Checkpoint storage tier as seen from one node: a preset name (`parallel_fs`,
    `local_nvme`: hardware_profiles/storage/), a path to a storage JSON, or the profile inline
    (as `paraplan calibrate` writes the write bandwidth it measured). See planner.reliability."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Field name -> where the number comes from."""
    notes: list[str] = Field(default_factory=list)
    """Caveats."""

    @model_validator(mode="after")
    def _multi_node_needs_network(self) -> "Cluster":
        if self.num_nodes > 1 and self.inter_node is None:
            raise ValueError(f"num_nodes={self.num_nodes} needs an inter_node network; this "
                             "profile has none (single-node machine)")
        d = self.intra_node.domain_gpus
        if d is not None and d % self.gpus_per_node:
            raise ValueError(f"intra_node.domain_gpus={d} must be a whole number of nodes of "
                             f"gpus_per_node={self.gpus_per_node}")
        return self

    @property
    def num_gpus(self) -> int:
        """Total GPUs (world size)."""
        return self.num_nodes * self.gpus_per_node

    def with_num_nodes(self, num_nodes: int) -> "Cluster":
        """The same cluster scaled to `num_nodes` nodes (validated)."""
        if num_nodes < 1:
            raise InputError(f"--num-nodes must be >= 1, got {num_nodes}")
        data = self.model_dump()
        data["num_nodes"] = num_nodes
        return validate_as(Cluster, data, f"cluster {self.name}")


# ---------------------------------------------------------------------------------------------
# Loading presets and files

def _profiles_dir(kind: str) -> Path:
    return Path(str(resources.files("hardware_profiles"))) / kind


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def preset_names(kind: Literal["gpus", "clusters"]) -> list[str]:
    """Names of the built-in GPU or cluster profiles."""
    return sorted(p.stem for p in _profiles_dir(kind).glob("*.json"))


def _resolve(ref: str, kind: Literal["gpus", "clusters"], what: str) -> Path:
    p = Path(ref)
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise InputError(f"{what}: file not found: {ref}")
        return p
    cand = _profiles_dir(kind) / f"{_norm(ref)}.json"
    if cand.is_file():
        return cand
    raise InputError(f"unknown {what} preset '{ref}'; accepted: {', '.join(preset_names(kind))} "
                     "(or a path to a .json profile)")


def load_gpu(ref: str) -> GPU:
    """A GPU profile from a preset name (`a100_80g`) or a JSON path."""
    path = _resolve(ref, "gpus", "GPU")
    return validate_as(GPU, read_json(path, f"GPU profile {path}"), f"GPU profile {path}")


def load_cluster(ref: str, num_nodes: int | None = None,
                 stack: "str | Stack | None" = None) -> Cluster:
    """A cluster from a preset name (`dgx_a100_80g`) or a JSON path; `gpu` may name a GPU preset.
    `num_nodes` overrides the file's node count. The cluster comes bound to `stack` (a name,
    alias, path or Stack), else to the profile's own stack, else to `megatron-core`."""
    path = _resolve(ref, "clusters", "cluster")
    what = f"cluster profile {path}"
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(data).__name__}")
    if isinstance(data.get("gpu"), str):
        gpu_ref = data["gpu"]
        if gpu_ref.endswith(".json") and not Path(gpu_ref).is_absolute():
            gpu_ref = str(path.parent / gpu_ref)
        data = {**data, "gpu": load_gpu(gpu_ref).model_dump()}
    if num_nodes is not None:
        if num_nodes < 1:
            raise InputError(f"--num-nodes must be >= 1, got {num_nodes}")
        data = {**data, "num_nodes": num_nodes}
    if "software" in data:
        data = split_legacy_software(data)
    cluster = validate_as(Cluster, data, what)
    if stack is not None:
        return cluster.model_copy(update={"stack": load_stack(stack)})
    if cluster.stack is None:
        return cluster.model_copy(update={"stack": load_stack(DEFAULT_STACK)})
    return cluster
