"""HTML reports (plotly lives only here, per DESIGN.md)."""
