"""`paraplan estimate` HTML: cost vs. days per GPU type (Pareto front marked), days per option
with the loss to failures and checkpoints as its own bar segment (error bar: the range), a
step-time breakdown bar per option, and the options table."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from planner.money import Estimate, Option
from planner.report.page import table, write_page

PARTS = (("compute_s", "compute"), ("tp_comm_s", "TP comm"), ("cp_comm_s", "CP comm"),
         ("pp_comm_s", "PP comm"), ("dp_comm_s", "DP comm"), ("ep_comm_s", "EP comm"),
         ("host_s", "host launch"), ("bubble_s", "bubble"),
         ("optimizer_s", "optimizer"))


def label(o: Option) -> str:
    return f"{o.cluster.gpu.name} x {o.num_gpus}"


def _band(o: Option) -> tuple[float, float]:
    """The step-time band as factors on the point estimate (days and dollars scale with it)."""
    step = o.prediction["step_time_s"]
    lo, hi = o.prediction.get("step_time_range_s") or (step, step)
    return lo / step, hi / step


def _bars(values: list[float], opts: list[Option]) -> dict:
    """Asymmetric plotly error bars spanning the step-time band of each option's value."""
    bands = [_band(o) for o in opts]
    return {"type": "data", "symmetric": False, "thickness": 1,
            "array": [v * (hi - 1) for v, (_, hi) in zip(values, bands)],
            "arrayminus": [v * (1 - lo) for v, (lo, _) in zip(values, bands)]}


def cost_vs_days(est: Estimate) -> go.Figure:
    """One line per GPU type over cluster sizes, error bars spanning the step-time band (days
    and dollars both scale with the step time); the cost/days Pareto front marked."""
    fig = go.Figure()
    by_gpu: dict[str, list[Option]] = {}
    for o in est.options:
        if o.fits and o.cost_usd is not None:
            by_gpu.setdefault(o.cluster.gpu.name, []).append(o)
    for gpu, opts in by_gpu.items():
        opts.sort(key=lambda o: o.num_gpus)
        days, cost = [o.days for o in opts], [o.cost_usd / 1e6 for o in opts]
        fig.add_trace(go.Scatter(
            x=days, y=cost, error_x=_bars(days, opts), error_y=_bars(cost, opts),
            mode="lines+markers+text",
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


def days_bars(est: Estimate) -> go.Figure:
    """Days per option: failure-free training, then the loss to failures, restarts and
    checkpoint stalls as its own segment; the error bar spans days_with_losses_range."""
    opts = [o for o in est.options if o.fits and o.goodput is not None]
    names = [label(o) for o in opts]
    ideal = [o.goodput.days_ideal for o in opts]
    lost = [o.goodput.days_with_losses - o.goodput.days_ideal for o in opts]
    total = [o.goodput.days_with_losses for o in opts]
    fig = go.Figure([
        go.Bar(y=names, x=ideal, name="training (no failures)", orientation="h",
               hovertemplate="%{y}: %{x:.1f} days<extra>training</extra>"),
        go.Bar(y=names, x=lost, name="lost: failures, restarts, checkpoint stalls",
               orientation="h", marker={"color": "indianred"},
               customdata=[[100 * o.goodput.goodput_fraction] for o in opts],
               error_x={"type": "data", "symmetric": False,
                        "array": [o.goodput.days_with_losses_range[1] - t
                                  for o, t in zip(opts, total)],
                        "arrayminus": [t - o.goodput.days_with_losses_range[0]
                                       for o, t in zip(opts, total)]},
               hovertemplate="%{y}: +%{x:.1f} days (goodput %{customdata[0]:.1f}%)"
                             "<extra>losses</extra>")])
    fig.update_layout(barmode="stack", title="Days to train, with the loss to failures as its own "
                      "segment (error bar: step-time band x failure-rate range)",
                      xaxis_title="days", height=max(320, 28 * len(opts) + 160),
                      yaxis={"autorange": "reversed"})
    return fig


def rows(est: Estimate) -> list[list[str]]:
    out = []
    for o in est.options:
        if not o.fits:
            out.append([o.cluster.gpu.name, str(o.num_gpus), f"does not fit ({o.why_not})"]
                       + [""] * (len(HEADERS) - 3))
            continue
        p, r = o.plan, o.prediction
        out.append([o.cluster.gpu.name, str(o.num_gpus),
                    f"dp{p.dp} tp{p.tp} pp{p.pp} cp{p.cp} mbs{p.micro_batch_size} "
                    f"v{p.virtual_pipeline_stages} {p.zero_label} {p.recompute}",
                    f"{r['step_time_s']:.2f}", f"{r['tokens_per_s']:,.0f}",
                    f"{100 * r['mfu']:.1f}%", f"{o.days:.1f}", f"{o.gpu_hours / 1e6:.2f}M",
                    "-" if o.cost_usd is None else f"${o.cost_usd / 1e6:.2f}M",
                    "-" if o.rent_per_gpu_hour_usd is None else f"${o.rent_per_gpu_hour_usd:.2f}",
                    *_loss_cells(o)])
    return out


def _loss_cells(o: Option) -> list[str]:
    g = o.goodput
    if g is None:
        return ["-"] * 5
    cost = "-" if g.cost_usd_with_losses is None else f"${g.cost_usd_with_losses / 1e6:.2f}M"
    return [f"{100 * g.goodput_fraction:.1f}%", f"{g.checkpoint_interval_s:,.0f} s",
            f"{g.checkpoint_stall_s:.3g} s", f"{g.days_with_losses:.1f} "
            f"({g.days_with_losses_range[0]:.1f}-{g.days_with_losses_range[1]:.1f})", cost]


HEADERS = ["GPU", "GPUs", "best plan", "step s", "tokens/s", "MFU", "days", "GPU-hours",
           "cost", "$/GPU-h", "goodput", "ckpt every", "stall", "days w/ losses",
           "cost w/ losses"]


def write(path: str | Path, est: Estimate, title: str, intro: str) -> Path:
    return write_page(path, title, f"<p class='note'>{intro}</p>",
                      [cost_vs_days(est), days_bars(est), breakdown_bars(est),
                       "<h2>Options</h2>",
                       table(HEADERS, rows(est), left=(0, 2))])
