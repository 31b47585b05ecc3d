"""Figures as pure functions: numbers in, a plotly figure out (no model calls, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

LABEL_CHARS = 28


def short_labels(captions: Sequence[str], width: int = LABEL_CHARS) -> list[str]:
    """Unique axis labels: the item number and the caption cut to `width` characters."""
    out = []
    for i, caption in enumerate(captions):
        text = caption if len(caption) <= width else caption[: width - 1].rstrip() + "…"
        out.append(f"{i + 1}. {text}")
    return out


def heatmap(
    matrix: np.ndarray,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    x_hover: Sequence[str],
    y_hover: Sequence[str],
    title: str,
    value_name: str,
    zrange: tuple[float, float] | None = None,
    colorscale: str = "Viridis",
    annotate: bool | None = None,
) -> go.Figure:
    """An interactive heatmap whose hover names both items in full.

    Rows are y (top to bottom), columns x. Values are written in the cells when the matrix is
    small enough to read them (`annotate=None` decides by size).
    """
    n_rows, n_cols = matrix.shape
    hover = np.empty((n_rows, n_cols), dtype=object)
    for r in range(n_rows):  # hover strings for at most a few hundred items: display only
        for c in range(n_cols):
            hover[r, c] = f"<b>{y_hover[r]}</b><br>vs <b>{x_hover[c]}</b><br>{value_name}: {matrix[r, c]:.3f}"
    annotate = (n_rows * n_cols <= 144) if annotate is None else annotate
    zmin, zmax = zrange if zrange is not None else (float(matrix.min()), float(matrix.max()))
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(x_labels),
            y=list(y_labels),
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            text=np.round(matrix, 2) if annotate else None,
            texttemplate="%{text}" if annotate else None,
            colorbar={"title": {"text": value_name, "side": "right"}, "thickness": 12},
        )
    )
    fig.update_layout(
        title={"text": title, "x": 0.5},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=max(360, min(720, 120 + 26 * n_rows)),
        yaxis={"autorange": "reversed", "automargin": True, "tickfont": {"size": 10}},
        xaxis={"automargin": True, "tickangle": -40, "tickfont": {"size": 10}},
    )
    return fig
