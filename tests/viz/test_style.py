"""One print-friendly style: every figure function draws with the "vlviz" template, and its colour scales keep
their order in greyscale (sequential) or are colour-blind safe (diverging)."""

from __future__ import annotations

import re
from itertools import pairwise

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.colors import hex_to_rgb

from vlviz.viz.figures import (
    OVERLAY_COLORSCALE,
    affinity_scatter,
    compare_runs,
    consistency_heatmaps,
    embedding_scatter,
    grounding_grid,
    grounding_overlay,
    heatmap,
    inconsistency_heatmap,
    token_patch_matrix,
    training_curves,
)
from vlviz.viz.style import DIVERGING, OKABE_ITO, SEQUENTIAL, SEQUENTIAL_HOT, TEMPLATE

MATRIX = np.array([[1.0, 0.2, -0.4], [0.2, 1.0, 0.1], [-0.4, 0.1, 1.0]])
LABELS = ["1. a", "2. b", "3. c"]
IMAGE = np.zeros((12, 12, 3), dtype=np.uint8)
RECORDS = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]

FIGURES = {
    "heatmap": lambda: heatmap(MATRIX, LABELS, LABELS, LABELS, LABELS, "t", "cosine"),
    "consistency": lambda: consistency_heatmaps(MATRIX, MATRIX, [0, 1, 2], LABELS, LABELS)[0],
    "signed": lambda: inconsistency_heatmap(MATRIX, [0, 1, 2], LABELS, signed=True),
    "absolute": lambda: inconsistency_heatmap(np.abs(MATRIX), [0, 1, 2], LABELS, signed=False),
    "scatter": lambda: affinity_scatter(MATRIX[0], MATRIX[1], np.zeros(3, int), np.ones(3, int), LABELS, highlight=1),
    "embedding": lambda: embedding_scatter(np.eye(4, 2), ["a", "b"], ["x", "y"], ("x", "y"), "t", highlight=[0]),
    "overlay": lambda: grounding_overlay(IMAGE, np.eye(2), "t"),
    "grid": lambda: grounding_grid(IMAGE, np.stack([np.eye(2)] * 3), ["a", "b", "c"]),
    "tokens": lambda: token_patch_matrix(np.abs(MATRIX), ["a", "b", "c"], (1, 3), "t"),
    "curves": lambda: training_curves(RECORDS, ["loss"], "t"),
    "runs": lambda: compare_runs([{"name": "a", "records": RECORDS}], "loss"),
}


def luminance(colour: str) -> float:
    """Relative luminance (WCAG) of '#rrggbb' or 'rgb(...)'/'rgba(...)': what greyscale print keeps."""
    red, green, blue = hex_to_rgb(colour) if colour.startswith("#") else [float(v) for v in re.findall(r"[\d.]+", colour)[:3]]  # fmt: skip
    linear = [v / 255 / 12.92 if v / 255 <= 0.04045 else ((v / 255 + 0.055) / 1.055) ** 2.4 for v in (red, green, blue)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def rising(values: list[float]) -> bool:
    return all(a < b for a, b in pairwise(values))


def scale(name: str) -> tuple:
    return go.Heatmap(colorscale=name).colorscale


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_draws_with_the_vlviz_template(name: str) -> None:
    figure = FIGURES[name]()
    assert figure.layout.template.to_plotly_json() == pio.templates[TEMPLATE].to_plotly_json()
    allowed = [scale(SEQUENTIAL), scale(SEQUENTIAL_HOT), scale(DIVERGING), tuple(map(tuple, OVERLAY_COLORSCALE))]
    for trace in figure.data:
        used = (
            trace.colorscale if trace.type == "heatmap" else getattr(trace, "marker", None) and trace.marker.colorscale
        )
        assert used is None or tuple(map(tuple, used)) in allowed, (name, trace.type)


def test_the_template_is_white_with_one_font_and_a_colour_blind_safe_palette() -> None:
    layout = pio.templates[TEMPLATE].layout
    assert layout.paper_bgcolor == layout.plot_bgcolor == "white"
    assert layout.font.family.startswith("Arial") and layout.font.size >= 12
    assert layout.colorway == OKABE_ITO


@pytest.mark.parametrize("name", [SEQUENTIAL, SEQUENTIAL_HOT])
def test_sequential_scales_grow_lighter_so_greyscale_keeps_their_order(name: str) -> None:
    lightness = [luminance(colour) for _, colour in scale(name)]
    assert rising(lightness) and rising([luminance(colour) for _, colour in OVERLAY_COLORSCALE])


def test_the_diverging_scale_is_colorbrewer_rdbu_light_at_zero_and_dark_at_both_ends() -> None:
    assert DIVERGING == "RdBu_r"  # ColorBrewer marks RdBu colour-blind safe
    lightness = [luminance(colour) for _, colour in scale(DIVERGING)]
    middle = len(lightness) // 2
    assert rising(lightness[: middle + 1]) and rising(lightness[middle:][::-1])
