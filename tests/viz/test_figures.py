"""The consistency and embedding-space figures: pure data in, the expected plotly traces out."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from vlviz.viz.figures import (
    WEBGL_POINTS,
    affinity_scatter,
    consistency_heatmaps,
    embedding_scatter,
    inconsistency_heatmap,
)

LABELS = ["1. a", "2. b", "3. c"]


def test_heatmaps_share_one_ordering_and_one_colour_range() -> None:
    image_image = np.array([[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]])
    text_text = np.array([[1.0, -0.3, 0.4], [-0.3, 1.0, 0.0], [0.4, 0.0, 1.0]])
    order = [2, 0, 1]
    left, right = consistency_heatmaps(image_image, text_text, order, LABELS, ["x", "y", "z"])
    assert np.array_equal(left.data[0].z, image_image[np.ix_(order, order)])
    assert list(left.data[0].x) == ["3. c", "1. a", "2. b"] and list(right.data[0].y) == ["z", "x", "y"]
    assert (left.data[0].zmin, left.data[0].zmax) == (right.data[0].zmin, right.data[0].zmax) == (-0.3, 1.0)
    assert "%{y}" in left.data[0].hovertemplate and "%{x}" in left.data[0].hovertemplate


def test_signed_inconsistency_is_diverging_around_zero() -> None:
    difference = np.array([[0.0, 0.4, -0.1], [0.4, 0.0, -0.7], [-0.1, -0.7, 0.0]])
    signed = inconsistency_heatmap(difference, [0, 1, 2], LABELS, signed=True).data[0]
    assert (signed.zmin, signed.zmax) == (-0.7, 0.7)
    assert signed.colorscale == go.Heatmap(colorscale="RdBu_r").colorscale
    absolute = inconsistency_heatmap(np.abs(difference), [0, 1, 2], LABELS, signed=False).data[0]
    assert (absolute.zmin, absolute.zmax) == (0.0, 0.7)


def test_affinity_scatter_names_both_samples_and_rings_the_top_pairs() -> None:
    x, y = np.array([0.9, 0.1, 0.5]), np.array([0.1, 0.2, 0.5])
    fig = affinity_scatter(x, y, np.array([0, 0, 1]), np.array([1, 2, 2]), LABELS, highlight=1)
    diagonal, points, ringed = fig.data
    assert diagonal.mode == "lines" and list(diagonal.x) == list(diagonal.y)
    assert points.type == "scatter" and list(points.marker.color) == [0.8, 0.1, 0.0]
    assert "1. a" in points.text[0] and "2. b" in points.text[0]
    assert list(ringed.x) == [0.9] and ringed.name == "most inconsistent"
    many = WEBGL_POINTS + 1
    big = affinity_scatter(np.zeros(many), np.zeros(many), np.zeros(many, int), np.ones(many, int), LABELS)
    assert big.data[1].type == "scattergl"


def test_embedding_scatter_joins_each_image_to_its_caption() -> None:
    coordinates = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 2 images, then 2 captions
    fig = embedding_scatter(coordinates, ["a.png", "b.png"], ["red", "blue"], ("x", "y"), "t", highlight=[1])
    lines, images, captions, picked = fig.data
    assert [trace.name for trace in fig.data] == ["image ↔ caption", "images", "captions", "picked"]
    assert list(lines.x[:2]) == [0.0, 0.0] and list(lines.y[:2]) == [0.0, 1.0] and np.isnan(lines.x[2])
    assert "a.png" in images.text[0] and "red" in images.text[0] and "blue" in captions.text[1]
    assert list(picked.x) == [1.0, 1.0] and list(picked.y) == [0.0, 1.0]
    assert fig.layout.dragmode == "lasso" and images.type == "scatter"
    n = WEBGL_POINTS // 2 + 1
    big = embedding_scatter(np.zeros((2 * n, 2)), ["i"] * n, ["c"] * n, ("x", "y"), "t")
    assert {trace.type for trace in big.data} == {"scattergl"}
