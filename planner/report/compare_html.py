"""Predicted vs. measured HTML: step time scatter with the y = x line and a +-15% band, the
predicted breakdown of every plan beside its measured total, memory predicted vs. measured per
rank and component, and the table of errors. Rows measured in rounds (validate-local --rounds)
carry their spread: a horizontal error bar (min to max over rounds) on each measured point and
total, the interquartile range in the hover text and the table, and the summary's figures
judged against the noise (planner/noise.py) in the introduction."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from planner.compare import MEMORY, rank_memory
from planner.plan import Plan
from planner.report.estimate_html import PARTS
from planner.report.page import table, write_page


def label(plan: dict) -> str:
    p = plan
    ep, etp = p.get("ep", 1), p.get("etp", 1)  # older files have no expert keys
    extra = [f"ep{ep}" + (f" etp{etp}" if etp > 1 else "")] if ep > 1 or etp > 1 else []
    extra += [f"v{p['virtual_pipeline_stages']}"] if p["virtual_pipeline_stages"] > 1 else []
    passes = p.get("pipeline_passes", 1)  # older files have no pipeline_passes
    extra += [f"x{passes}"] if passes > 1 else []
    shard = p.get("dp_shard")  # older files have no dp_shard
    extra += [f"z{p['zero_stage']}" + (f"/{shard}" if shard and shard < p["dp"] else "")
              ] if p["zero_stage"] else []
    extra += [p["recompute"]] if p["recompute"] != "none" else []
    extra += ["sp"] if p["sequence_parallel"] else []
    return (f"dp{p['dp']} tp{p['tp']} pp{p['pp']} cp{p['cp']} mb{p['micro_batch_size']} "
            f"{p['schedule']} " + " ".join(extra)).strip()


def spread_bars(rows: list[dict]) -> dict | None:
    """Plotly error_x (ms) from each row's measured median to its min and max over rounds;
    None when no row has a spread (files written before the protocol)."""
    if not any("measured_spread_s" in r for r in rows):
        return None
    up, down = [], []
    for r in rows:
        med, band = r["measured"]["step_time_s"], r.get("measured_spread_s")
        up.append(1e3 * (band["max"] - med) if band else 0.0)
        down.append(1e3 * (med - band["min"]) if band else 0.0)
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down,
            "thickness": 1.2, "width": 3}


def _spread_text(r: dict) -> str:
    band = r.get("measured_spread_s")
    if not band:
        return ""
    return (f"<br>{len(r['measured_rounds_s'])} rounds: {1e3 * band['min']:.1f}-"
            f"{1e3 * band['max']:.1f} ms, IQR {1e3 * band['q25']:.1f}-{1e3 * band['q75']:.1f}"
            f"<br>prediction {'inside' if r['within_spread'] else 'outside'} the spread")


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
        x=ms, y=ps, mode="markers", name="plans", marker={"size": 8}, error_x=spread_bars(rows),
        text=[f"{label(r['plan'])}<br>error {100 * r['step_error']:+.1f}%{_spread_text(r)}"
              for r in rows],
        hovertemplate="%{text}<br>measured %{x:.1f} ms<br>predicted %{y:.1f} ms<extra></extra>"))
    spread = " (error bars: min-max over rounds)" if spread_bars(rows) else ""
    fig.update_layout(title=f"Step time: predicted vs. measured{spread}",
                      xaxis_title="measured (median), ms",
                      yaxis_title="predicted, ms", xaxis_type="log", yaxis_type="log",
                      height=560)
    return fig


def breakdown(rows: list[dict]) -> go.Figure:
    rows = sorted(rows, key=lambda r: r["measured"]["step_time_s"])
    names = [label(r["plan"]) for r in rows]
    fig = go.Figure()
    for key, name in PARTS:  # a part newer than the file (ep_comm_s, say) is 0 there
        fig.add_trace(go.Bar(y=names, x=[1e3 * r["predicted"]["breakdown"].get(key, 0.0)
                                         for r in rows],
                             name=f"predicted {name}", orientation="h"))
    fig.add_trace(go.Scatter(y=names, x=[1e3 * r["measured"]["step_time_s"] for r in rows],
                             mode="markers", name="measured total", error_x=spread_bars(rows),
                             text=[_spread_text(r) for r in rows],
                             hovertemplate="%{y}<br>measured %{x:.1f} ms%{text}<extra></extra>",
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
    spread = any("measured_spread_s" in r for r in rows)
    body = []
    for r in sorted(rows, key=lambda r: r["measured"]["step_time_s"]):
        e = r["memory_errors"]
        cells = [label(r["plan"]), f"{1e3 * r['predicted']['step_time_s']:.1f}",
                 f"{1e3 * r['measured']['step_time_s']:.1f}", f"{100 * r['step_error']:+.1f}%"]
        if spread:
            b = r.get("measured_spread_s")
            cells += ([f"{1e3 * b['min']:.1f}-{1e3 * b['max']:.1f}",
                       f"{1e3 * b['q25']:.1f}-{1e3 * b['q75']:.1f}",
                       "yes" if r["within_spread"] else "no"] if b else ["", "", ""])
        body.append(cells + [f"{100 * e[k]:.1f}%" for k in ("weights", "gradients", "optimizer",
                                                           "activations")])
    head = ["plan", "predicted ms", "measured ms", "error"]
    head += ["min-max ms", "IQR ms", "in spread"] if spread else []
    return table(head + ["params err", "grads err", "optimizer err", "activations err"], body)


def noise_summary(s: dict) -> str:
    """The protocol's summary figures as HTML (empty for a file written before it)."""
    parts = []
    if s.get("within_spread_share") is not None:
        parts.append(f"{100 * s['within_spread_share']:.0f}% of plans predicted within their "
                     f"measured spread (min-max over rounds, widened by "
                     f"{100 * s['spread_tolerance']:g}%)")
    p = s.get("pick")
    if p:
        inside = {True: ", inside the best plan's spread",
                  False: ", outside the best plan's spread", None: ""}[
                      p["first_within_best_spread"]]
        parts.append(f"the search's first plan ({html.escape(label(p['first_plan']))}) "
                     f"measures {p['first_vs_best_pct']:+.1f}% from the best measured median "
                     f"({html.escape(label(p['best_plan']))}){inside}")
    if s.get("machine_noise") is not None:
        parts.append(f"machine noise {100 * s['machine_noise']:.1f}% (median over "
                     f"{s['machine_noise_plans']} plans of (max - min) / median)")
    return f"<p class='note'>{'; '.join(parts)}.</p>" if parts else ""


def write(path: str | Path, data: dict) -> Path:
    s = data["summary"]
    median = " (the median over rounds)" if s.get("rounds_per_plan") else ""
    stopped = ("" if data.get("complete", True) else
               f" <b>Incomplete</b>: stopped after {data.get('rounds_done', 0)} full rounds "
               "(resume with validate-local --resume).")
    intro = (f"<p class='note'>{data['transformer']['name']} on {data['cluster']} "
             f"({data['world_size']} ranks), {s['plans']} plans. Step time{median}: mean error "
             f"{s['step_mape_pct']:.1f}%, max {s['step_max_error_pct']:.1f}%, "
             f"{100 * s['within_15_pct']:.0f}% within 15%, rank correlation "
             f"{s['rank_correlation']:.3f}; predicted-best plan measures "
             f"{s['predicted_best_vs_measured_best_pct']:+.1f}% from the measured best."
             f"{stopped}</p>" + noise_summary(s))
    return write_page(path, "paraplan: predicted vs. measured", intro,
                      [scatter(data["rows"]), breakdown(data["rows"]), memory(data["rows"]),
                       "<h2>Errors</h2>", error_table(data["rows"])])
