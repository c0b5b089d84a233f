"""Predicted vs. measured HTML: step time scatter with the y = x line and a +-15% band, the
predicted breakdown of every plan beside its measured total, memory predicted vs. measured per
rank and component, and the table of errors."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from planner.compare import MEMORY, rank_memory
from planner.plan import Plan
from planner.report.estimate_html import PARTS
from planner.report.page import table, write_page


def label(plan: dict) -> str:
    p = plan
    extra = [f"v{p['virtual_pipeline_stages']}"] if p["virtual_pipeline_stages"] > 1 else []
    extra += [f"z{p['zero_stage']}"] if p["zero_stage"] else []
    extra += [p["recompute"]] if p["recompute"] != "none" else []
    extra += ["sp"] if p["sequence_parallel"] else []
    return (f"dp{p['dp']} tp{p['tp']} pp{p['pp']} cp{p['cp']} mb{p['micro_batch_size']} "
            f"{p['schedule']} " + " ".join(extra)).strip()


def scatter(rows: list[dict], band: float = 0.15) -> go.Figure:
    ms = [1e3 * r["measured"]["step_time_s"] for r in rows]
    ps = [1e3 * r["predicted"]["step_time_s"] for r in rows]
    lo, hi = min(ms + ps) * 0.8, max(ms + ps) * 1.2
    fig = go.Figure()
    for k, dash in ((1.0, "solid"), (1 + band, "dot"), (1 - band, "dot")):
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * k, hi * k], mode="lines", showlegend=k == 1,
                                 name="predicted = measured" if k == 1 else f"+-{band:.0%}",
                                 line={"color": "gray", "dash": dash}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=ms, y=ps, mode="markers", name="plans", marker={"size": 8},
        text=[f"{label(r['plan'])}<br>error {100 * r['step_error']:+.1f}%" for r in rows],
        hovertemplate="%{text}<br>measured %{x:.1f} ms<br>predicted %{y:.1f} ms<extra></extra>"))
    fig.update_layout(title="Step time: predicted vs. measured", xaxis_title="measured, ms",
                      yaxis_title="predicted, ms", xaxis_type="log", yaxis_type="log",
                      height=560)
    return fig


def breakdown(rows: list[dict]) -> go.Figure:
    rows = sorted(rows, key=lambda r: r["measured"]["step_time_s"])
    names = [label(r["plan"]) for r in rows]
    fig = go.Figure()
    for key, name in PARTS:
        fig.add_trace(go.Bar(y=names, x=[1e3 * r["predicted"]["breakdown"][key] for r in rows],
                             name=f"predicted {name}", orientation="h"))
    fig.add_trace(go.Scatter(y=names, x=[1e3 * r["measured"]["step_time_s"] for r in rows],
                             mode="markers", name="measured total",
                             marker={"symbol": "diamond", "size": 9, "color": "black"}))
    fig.update_layout(barmode="stack", title="Predicted breakdown beside the measured step",
                      xaxis_title="ms per step", height=max(400, 18 * len(rows) + 160),
                      yaxis={"autorange": "reversed"})
    return fig


def memory(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    top = 1.0
    for pkey, mkey in MEMORY.items():
        xs, ys, text = [], [], []
        for r in rows:
            plan = Plan(**r["plan"])
            for m in r["measured"]["memory"]:
                xs.append(m[mkey] / 2**20)
                ys.append(rank_memory(plan, r["predicted"], m["rank"])[pkey] / 2**20)
                text.append(f"{label(r['plan'])}, rank {m['rank']}")
        top = max([top] + xs + ys)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=pkey.removesuffix("_bytes"),
                                 text=text, hovertemplate="%{text}<br>measured %{x:.2f} MiB"
                                 "<br>predicted %{y:.2f} MiB<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="predicted = measured",
                             line={"color": "gray"}))
    fig.update_layout(title="Memory per rank: predicted vs. measured", height=520,
                      xaxis_title="measured, MiB", yaxis_title="predicted, MiB")
    return fig


def error_table(rows: list[dict]) -> str:
    body = []
    for r in sorted(rows, key=lambda r: r["measured"]["step_time_s"]):
        e = r["memory_errors"]
        body.append([label(r["plan"]), f"{1e3 * r['predicted']['step_time_s']:.1f}",
                     f"{1e3 * r['measured']['step_time_s']:.1f}", f"{100 * r['step_error']:+.1f}%"]
                    + [f"{100 * e[k]:.1f}%" for k in ("weights", "gradients", "optimizer",
                                                     "activations")])
    return table(["plan", "predicted ms", "measured ms", "error", "params err", "grads err",
                  "optimizer err", "activations err"], body)


def write(path: str | Path, data: dict) -> Path:
    s = data["summary"]
    intro = (f"<p class='note'>{data['transformer']['name']} on {data['cluster']} "
             f"({data['world_size']} ranks), {s['plans']} plans. Step time: mean error "
             f"{s['step_mape_pct']:.1f}%, max {s['step_max_error_pct']:.1f}%, "
             f"{100 * s['within_15_pct']:.0f}% within 15%, rank correlation "
             f"{s['rank_correlation']:.3f}; predicted-best plan measures "
             f"{s['predicted_best_vs_measured_best_pct']:+.1f}% from the measured best.</p>")
    return write_page(path, "paraplan: predicted vs. measured", intro,
                      [scatter(data["rows"]), breakdown(data["rows"]), memory(data["rows"]),
                       "<h2>Errors</h2>", error_table(data["rows"])])
