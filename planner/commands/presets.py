"""`paraplan presets`: the built-in transformers, GPUs, clusters and stacks."""

from __future__ import annotations

import argparse

from rich.table import Table

from planner.commands.common import console, gib
from planner.cost.params import active_params, total_params
from planner.hardware import load_cluster, load_gpu, preset_names
from planner.stack import DEFAULT_STACK, load_stack, stack_names
from planner.transformer import load_transformer, transformer_preset_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list built-in transformers, GPUs, clusters and stacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = console()
    t = Table(title="transformers (--transformer)", title_justify="left")
    for col in ("name", "params", "active", "layers", "hidden", "heads/kv", "ffn", "experts",
                "vocab", "seq", "mlp"):
        t.add_column(col, no_wrap=True)
    for name in transformer_preset_names():
        s = load_transformer(name)
        t.add_row(name, _count(total_params(s)),
                  _count(active_params(s)) if s.is_moe else "-", str(s.num_layers),
                  str(s.hidden_size), f"{s.num_attention_heads}/{s.num_kv_heads}",
                  str(s.ffn_hidden_size), _experts(s), str(s.vocab_size), str(s.seq_len), s.mlp)
    out.print(t)
    g = Table(title="GPUs", title_justify="left")
    for col in ("name", "description", "GiB", "bf16 TFLOP/s", "HBM GB/s"):
        g.add_column(col)
    for name in preset_names("gpus"):
        gpu = load_gpu(name)
        g.add_row(name, gpu.description, gib(gpu.memory_bytes), f"{gpu.peak_tflops.bf16:g}",
                  f"{gpu.hbm_bandwidth_GBps:g}")
    out.print(g)
    c = Table(title="clusters (--cluster, scale with --num-nodes)", title_justify="left")
    for col in ("name", "GPU", "GPUs/node", "intra-node GB/s", "inter-node GB/s/node",
                "rent $/GPU-h (date)"):
        c.add_column(col)
    for name in preset_names("clusters"):
        cl = load_cluster(name)
        inter = cl.inter_node
        c.add_row(name, cl.gpu.name, str(cl.gpus_per_node), f"{cl.intra_node.bandwidth_GBps:g}",
                  f"{inter.nics_per_node * inter.nic_bandwidth_GBps:g}" if inter else "-",
                  _rent(cl))
    out.print(c)
    st = Table(title=f"stacks (--stack; default {DEFAULT_STACK})", title_justify="left")
    for col in ("name", "aliases", "attention", "TP overlap", "DP overlap", "ZeRO as",
                "async save"):
        st.add_column(col)
    for name, aliases in stack_names().items():
        k = load_stack(name)
        st.add_row(name, ", ".join(aliases) or "-", k.attention_kernel, _yes(k.tp_comm_overlap),
                   _yes(k.grad_overlap), k.zero_impl, _yes(k.async_checkpoint))
    out.print(st)
    return 0


def _count(n: float) -> str:
    """A parameter count as 12.34B or 5.67M."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _experts(spec) -> str:
    """Routed experts (+ shared) x expert width, top-k: `256+1x2048 top8`; `-` for dense."""
    m = spec.moe
    if m is None:
        return "-"
    shared = f"+{m.num_shared_experts}" if m.num_shared_experts else ""
    return f"{m.num_experts}{shared}x{m.expert_ffn_hidden_size} top{m.top_k}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _rent(cluster) -> str:
    p = cluster.prices
    if p is None or p.rent_per_gpu_hour_usd is None:
        return "-"
    return f"{p.rent_per_gpu_hour_usd:g} ({p.rent_date})"
