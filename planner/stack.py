"""`Stack`: the training framework's behaviour, the fourth noun (DESIGN.md). Hardware lives in
`Cluster` (planner/hardware.py); what the software does with it lives here, one JSON file per
framework in hardware_profiles/stacks/ with a source for every field.

Built-in names (fixed; other tools depend on them): `megatron-lm-2021`, `megatron-core` (aliases
`nemo`, `megatron-bridge`), `torchtitan`, `fsdp` (aliases `llm-foundry`, `composer`,
`hf-accelerate`), `deepspeed` (alias `megatron-deepspeed`). The default is `megatron-core`.
A calibrated CPU profile carries a stack of its own (its `stack` block), measured with it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from planner.schema import FrozenModel, InputError, read_json, validate_as

DEFAULT_STACK = "megatron-core"
ATTENTION_KERNELS = ("unfused_softmax", "flash_attention_2", "flash_attention_3", "cudnn", "sdpa")


class ExpertBiasBytes(FrozenModel):
    """HBM bytes per element of a routed expert GEMM's output that adding its bias moves when
    the stack adds it in separate element-wise kernels (not in the GEMM's epilogue)."""

    up_fwd_bytes: float = Field(ge=0)
    """Forward, per element of the gate / up projection's output."""
    down_fwd_bytes: float = Field(ge=0)
    """Forward, per element of the down projection's output."""
    up_bwd_bytes: float = Field(ge=0)
    """Backward (the bias gradient's reduction and any gradient copies), per element of the
    gate / up output."""
    down_bwd_bytes: float = Field(ge=0)
    """Backward, per element of the down projection's output."""


class Stack(FrozenModel):
    """What the training stack does, where it changes time or memory (no hardware numbers)."""

    name: str = Field(min_length=1)
    """The stack's name, e.g. `megatron-core`."""
    aliases: list[str] = Field(default_factory=list)
    """Other names users give the same framework (NeMo runs Megatron-Core)."""
    description: str = ""
    """The framework and version this file describes."""
    attention_kernel: Literal["unfused_softmax", "flash_attention_2", "flash_attention_3",
                              "cudnn", "sdpa"]
    """Attention implementation. `unfused_softmax`: the s x s scores through HBM (Megatron-LM
    2021's fused scale-mask-softmax); the others are fused (no s x s matrix in HBM, causal
    blocks skipped), timed at the GPU profile's `attention_efficiency`; `sdpa` is torch's
    scaled_dot_product_attention as the executor calls it (calibrated CPU stacks)."""
    selective_recompute: Literal["attention_core", "ops_half_matmuls"]
    """What `recompute: selective` redoes in backward: the attention core (Megatron-LM,
    Korthikanti et al. 2022), or torchtitan's op-level policy (saves sdpa and every other
    matmul, recomputes the rest of the block)."""
    tp_shards_norms: bool
    """Tensor parallelism always shards the norms and residual activations over the sequence
    (Megatron's sequence parallelism), whatever the plan's `sequence_parallel` says: torchtitan's
    TP plan wraps every norm in SequenceParallel. Planned as sequence parallel when tp > 1."""
    tp_comm_overlap: bool
    """Tensor-parallel collectives overlap the block's GEMMs (Megatron-Core `tp_comm_overlap`
    with userbuffers; torchtitan async TP): exposed TP time is what the GEMMs cannot hide."""
    grad_overlap: bool
    """Data-parallel gradient reduction overlaps the last micro-batch's backward (PyTorch DDP
    buckets, Megatron overlap-grad-reduce, FSDP reduce-scatter per unit)."""
    param_gather_overlap: bool
    """With a sharded optimizer (ZeRO-1/2, Megatron's distributed optimizer), the parameter
    all-gather after the step overlaps the next forward (Megatron `overlap_param_gather`)."""
    grad_reduce_fp32: bool = False
    """bf16 and fp8 plans accumulate and reduce gradients in fp32 (4 bytes per element in the
    gradient buffer and on the wire), not in the 16-bit weights' type: Megatron-LM turns
    accumulate_allreduce_grads_in_fp32 on for --bf16, torchtitan's and NeMo AutoModel's FSDP2
    policies reduce in float32. fp16 and fp32 plans keep their own width."""
    wgrad_accumulates_in_gemm: bool = False
    """Weight-gradient GEMMs accumulate into the gradient buffer themselves (beta = 1), reading
    and writing it at its width every micro-batch: Megatron's gradient-accumulation fusion
    (TE fuse_wgrad_accumulation into main_grad). False: the GEMM writes a fresh gradient once."""
    loss_softmax_bytes: float = Field(default=4.0, ge=2.0, le=4.0)
    """Bytes per logit of the loss's softmax over the vocabulary, the log-probabilities it
    saves for backward and their gradient: 4 where the loss upcasts the logits to fp32
    (Megatron-LM's vocab-parallel cross entropy, torchtitan, Hugging Face models), 2 where it
    runs in the logits' 16-bit dtype (NeMo AutoModel's MaskedCrossEntropy with fp32_upcast
    false)."""
    optimizer_state: Literal["fp32_master", "fp32_params", "bf16_params"] = "fp32_master"
    """What a 16-bit (bf16 / fp16 / fp8) plan keeps per parameter at rest. `fp32_master`:
    16-bit weights, gradients at their reduced width, and an fp32 master copy with fp32 Adam
    moments, 2 + g + 12 bytes (Megatron's distributed optimizer, DeepSpeed ZeRO). `fp32_params`:
    the resident (sharded) parameter is fp32 and is the master weight, gradients in its dtype,
    fp32 moments: 4 + 4 + 8 (PyTorch FSDP mixed precision casts to bf16 only when gathering,
    torch.optim on the fp32 parameters). `bf16_params`: a model stored in bf16 under torch.optim:
    parameter, gradient and both moments in bf16, 2 + 2 + 4 (no master copy). fp32 plans keep
    4 + 4 + 8 whatever this says."""
    fp8_weight_gather: bool = False
    """fp8 plans all-gather each block's FSDP unit already cast to fp8 (1 byte per element) and
    keep it gathered in fp8 (torchao float8's enable_fsdp_float8_all_gather); the embedding
    and the head stay 16-bit. False: the 16-bit weights are gathered and cast per GEMM."""
    fp8_weight_cache_bytes_per_param: float = Field(default=0.0, ge=0)
    """Bytes per block weight element kept through the step as fp8 copies in fp8 plans (2 for
    Transformer Engine: the fp8 weight and its transpose, cached after the first
    micro-batch); 0 where weights are cast per GEMM."""
    fp8_saves_gemm_inputs: bool = False
    """fp8 plans save each GEMM's fp8-cast input for the weight gradient (1 byte per element)
    instead of its 16-bit input (Transformer Engine)."""
    zero3_max_reuse_distance_params: float | None = Field(default=None, gt=0)
    """zero_impl deepspeed: a module's weights gathered for its recomputed forward stay for its
    backward when fewer parameters than this are used in between (DeepSpeed
    stage3_max_reuse_distance); None: every backward gathers again (not read by other zero_impl
    values). planner/cost/deepspeed_zero3.py."""
    grad_bucket_bytes: int = Field(gt=0)
    """Gradient bucket size; the last bucket's reduction cannot overlap."""
    pool_nics: bool
    """Collectives across nodes spread a node's traffic over all its NICs (NCCL rings with one
    channel per NIC). False: each GPU gets only its own NIC's share of the node's bandwidth."""
    zero_impl: Literal["fsdp2", "deepspeed"]
    """How ZeRO runs. `fsdp2` (PyTorch FSDP2, as the executor): every stage >= 1 keeps weights,
    gradients and optimizer state sharded at rest and gathers weights per block for the step
    (stages 1-2 keep them gathered through the step, stage 3 re-gathers for backward with the
    next block prefetched); gradients reduce-scatter per block. `deepspeed` (ZeRO as in 2021,
    Rajbhandari et al. 2020 semantics, also Megatron's distributed optimizer at stage 1):
    stage 1 shards optimizer state, 2 also gradients, 3 also weights, gathered one tensor at a
    time, and gathered again for the recomputed forward."""
    fsdp_defer_grad_sync: bool = True
    """With FSDP2 (zero_impl fsdp2) and several micro-batches, the reduce-scatter waits for the
    last micro-batch: earlier backwards accumulate unsharded gradients and keep the weights
    gathered (set_requires_gradient_sync(False) and set_reshard_after_backward(False), as
    PyTorch pipelining always does, and this project's executor). False: every micro-batch's
    backward reduce-scatters and reshards, so each forward gathers again (torchtitan's gradient
    accumulation without pipeline parallelism). Pipeline-parallel plans defer either way,
    unless sharded_grads_reduce_each_backward says otherwise."""
    sharded_grads_reduce_each_backward: bool = False
    """With gradients sharded (zero_stage >= 2, zero_impl fsdp2), every backward
    reduce-scatters into the sharded gradient buffer, whatever the micro-batch and the
    pipeline (Megatron-FSDP's optim_grads / optim_grads_params: no unsharded gradients are
    kept between micro-batches; at stage 2 its weights stay unsharded, gathered once a step
    after the update). False: fsdp_defer_grad_sync decides."""
    cp_impl: Literal["ring", "all_gather"]
    """Context parallelism: `ring` passes K/V chunks between neighbours behind the attention
    compute (Megatron-LM); `all_gather` gathers K/V before attention and reduce-scatters their
    gradients after, exposed (Llama 3; the executor)."""
    elementwise_traffic: float = Field(gt=0)
    """Multiplier on the modelled element-wise HBM traffic of a block (norms, residuals,
    activation): 1 for fused kernels (Megatron-LM, Transformer Engine); eager PyTorch makes
    several passes per op (rotary embedding, head reshapes, separate casts)."""
    fp8_cast_bytes_per_element: float = Field(default=0.0, ge=0)
    """HBM bytes moved per GEMM operand element to make it fp8 in fp8 plans (amax reduction,
    scale, cast; for the activation and weight forward and the output gradient backward): 3 for
    a fused cast+amax kernel reading bf16 and writing fp8 (Transformer Engine, delayed
    scaling), more where amax is a separate pass (dynamic tensorwise scaling)."""
    activation_layout: Literal["fused", "eager"]
    """Which tensors a block saves for backward: 'fused' counts Megatron-LM's kernels
    (Korthikanti et al. 2022, section 4); 'eager' counts this project's executor in plain
    PyTorch ops (planner/cost/eager_activations.py), as calibrated CPU profiles use."""
    dp_step_overhead_s: float = Field(ge=0)
    """Framework time per step of data-parallel gradient sync beyond its collectives (hooks,
    bucket copies); calibrated on CPU."""
    fsdp_unit_overhead_s: float = Field(ge=0)
    """Framework time per FSDP unit per gather or reduce-scatter beyond the collective (copy-in
    and copy-out, hooks); calibrated on CPU."""
    fsdp_unit_step_overhead_s: float = Field(default=0.0, ge=0)
    """Framework time per FSDP unit per step, however often the unit gathers: the update and
    the gradient norm of its sharded (DTensor) parameters, paid by ZeRO-1/2 as by ZeRO-3;
    calibrated on CPU (a ZeRO-2 probe beside the ZeRO-3 one tells it from the per-call
    cost), 0 on GPU stacks (not modelled there)."""
    tp_block_overhead_s: float = Field(ge=0)
    """Framework time per tensor-parallel block per micro-batch (DTensor dispatch) beyond its
    kernels and collectives; calibrated on CPU."""
    sp_block_overhead_s: float = Field(ge=0)
    """Additional framework time per block per micro-batch with sequence parallelism."""
    recompute_block_overhead_s: float = Field(default=0.0, ge=0)
    """Additional framework time per recomputed region (one per block under selective or full
    recompute) per micro-batch: the checkpoint wrapper saving its inputs and re-entering the
    forward during backward; calibrated on CPU, 0 on GPU stacks (not modelled there)."""
    cp_block_overhead_s: float = Field(default=0.0, ge=0)
    """Additional framework time per block per micro-batch with context parallelism (the
    executor's K/V gathers and chunk bookkeeping in Python); calibrated on CPU, 0 on GPU
    stacks (not modelled there)."""
    pp_microbatch_overhead_s: float = Field(ge=0)
    """Framework time per micro-batch per pipeline chunk on the critical path (schedule
    bookkeeping, send/receive setup); calibrated on CPU."""
    optimizer_tensor_overhead_s: float = Field(ge=0)
    """Fixed time per parameter tensor per step in the optimizer and gradient clipping (a
    per-tensor loop; ~0 with fused multi-tensor kernels)."""
    framework_memory_bytes: int = Field(ge=0)
    """Fixed per-GPU memory outside the model: runtime context, communication buffers, allocator
    fragmentation."""
    async_checkpoint: bool
    """Checkpoints are saved asynchronously: training stalls only for the snapshot to host
    memory and the write to storage runs behind the next steps (Megatron-Core async save,
    torch.distributed.checkpoint.async_save)."""
    ep_dispatcher: Literal["alltoall", "deepep"] = "alltoall"
    """How MoE tokens reach their experts: `alltoall` sends each of a token's top_k copies to
    its expert's rank (NCCL all-to-all); `deepep` (DeepEP / HybridEP) sends a token once to
    each remote node (scale-up domain) holding any of its experts and forwards it over NVLink
    inside that node (DeepSeek-AI, DeepEP README, 'normal kernels'; arXiv 2412.19437 section
    3.2.2)."""
    ep_link_efficiency: float | None = Field(default=None, gt=0, le=1)
    """Fraction of the link's per-direction bandwidth the dispatcher's dispatch / combine
    kernels reach on large messages, in one kernel per call (no per-peer steps). None: an NCCL
    all-to-all, read off the profile's collective curve with n-1 pairwise steps."""
    attention_layout_copy_bytes: float = Field(default=0.0, ge=0)
    """HBM bytes per element of q, k, v and the attention output that layout copies around the
    attention kernel move, forward and again backward (a model that transposes to the kernel's
    [batch, head, seq, dim] and back with .contiguous(): 2 read + 2 written). 0: the kernel
    takes the model's layout."""
    attention_sink_fwd_bytes: float = Field(default=0.0, ge=0)
    """HBM bytes per attention-output element of applying attention sinks (spec
    attention.sinks) outside the kernel in the forward (0: the kernel's softmax has them)."""
    attention_sink_bwd_bytes: float = Field(default=0.0, ge=0)
    """The same for the backward."""
    mla_assembly_bytes: float = Field(default=4.0, ge=0)
    """HBM bytes per element of MLA's assembled queries and keys (heads x (nope + rope) each
    per token), forward and again backward, for building them from their no-rope and rotary
    parts: a 2-byte read and a 2-byte write, whether by torch.cat (NeMo AutoModel's and
    torchtitan's DeepSeek-V3 attention) or Megatron-Core's fused MLA RoPE kernels, which read q
    and the compressed kv and write query, key and value; the gradients are split back alike.
    Dense and GQA attention: not applied."""
    mla_rope_fwd_bytes: float = Field(default=0.0, ge=0)
    """HBM bytes per element of MLA's rotary query part (heads x rope per token) of a RoPE
    applied outside a fused kernel, forward (0: fused into the assembly)."""
    mla_rope_bwd_bytes: float = Field(default=0.0, ge=0)
    """The same for the backward."""
    expert_bias_bytes: ExpertBiasBytes | None = None
    """How MoE expert biases (spec `moe.expert_bias`) are added. None: in the grouped GEMM's
    epilogue, no HBM pass of their own (Transformer Engine's GroupedLinear takes the biases
    into its grouped GEMM call, as Megatron-Core's TEGroupedMLP uses it); else separate
    element-wise kernels moving these bytes per output element."""
    ep_comm_overlap: bool = False
    """Expert-parallel dispatch / combine all-to-alls overlap compute of another micro-batch
    (Megatron-Core overlap_moe_expert_parallel_comm; DeepSeek-V3's DualPipe): exposed EP time is
    what the block's compute cannot hide."""
    block_host_ops_fwd: float = Field(default=0.0, ge=0)
    """CPU work of issuing one dense block's forward per micro-batch, in eager-op equivalents
    (one eager PyTorch op dispatched and launched: the cluster's `host_op_s`): the block's
    kernel-launching ops, a framework module counted at its measured CPU cost over a plain op.
    Tensor-parallel collectives and the recomputed forward are added by planner/cost/host.py.
    0: not modelled (calibrated CPU stacks, whose per-op dispatch is the GPU profile's
    `kernel_overhead_s`)."""
    block_host_ops_bwd: float = Field(default=0.0, ge=0)
    """The same for the block's backward (autograd replaying the forward's ops' gradients)."""
    moe_host_ops_fwd: float = Field(default=0.0, ge=0)
    """Eager-op equivalents an MoE FFN adds to a block's forward over the dense MLP it replaces
    (router, top-k, permute, dispatch and combine, grouped expert GEMMs, unpermute)."""
    moe_host_ops_bwd: float = Field(default=0.0, ge=0)
    """The same for the MoE FFN's backward."""
    moe_host_syncs: int = Field(default=0, ge=0)
    """Host-device synchronisations per dropless MoE block forward (the CPU reads the tokens per
    expert to size the dispatch): each empties the queue the CPU had run ahead with, so the GPU
    waits for the next launch (planner/cost/host.py)."""
    sources: dict[str, str] = Field(default_factory=dict)
    """Field name -> where the behaviour or number comes from."""
    notes: list[str] = Field(default_factory=list)
    """Caveats."""

    @property
    def flash_attention(self) -> bool:
        """Whether attention is fused (no s x s scores in HBM)."""
        return self.attention_kernel != "unfused_softmax"


def _stacks_dir() -> Path:
    return Path(str(resources.files("hardware_profiles"))) / "stacks"


def _files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_stacks_dir().glob("*.json"))}


def stack_names() -> dict[str, list[str]]:
    """Built-in stack name -> its aliases."""
    out = {}
    for name, path in _files().items():
        data = read_json(path, f"stack {path}")
        out[name] = list(data.get("aliases", [])) if isinstance(data, dict) else []
    return out


def _by_name(ref: str) -> Path | None:
    key = ref.strip().lower()
    names = stack_names()
    for name, aliases in names.items():
        if key == name or key in aliases:
            return _files()[name]
    return None


def load_stack(ref: "str | Stack") -> Stack:
    """A stack from a built-in name or alias (`megatron-core`, `nemo`, ...) or a JSON path."""
    if isinstance(ref, Stack):
        return ref
    path = _by_name(ref)
    if path is None:
        p = Path(ref)
        if p.suffix != ".json" and not p.exists():
            known = ", ".join(f"{n} ({', '.join(a)})" if a else n
                              for n, a in stack_names().items())
            raise InputError(f"unknown stack '{ref}'; accepted: {known} (or a path to a "
                             ".json stack file)")
        if not p.is_file():
            raise InputError(f"stack: file not found: {ref}")
        path = p
    return validate_as(Stack, read_json(path, f"stack {path}"), f"stack {path}")


_CLOSEST = {"flagscale": "megatron-core", "nemo-automodel": "nemo-automodel"}


def stack_for_framework(framework: str) -> str:
    """The built-in stack a validation run's `framework` names: a stack name or alias, or
    `other:<fork>` for a fork, planned on its closest stack (`other:flagscale`, a Megatron-LM
    fork: megatron-core; `other:nemo-automodel`: its own stack file, nemo-automodel, from
    AutoModel's benchmark configs; ../shared/validation/README.md names torchtitan the closest
    built-in, which runs eager norms and FlashAttention-2 where AutoModel runs TE kernels)."""
    key = framework.strip().lower()
    if key.startswith("other:"):
        return _CLOSEST.get(key[len("other:"):], DEFAULT_STACK)
    if _by_name(key) is None:
        raise InputError(f"framework '{framework}' names no stack; accepted: "
                         f"{', '.join(stack_names())} or other:<fork>")
    return key
