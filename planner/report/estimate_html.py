"""`paraplan estimate` HTML: cost vs. days per GPU type (Pareto front marked), a step-time
breakdown bar per option, and the options table."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from planner.money import Estimate, Option
from planner.report.page import table, write_page

PARTS = (("compute_s", "compute"), ("tp_comm_s", "TP comm"), ("cp_comm_s", "CP comm"),
         ("pp_comm_s", "PP comm"), ("dp_comm_s", "DP comm"), ("bubble_s", "bubble"),
         ("optimizer_s", "optimizer"))


def label(o: Option) -> str:
    return f"{o.cluster.gpu.name} x {o.num_gpus}"


def cost_vs_days(est: Estimate) -> go.Figure:
    """One line per GPU type over cluster sizes; the cost/days Pareto front marked."""
    fig = go.Figure()
    by_gpu: dict[str, list[Option]] = {}
    for o in est.options:
        if o.fits and o.cost_usd is not None:
            by_gpu.setdefault(o.cluster.gpu.name, []).append(o)
    for gpu, opts in by_gpu.items():
        opts.sort(key=lambda o: o.num_gpus)
        fig.add_trace(go.Scatter(
            x=[o.days for o in opts], y=[o.cost_usd / 1e6 for o in opts], mode="lines+markers+text",
            name=gpu, text=[str(o.num_gpus) for o in opts], textposition="top center",
            hovertemplate="%{text} GPUs<br>%{x:.1f} days<br>$%{y:.2f}M<extra>" + gpu + "</extra>"))
    front = est.pareto()
    if front:
        fig.add_trace(go.Scatter(
            x=[o.days for o in front], y=[o.cost_usd / 1e6 for o in front], mode="lines+markers",
            name="Pareto front", line={"dash": "dot", "color": "black"},
            marker={"symbol": "star", "size": 14, "color": "gold",
                    "line": {"color": "black", "width": 1}},
            text=[label(o) for o in front], hovertemplate="%{text}<extra>Pareto</extra>"))
    fig.update_layout(title="Cost vs. time to train (labels: GPUs)", xaxis_title="days",
                      yaxis_title="cost, million USD (on-demand rent)", height=520,
                      xaxis_type="log", yaxis_type="log")
    return fig


def breakdown_bars(est: Estimate) -> go.Figure:
    """Share of the step in each part, one horizontal stacked bar per option."""
    opts = [o for o in est.options if o.fits]
    names = [label(o) for o in opts]
    fig = go.Figure()
    for key, name in PARTS:
        fig.add_trace(go.Bar(
            y=names, x=[100 * o.prediction["breakdown"][key] / o.prediction["step_time_s"]
                        for o in opts], name=name, orientation="h",
            hovertemplate="%{y}: %{x:.1f}%<extra>" + name + "</extra>"))
    fig.update_layout(barmode="stack", title="Where each option's step time goes",
                      xaxis_title="% of step time", height=max(320, 28 * len(opts) + 160),
                      yaxis={"autorange": "reversed"})
    return fig


def rows(est: Estimate) -> list[list[str]]:
    out = []
    for o in est.options:
        if not o.fits:
            out.append([o.cluster.gpu.name, str(o.num_gpus), f"does not fit ({o.why_not})"]
                       + [""] * 7)
            continue
        p, r = o.plan, o.prediction
        out.append([o.cluster.gpu.name, str(o.num_gpus),
                    f"dp{p.dp} tp{p.tp} pp{p.pp} cp{p.cp} mbs{p.micro_batch_size} "
                    f"v{p.virtual_pipeline_stages} z{p.zero_stage} {p.recompute}",
                    f"{r['step_time_s']:.2f}", f"{r['tokens_per_s']:,.0f}",
                    f"{100 * r['mfu']:.1f}%", f"{o.days:.1f}", f"{o.gpu_hours / 1e6:.2f}M",
                    "-" if o.cost_usd is None else f"${o.cost_usd / 1e6:.2f}M",
                    "-" if o.rent_per_gpu_hour_usd is None else f"${o.rent_per_gpu_hour_usd:.2f}"])
    return out


HEADERS = ["GPU", "GPUs", "best plan", "step s", "tokens/s", "MFU", "days", "GPU-hours",
           "cost", "$/GPU-h"]


def write(path: str | Path, est: Estimate, title: str, intro: str) -> Path:
    return write_page(path, title, f"<p class='note'>{intro}</p>",
                      [cost_vs_days(est), breakdown_bars(est), "<h2>Options</h2>",
                       table(HEADERS, rows(est), left=(0, 2))])
