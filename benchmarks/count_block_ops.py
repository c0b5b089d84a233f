"""Count the kernel-launching ATen ops of one eager PyTorch Llama block, forward and backward.

This is where the eager stacks' `block_host_ops_fwd` / `block_host_ops_bwd` come from
(hardware_profiles/stacks/torchtitan.json, fsdp.json): the executor's block (executor/
transformer.py) runs the same ops as torchtitan's Llama block (RMSNorm, wq/wk/wv, RoPE, SDPA,
wo, SwiGLU w1/w3/w2, two residual adds), and every op it dispatches that is not a view is one
kernel launch on a GPU. Counts do not depend on the widths, so a narrow block is used.

    python benchmarks/count_block_ops.py
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from executor.transformer import Block, rope_tables
from planner.transformer import TransformerSpec, load_transformer


# Ops that only make a new tensor header (no kernel), and the loss seed `backward()` fills.
_METADATA = (torch.ops.aten.detach.default, torch.ops.aten._unsafe_view.default,
             torch.ops.aten.ones_like.default)


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if getattr(func, "is_view", False) or func in _METADATA:
            self.views += 1  # metadata only: no kernel
        else:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(preset: str = "llama3-8b") -> dict[str, object]:
    """Kernel-launching ops of one dense block of `preset` (narrowed), forward and backward."""
    d = load_transformer(preset).model_dump()
    d.update(hidden_size=256, num_attention_heads=8, num_kv_heads=2, ffn_hidden_size=512,
             vocab_size=512, seq_len=32, head_dim=32, moe=None)
    spec = TransformerSpec(**d)
    block = Block(spec, 0)
    cos, sin = rope_tables(spec.d_head, spec.seq_len)
    x = torch.randn(2, spec.seq_len, spec.hidden_size, requires_grad=True)
    with _Count() as fwd:
        y = block(x, cos, sin, 0)
    with _Count() as bwd:
        y.sum().backward()
    return {"preset": preset, "torch": torch.__version__,
            "fwd_ops": sum(fwd.ops.values()), "fwd_views": fwd.views,
            "bwd_ops": sum(bwd.ops.values()), "bwd_views": bwd.views,
            "fwd": dict(fwd.ops), "bwd": dict(bwd.ops)}


if __name__ == "__main__":
    r = count()
    print(f"{r['preset']} block, torch {r['torch']}: forward {r['fwd_ops']} ops "
          f"(+{r['fwd_views']} views), backward {r['bwd_ops']} ops (+{r['bwd_views']} views)")
    print("forward: ", r["fwd"])
    print("backward:", r["bwd"])
