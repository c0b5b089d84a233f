"""A self-contained HTML page from plotly figures and tables (plotly.js inlined once, so the
page works offline)."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from planner.schema import write_text_atomic

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:12px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}
.note{color:#555;font-size:13px}"""


def table(headers: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """An HTML table; cells are escaped; columns in `left` are left-aligned (text)."""
    def cell(tag: str, i: int, text: str) -> str:
        style = " style='text-align:left'" if i in left else ""
        return f"<{tag}{style}>{html.escape(str(text))}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_page(path: str | Path, title: str, intro_html: str,
               parts: list[go.Figure | str]) -> Path:
    """Write figures (plotly) and raw HTML snippets in order; returns the path."""
    chunks, first = [], True
    for part in parts:
        if isinstance(part, go.Figure):
            chunks.append(pio.to_html(part, full_html=False, include_plotlyjs=first,
                                      config={"displaylogo": False}))
            first = False
        else:
            chunks.append(part)
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{intro_html}"
           + "".join(chunks) + "</body></html>")
    return write_text_atomic(path, doc)
