"""The mixture-of-experts FFN of a block (planner/moe.py `MoESpec`): a router, routed experts
(each a bias-free MLP like the dense one, width expert_ffn_hidden_size), always-active shared
experts, dropless, and the Switch-Transformer load-balancing loss.

Sources: Fedus et al. 2021 (Switch Transformer, arXiv 2101.03961) eq. 4-6 for the balancing loss
and its coefficient; Jiang et al. 2024 (Mixtral, arXiv 2401.04088) and Qwen3's norm_topk_prob
for softmax-then-top-k with the k weights renormalised; DeepSeek-V3 (arXiv 2412.19437) eq. 12-16
for the sigmoid router (top-k on sigmoid scores plus a selection-only bias, weights normalised
over the chosen k) and section 2.1.2 for shared experts and leading dense blocks.

Load-balancing loss, as computed here (the definition every parallel layout reproduces): Switch
eq. 4, alpha * E * sum_i f_i P_i, with the batch B of eq. 4 taken to be *one sequence*, then
averaged over the sequences of the global batch. For top-k routing f_i is the fraction of the
sequence's k*T (token, slot) assignments sent to expert i and P_i the mean router probability of
expert i over its T tokens (Megatron-Core's `switch_load_balancing_loss_func`, applied per
sequence as its `seq_aux_loss`; DeepSeek-V3 eq. 17-20 is the same per-sequence form). Balanced
routing with uniform probabilities gives exactly alpha. A global-batch f_i would need every
micro-batch routed before the first backward (gradient accumulation and pipelining run them one
after another); per sequence, the loss is a mean over sequences like the cross-entropy, so data
parallelism, micro-batching, pipeline stages and expert parallelism leave it unchanged. With
context parallelism a sequence spans the cp group: the expert counts are summed over it and each
rank uses its own tokens' mean probability, whose average over the group is the sequence's.

The loss is carried in two ways. `aux_loss` holds the last forward's raw E*sum f P (with graph)
for a caller that adds it to its own loss (the single-process reference). When `aux` is set
(executor/train.py, every step) its gradient is instead attached to the layer's output by
`_AttachAux`, so it flows from any pipeline stage without being added to the last stage's loss
(Megatron-Core's MoEAuxLossAutoScaler), and its value is recorded once per micro-batch, in
backward (so activation recompute does not count it twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from executor.parallel.expert import gather_tokens, split_tokens, token_chunk
from planner.transformer import TransformerSpec

AUX_LOSS_COEFF = 0.01  # Fedus et al. 2021, section 2.2: alpha = 10^-2 in all their experiments


class ExpertMLP(nn.Module):
    """One expert (routed or shared): the dense MLP's form without biases (the planner counts
    mlp_mats * h * width weights per expert: planner/moe.py expert_params)."""

    def __init__(self, hidden: int, width: int, gated: bool):
        super().__init__()
        self.w1 = nn.Linear(hidden, width, bias=False)
        self.w2 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(hidden, width, bias=False) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:  # Shazeer 2020, SwiGLU
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


class ExpertBank(nn.ModuleDict):
    """This rank's routed experts, keyed by global expert index (expert parallelism deletes the
    others and keeps the names, as pipeline stages keep layer names). One module, so ZeRO wraps
    each layer's experts as one unit."""

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x: rows sorted by expert, counts[j] of them for the j-th held expert; every expert
        runs, even on no rows, so all ranks issue the same operations."""
        parts = torch.split(x, counts)
        return torch.cat([expert(p) for expert, p in zip(self.values(), parts)])


@dataclass
class AuxLoss:
    """One step's balancing-loss bookkeeping, shared by a rank's MoE layers: the gradient each
    micro-batch's raw loss gets (coefficient x loss scale / micro-batches) and the raw values
    recorded in backward."""

    grad_scale: float
    values: list[torch.Tensor] = field(default_factory=list)

    def total(self, expected: int) -> torch.Tensor:
        """Sum of the step's raw losses: each MoE layer once per micro-batch, the last
        `expected` recorded (on its first step torch.distributed.pipelining runs every stage's
        forward and backward once more, on placeholder inputs, to infer shapes; that leaves the
        weights' gradients alone, but the layers record it)."""
        if len(self.values) < expected:
            raise RuntimeError(f"{len(self.values)} MoE balancing losses recorded, "
                               f"expected {expected}")
        return torch.stack(self.values[len(self.values) - expected:]).sum()


class _AttachAux(torch.autograd.Function):
    """Identity on the layer output; backward also sends `grad_scale` into the raw aux loss."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, raw: torch.Tensor, sink: AuxLoss) -> torch.Tensor:
        ctx.sink, ctx.scale, ctx.value = sink, sink.grad_scale, raw.detach()
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.sink.values.append(ctx.value)
        return grad, torch.full_like(ctx.value, ctx.scale), None


def route(logits: torch.Tensor, top_k: int, kind: str,
          bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities over all experts for the balancing loss, top-k expert ids, their combine
    weights summing to 1). softmax_topk: softmax, top-k, renormalise (Mixtral; Qwen3
    norm_topk_prob). sigmoid_topk: DeepSeek-V3 eq. 13-16: s = sigmoid(u); top-k of s + b (b only
    selects); weights s_i / sum of the chosen s; the loss's probabilities s / sum_j s_j (eq. 19)."""
    logits = logits.float()
    if kind == "softmax_topk":
        probs = logits.softmax(-1)
        weights, idx = probs.topk(top_k, dim=-1)
    elif kind == "sigmoid_topk":
        scores = logits.sigmoid()
        _, idx = (scores if bias is None else scores + bias).topk(top_k, dim=-1)
        weights = scores.gather(-1, idx)
        probs = scores / scores.sum(-1, keepdim=True)
    else:
        raise ValueError(f"unknown router '{kind}'; accepted: softmax_topk, sigmoid_topk")
    return probs, idx, weights / weights.sum(-1, keepdim=True)


def balance_loss(probs: torch.Tensor, idx: torch.Tensor, num_experts: int,
                 seq_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """E * sum_i f_i P_i per sequence, mean over sequences (module docstring); probs (b, s, E),
    idx (b, s, k). `seq_group`: ranks holding the other parts of each sequence (cp)."""
    b, s, k = idx.shape
    counts = torch.zeros(b, num_experts, dtype=probs.dtype, device=probs.device)
    counts.scatter_add_(1, idx.reshape(b, -1), torch.ones(b, s * k, dtype=probs.dtype,
                                                          device=probs.device))
    tokens = s
    if seq_group is not None:
        dist.all_reduce(counts, group=seq_group)  # counts are not differentiable
        tokens = s * dist.get_world_size(seq_group)
    f = counts / (k * tokens)
    return (num_experts * (f * probs.mean(1)).sum(-1)).mean()


class MoE(nn.Module):
    """Router, routed experts, shared experts; input and output (b, s, h). The parallel wrappers
    set `dispatcher` (expert parallel all-to-all, executor/parallel/expert.py), `token_group`
    (tp: each rank of the group routes its 1/tp of the replicated tokens) and `seq_group`."""

    def __init__(self, spec: TransformerSpec):
        super().__init__()
        m = spec.moe
        if m.capacity_factor is not None:
            raise ValueError(f"moe.capacity_factor {m.capacity_factor}: the executor runs "
                             "dropless MoE only; set capacity_factor to null")
        h, gated = spec.hidden_size, spec.mlp == "swiglu"
        self.num_experts, self.top_k, self.router_kind = m.num_experts, m.top_k, m.router
        self.router = nn.Linear(h, m.num_experts, bias=False)
        if m.router == "sigmoid_topk":  # DeepSeek-V3's balancing bias: selects, not trained
            self.register_buffer("expert_bias", torch.zeros(m.num_experts))
        else:
            self.expert_bias = None
        self.experts = ExpertBank({str(i): ExpertMLP(h, m.expert_ffn_hidden_size, gated)
                                   for i in range(m.num_experts)})
        # Shared experts as one MLP of their summed width: identical to summing n MLPs (the
        # gate is elementwise, w2 sums), as DeepSeek-V3 and Megatron-Core's SharedExpertMLP do.
        self.shared = (ExpertMLP(h, m.num_shared_experts * m.shared_width, gated)
                       if m.num_shared_experts else None)
        self.dispatcher = None
        self.token_group: dist.ProcessGroup | None = None
        self.seq_group: dist.ProcessGroup | None = None
        self.aux: AuxLoss | None = None
        self.aux_loss: torch.Tensor | None = None

    def residual_projections(self) -> list[nn.Linear]:
        """Output projections of every expert (GPT-2 residual init scaling)."""
        out = [e.w2 for e in self.experts.values()]
        return out + ([self.shared.w2] if self.shared is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        probs, idx, weights = route(self.router(x), self.top_k, self.router_kind,
                                    self.expert_bias)
        raw = balance_loss(probs, idx, self.num_experts, self.seq_group)
        self.aux_loss = raw
        flat_x, flat_idx, flat_w = x.reshape(-1, h), idx.reshape(b * s, -1), \
            weights.to(x.dtype).reshape(b * s, -1)
        if self.token_group is not None:
            flat_x, flat_w = split_tokens(flat_x, self.token_group), \
                split_tokens(flat_w, self.token_group)
            flat_idx = token_chunk(flat_idx, self.token_group)
        y = self._routed(flat_x, flat_idx, flat_w)
        if self.token_group is not None:
            y = gather_tokens(y, self.token_group)
        y = y.view(b, s, h)
        if self.shared is not None:
            y = y + self.shared(x)
        if self.aux is not None:
            y = _AttachAux.apply(y, raw, self.aux)
        return y

    def _routed(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_k w_k * expert_{idx_k}(x) for each row: (token, slot) pairs sorted by expert
        (stable), run, put back, weighted."""
        n, k = idx.shape
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts)
        xs = x.index_select(0, order // k)
        if self.dispatcher is not None:
            ys = self.dispatcher(xs, counts, self.experts)
        else:
            ys = self.experts(xs, counts.tolist())
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(),
                                                                          device=order.device))
        slots = ys.index_select(0, inverse).view(n, k, -1)
        return (slots * w.unsqueeze(-1)).sum(1)


def moe_layers(modules) -> list[MoE]:
    """The MoE modules among `modules` and their children, each once."""
    seen, out = set(), []
    for mod in modules:
        for sub in mod.modules():
            if isinstance(sub, MoE) and id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
    return out


def start_aux(layers: list[MoE], grad_scale: float) -> AuxLoss | None:
    """A fresh AuxLoss shared by `layers` for one step (None, and nothing set, for dense)."""
    if not layers:
        return None
    sink = AuxLoss(grad_scale)
    for layer in layers:
        layer.aux = sink
    return sink


def total_aux(layers: list[MoE]) -> torch.Tensor | None:
    """Sum of the layers' last raw balancing losses (with graph), None for a dense model."""
    if not layers:
        return None
    out = layers[0].aux_loss
    for layer in layers[1:]:
        out = out + layer.aux_loss
    return out
