"""Figures as pure functions: numbers in, a plotly figure out (no model calls, no I/O)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from vlviz.viz.style import (
    CAPTION_COLOUR,
    DIVERGING,
    HIGHLIGHT,
    IMAGE_COLOUR,
    SEQUENTIAL,
    SEQUENTIAL_HOT,
    TEMPLATE,
)

LABEL_CHARS = 28


def short_labels(captions: Sequence[str], width: int = LABEL_CHARS, numbers: Sequence[int] | None = None) -> list[str]:
    """Unique axis labels: the item number (1-based; `numbers` are 0-based positions) and the caption cut to `width`."""
    out = []
    for i, caption in zip(range(len(captions)) if numbers is None else numbers, captions):
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
    colorscale: str = SEQUENTIAL,
    annotate: bool | None = None,
) -> go.Figure:
    """An interactive heatmap whose hover names both items in full, with no string per cell.

    Rows are y (top to bottom), columns x. The axes' categories are the full hover names (each
    unique), shown as the short `*_labels` ticks, so the hover template reads them per axis: the
    figure carries O(rows + columns) strings and the float32 values (plotly ships them as base64).
    Values are written in the cells when the matrix is small enough to read them (`annotate=None`
    decides by size).
    """
    n_rows, n_cols = matrix.shape
    values = np.asarray(matrix, dtype=np.float32)
    annotate = (n_rows * n_cols <= 144) if annotate is None else annotate
    zmin, zmax = zrange if zrange is not None else (float(values.min()), float(values.max()))
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=list(x_hover),
            y=list(y_hover),
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            hovertemplate=f"<b>%{{y}}</b><br>vs <b>%{{x}}</b><br>{value_name}: %{{z:.3f}}<extra></extra>",
            text=np.round(values, 2) if annotate else None,
            texttemplate="%{text}" if annotate else None,
            colorbar={"title": {"text": value_name, "side": "right"}, "thickness": 12},
        )
    )
    ticks = {"automargin": True, "tickfont": {"size": 10}, "tickmode": "array"}
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.5},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=max(360, min(720, 120 + 26 * n_rows)),
        yaxis={**ticks, "autorange": "reversed", "tickvals": list(y_hover), "ticktext": list(y_labels),
               "showticklabels": n_rows <= 60},
        xaxis={**ticks, "tickangle": -40, "tickvals": list(x_hover), "ticktext": list(x_labels),
               "showticklabels": n_cols <= 60},
    )  # fmt: skip
    return fig


# ----------------------------------------------------------------------------- consistency (SaCo)

WEBGL_POINTS = 2000  # above this many points, scatters draw with WebGL (Scattergl)


def _ordered_heatmap(
    matrix: np.ndarray,
    order: Sequence[int],
    labels: Sequence[str],
    title: str,
    value_name: str,
    zrange: tuple[float, float],
    colorscale: str,
) -> go.Figure:
    """A square heatmap with rows and columns permuted by `order`; hover names both samples.

    Hover reads the axis labels (no per-cell strings), so it stays light for hundreds of samples.
    """
    order = np.asarray(order)
    shown = [labels[i] for i in order]
    fig = go.Figure(
        go.Heatmap(
            z=matrix[np.ix_(order, order)],
            x=shown,
            y=shown,
            zmin=zrange[0],
            zmax=zrange[1],
            colorscale=colorscale,
            hovertemplate=f"<b>%{{y}}</b><br>vs <b>%{{x}}</b><br>{value_name}: %{{z:.3f}}<extra></extra>",
            colorbar={"title": {"text": value_name, "side": "right"}, "thickness": 12},
        )
    )
    n = len(order)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.5},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=max(360, min(720, 120 + 26 * n)),
        yaxis={"autorange": "reversed", "automargin": True, "tickfont": {"size": 10}, "showticklabels": n <= 60},
        xaxis={"automargin": True, "tickangle": -40, "tickfont": {"size": 10}, "showticklabels": n <= 60},
    )
    return fig


def consistency_heatmaps(
    image_image: np.ndarray,
    text_text: np.ndarray,
    order: Sequence[int],
    image_labels: Sequence[str],
    caption_labels: Sequence[str],
) -> tuple[go.Figure, go.Figure]:
    """A_I and A_T side by side: one sample ordering and one colour range, so equal colours mean equal cosines."""
    low = float(min(image_image.min(), text_text.min()))
    high = float(max(image_image.max(), text_text.max()))
    return (
        _ordered_heatmap(image_image, order, image_labels, "Image-image A_I", "cosine", (low, high), SEQUENTIAL),
        _ordered_heatmap(text_text, order, caption_labels, "Text-text A_T", "cosine", (low, high), SEQUENTIAL),
    )


def inconsistency_heatmap(
    difference: np.ndarray, order: Sequence[int], labels: Sequence[str], signed: bool
) -> go.Figure:
    """|A_I - A_T| (sequential colours from 0), or signed A_I - A_T on a diverging scale centred on 0.

    Signed: red where the images are more alike than their captions, blue where less.
    """
    if signed:
        bound = float(np.abs(difference).max()) or 1.0
        return _ordered_heatmap(
            difference, order, labels, "Signed inconsistency A_I − A_T", "A_I − A_T", (-bound, bound), DIVERGING
        )
    return _ordered_heatmap(
        difference, order, labels, "SaCo inconsistency |A_I − A_T|", "|A_I − A_T|",
        (0.0, float(difference.max()) or 1.0), SEQUENTIAL_HOT,
    )  # fmt: skip


def affinity_scatter(
    image_affinity: np.ndarray,
    text_affinity: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    labels: Sequence[str],
    highlight: int = 0,
    title: str = "A_T against A_I, one point per pair of samples",
) -> go.Figure:
    """One point per pair (i, j): x = A_I[i, j], y = A_T[i, j], coloured by |A_I - A_T|.

    Points on the dashed diagonal are consistent. Hover names both samples. The first `highlight`
    points (the caller puts the most inconsistent pairs first) are ringed.
    """
    gap = np.abs(image_affinity - text_affinity)
    hover = [f"<b>{labels[i]}</b><br><b>{labels[j]}</b>" for i, j in zip(first.tolist(), second.tolist())]
    scatter = go.Scattergl if len(image_affinity) > WEBGL_POINTS else go.Scatter
    low = float(min(image_affinity.min(), text_affinity.min()))
    high = float(max(image_affinity.max(), text_affinity.max()))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[low, high], y=[low, high], mode="lines", line={"dash": "dash", "color": "grey"},
            name="A_T = A_I", hoverinfo="skip",
        )
    )  # fmt: skip
    fig.add_trace(
        scatter(
            x=image_affinity,
            y=text_affinity,
            mode="markers",
            name="pairs",
            marker={
                "color": gap,
                "colorscale": SEQUENTIAL_HOT,
                "size": 6,
                "colorbar": {"title": {"text": "|A_I − A_T|"}},
            },
            text=hover,
            hovertemplate="%{text}<br>A_I %{x:.3f} · A_T %{y:.3f}<extra></extra>",
        )
    )
    if highlight:
        fig.add_trace(
            scatter(
                x=image_affinity[:highlight],
                y=text_affinity[:highlight],
                mode="markers",
                name="most inconsistent",
                marker={"size": 12, "color": "rgba(0,0,0,0)", "line": {"color": HIGHLIGHT, "width": 2}},
                text=hover[:highlight],
                hovertemplate="%{text}<br>A_I %{x:.3f} · A_T %{y:.3f}<extra>most inconsistent</extra>",
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.5},
        xaxis_title="A_I = cos(image i, image j)",
        yaxis_title="A_T = cos(caption i, caption j)",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=480,
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


# -------------------------------------------------------------------------------- embedding space


def _wrap(text: str, width: int = 60) -> str:
    """Break a long caption into hover lines of about `width` characters."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "<br>".join([*lines, line])


def embedding_scatter(
    coordinates: np.ndarray,
    names: Sequence[str],
    captions: Sequence[str],
    axis_titles: tuple[str, str],
    title: str,
    highlight: Sequence[int] = (),
) -> go.Figure:
    """Images and captions of N pairs in 2-D, coloured by modality, each image joined to its caption.

    `coordinates` is (2N, 2): the N images, then the N captions. Hover shows the image's name and
    caption, or the caption. Box and lasso selection are on the mode bar; `highlight` rings the
    listed pairs. Scattergl draws above WEBGL_POINTS points.
    """
    n = len(names)
    images, texts = coordinates[:n], coordinates[n:]
    scatter = go.Scattergl if 2 * n > WEBGL_POINTS else go.Scatter
    # One line trace for all pairs: segments separated by None (gaps).
    line_x = np.column_stack([images[:, 0], texts[:, 0], np.full(n, np.nan)]).ravel()
    line_y = np.column_stack([images[:, 1], texts[:, 1], np.full(n, np.nan)]).ravel()
    wrapped = [_wrap(c) for c in captions]
    fig = go.Figure()
    fig.add_trace(
        scatter(
            x=line_x, y=line_y, mode="lines", line={"color": "rgba(120,120,120,0.35)", "width": 1},
            name="image ↔ caption", hoverinfo="skip",
        )
    )  # fmt: skip
    hovers = {
        "images": [f"<b>image {i + 1}: {name}</b><br>{c}" for i, (name, c) in enumerate(zip(names, wrapped))],
        "captions": [f"<b>caption {i + 1}</b> ({name})<br>{c}" for i, (name, c) in enumerate(zip(names, wrapped))],
    }
    for trace, points, colour, symbol in (
        ("images", images, IMAGE_COLOUR, "circle"),
        ("captions", texts, CAPTION_COLOUR, "diamond"),
    ):
        fig.add_trace(
            scatter(
                x=points[:, 0], y=points[:, 1], mode="markers", name=trace,
                marker={"color": colour, "size": 8, "symbol": symbol},
                text=hovers[trace], hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    if len(highlight):
        picked = np.asarray(highlight)
        both = np.concatenate([images[picked], texts[picked]])
        fig.add_trace(
            scatter(
                x=both[:, 0],
                y=both[:, 1],
                mode="markers",
                name="picked",
                marker={"size": 16, "color": "rgba(0,0,0,0)", "line": {"color": HIGHLIGHT, "width": 2}},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.5},
        xaxis_title=axis_titles[0],
        yaxis_title=axis_titles[1],
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=560,
        dragmode="lasso",
        clickmode="event+select",
        legend={"orientation": "h", "y": -0.12},
        modebar_add=["lasso2d", "select2d"],
    )
    return fig


# --- Grounding: token-to-patch maps over the image (vlviz.grounding.sparc) --------------------------------

# Inferno-like, transparent at the low end: where a map is near its minimum the image shows through.
OVERLAY_COLORSCALE = [
    [0.0, "rgba(0, 0, 4, 0)"],
    [0.2, "rgba(87, 16, 110, 0.35)"],
    [0.45, "rgba(188, 55, 84, 0.7)"],
    [0.7, "rgba(249, 142, 9, 0.9)"],
    [1.0, "rgba(252, 255, 164, 1)"],
]


def display_image(image: np.ndarray, side: int) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to `side` pixels a side for display: enlarged with crisp pixels (scenes
    are 64 px), reduced smoothly."""
    if image.shape[0] == image.shape[1] == side:
        return image
    resample = Image.Resampling.NEAREST if side >= max(image.shape[:2]) else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((side, side), resample))


def _png_data_uri(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a PNG data URI, which plotly's go.Image draws without a pixel array."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _map_range(values: np.ndarray) -> tuple[float, float]:
    """Colour range of a map: from 0 for non-negative maps (weights), else its own minimum (cosines)."""
    low = min(0.0, float(values.min()))
    return low, max(float(values.max()), low + 1e-6)


def _overlay_traces(
    image: np.ndarray, grid_map: np.ndarray, opacity: float, zrange: tuple[float, float], value_name: str, scale: bool
) -> list:
    """The image and, over it, a semi-transparent heatmap of a (rows, cols) patch map.

    Each patch value sits at its patch's centre in image pixels; plotly's ``zsmooth="best"``
    interpolates bilinearly between the centres, so the map reads as a smooth image at any size.
    """
    height, width = image.shape[:2]
    rows, cols = grid_map.shape
    patch = np.array([[f"patch row {r}, column {c}" for c in range(cols)] for r in range(rows)])
    return [
        go.Image(source=_png_data_uri(image), hoverinfo="skip"),
        go.Heatmap(
            z=grid_map,
            x=(np.arange(cols) + 0.5) * width / cols - 0.5,
            y=(np.arange(rows) + 0.5) * height / rows - 0.5,
            zsmooth="best",
            zmin=zrange[0],
            zmax=zrange[1],
            opacity=opacity,
            colorscale=OVERLAY_COLORSCALE,
            showscale=scale,
            colorbar={"title": {"text": value_name, "side": "right"}, "thickness": 12},
            text=patch,
            hovertemplate=f"%{{text}}<br>{value_name}: %{{z:.4f}}<extra></extra>",
        ),
    ]


def _image_axes(fig: go.Figure, height: int, width: int) -> None:
    """Hide the axes and keep pixels square, with row 0 at the top, in every subplot."""
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], constrain="domain")
    fig.for_each_yaxis(lambda axis: axis.update(scaleanchor=axis.anchor or "x"))


def grounding_overlay(
    image: np.ndarray,
    grid_map: np.ndarray,
    title: str,
    opacity: float = 0.7,
    value_name: str = "weight",
    zrange: tuple[float, float] | None = None,
) -> go.Figure:
    """One word's (rows, cols) patch map as a smooth heatmap over the (H, W, 3) uint8 image the grid covers."""
    fig = go.Figure(_overlay_traces(image, grid_map, opacity, zrange or _map_range(grid_map), value_name, scale=True))
    _image_axes(fig, *image.shape[:2])
    fig.update_layout(
        template=TEMPLATE, title={"text": title, "x": 0.5}, margin={"l": 10, "r": 10, "t": 50, "b": 10}, height=460
    )
    return fig


def grounding_grid(
    image: np.ndarray,
    maps: np.ndarray,
    words: Sequence[str],
    opacity: float = 0.7,
    columns: int = 6,
    title: str = "Every word (each map on its own colour range)",
) -> go.Figure:
    """Small overlays, one per word (or per map method of one word, `words` then naming them): `maps`
    (W, rows, cols) over the (H, W, 3) image, each on its own colour range."""
    rows = max(1, -(-len(words) // columns))
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=list(words),
        horizontal_spacing=0.01,
        vertical_spacing=min(0.25 / rows, 0.06),
    )
    for i, word_map in enumerate(maps):  # one small overlay per word of one caption: display only
        for trace in _overlay_traces(image, word_map, opacity, _map_range(word_map), "value", scale=False):
            fig.add_trace(trace, row=i // columns + 1, col=i % columns + 1)
    _image_axes(fig, *image.shape[:2])
    fig.update_annotations(font_size=11)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.5},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        height=70 + 130 * rows,
        showlegend=False,
    )
    return fig


def token_patch_matrix(
    matrix: np.ndarray, tokens: Sequence[str], grid_size: tuple[int, int], title: str, value_name: str = "weight"
) -> go.Figure:
    """The (T, P) token x patch map as a heatmap; patches are named by their grid row and column."""
    columns = grid_size[1]
    patch_labels = [f"r{p // columns}c{p % columns}" for p in range(matrix.shape[1])]
    patch_hover = [f"patch row {p // columns}, column {p % columns}" for p in range(matrix.shape[1])]
    token_labels = [f"{t + 1}. {token}" for t, token in enumerate(tokens)]
    token_hover = [f"token {t + 1} '{token}'" for t, token in enumerate(tokens)]
    return heatmap(
        matrix, patch_labels, token_labels, patch_hover, token_hover, title, value_name,
        zrange=_map_range(matrix), colorscale=SEQUENTIAL_HOT, annotate=False,
    )  # fmt: skip


def training_curves(records: Sequence[dict], keys: Sequence[str], title: str, y_title: str = "") -> go.Figure:
    """Lines of `keys` against `step` from a run's records; records missing a key are skipped for it."""
    fig = go.Figure()
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            fig.add_trace(
                go.Scatter(x=steps, y=values, mode="lines+markers" if len(points) < 40 else "lines", name=key)
            )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.5},
        xaxis_title="step",
        yaxis_title=y_title,
        height=320,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def compare_runs(runs: Sequence[dict], key: str) -> go.Figure:
    """One line per run (each a dict with `name` and `records`) for the figure `key`."""
    fig = go.Figure()
    for run in runs:
        points = [(r["step"], r[key]) for r in run["records"] if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=run["name"]))
    fig.update_layout(
        template=TEMPLATE,
        title={"text": f"{key} by run", "x": 0.5},
        xaxis_title="step",
        height=320,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
