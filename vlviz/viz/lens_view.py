"""The before/after lens drawn: two encodings of the same pairs in, figures and a table out.

Per-pair arrows in one shared 2-D frame, the pairs that moved most, and after-minus-before heatmaps of
image-text affinity, SaCo inconsistency and one caption's word maps (`vlviz.compare.lens` computes them all).
No gradio, no model calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from vlviz.compare.lens import (
    PairMovement,
    affinity_difference,
    grounding_difference,
    inconsistency_difference,
    pair_movement,
    shared_layout,
)
from vlviz.grounding.maps import caption_maps
from vlviz.metrics.affinity import recall_at_k
from vlviz.models.encoding import PairEncoding
from vlviz.viz.figures import heatmap, short_labels
from vlviz.viz.style import DIVERGING, TEMPLATE

LENS_PAIRS = 100  # pairs in the difference heatmaps and arrows; with more, the ones that moved most
MOVED_ROWS = 10  # rows of the moved-most table


@dataclass(frozen=True)
class LensView:
    """What changed between `labels[0]` and `labels[1]` on the same pairs."""

    movement: go.Figure  # arrows from each image and caption's place before to its place after
    affinity_difference: go.Figure  # after − before of the image-text cosines
    inconsistency_difference: go.Figure  # after − before of |A_I − A_T|
    grounding_difference: go.Figure | None  # after − before of one caption's word maps; None without patch tokens
    moved_most: pd.DataFrame  # the pairs whose ranks changed most
    summary: dict[str, float]  # R@1 both ways, mean own cosine, mean inconsistency: before and after
    notes: list[str]  # what the figures leave out or assume


def movement_summary(movement: PairMovement) -> dict[str, float]:
    """R@1 both ways, the mean own cosine and SaCo's mean inconsistency, before and after."""
    out = {}
    for row, when in enumerate(("before", "after")):
        out[f"image_to_text_r1_{when}"] = recall_at_k(movement.image_to_text_rank[row])
        out[f"text_to_image_r1_{when}"] = recall_at_k(movement.text_to_image_rank[row])
        out[f"mean_own_cosine_{when}"] = float(movement.own_similarity[row].mean())
        out[f"mean_inconsistency_{when}"] = float(movement.inconsistency[row].mean())
    return out


def moved_most_table(movement: PairMovement, names: Sequence[str], captions: Sequence[str], k: int) -> pd.DataFrame:
    """The k pairs that moved most: ranks both ways and own cosine, before → after (rank 1 = its partner first)."""
    rows = movement.moved_most(k).tolist()
    ranks_i, ranks_t, own = movement.image_to_text_rank, movement.text_to_image_rank, movement.own_similarity
    return pd.DataFrame(
        {
            "pair": [i + 1 for i in rows],
            "image": [names[i] for i in rows],
            "caption": [captions[i] for i in rows],
            "image→text rank": [f"{ranks_i[0, i]} → {ranks_i[1, i]}" for i in rows],
            "text→image rank": [f"{ranks_t[0, i]} → {ranks_t[1, i]}" for i in rows],
            "own cosine": [f"{own[0, i]:.3f} → {own[1, i]:.3f}" for i in rows],
            "inconsistency": [f"{movement.inconsistency[0, i]:.3f} → {movement.inconsistency[1, i]:.3f}" for i in rows],
        }
    )


def movement_figure(
    layout: np.ndarray, shown: Sequence[int], names: Sequence[str], captions: Sequence[str], labels: Sequence[str]
) -> go.Figure:
    """Arrows from before to after for the `shown` pairs' images and captions in one frame, (2, 2, N, 2) layout."""
    fig = go.Figure()
    for side, (kind, texts, symbol) in enumerate((("image", names, "circle"), ("caption", captions, "diamond"))):
        before, after = layout[0, side, shown], layout[1, side, shown]
        segments = np.full((len(shown) * 3, 2), np.nan, dtype=np.float32)  # x0, x1, gap: one trace for all arrows
        segments[0::3], segments[1::3] = before, after
        hover = [f"{kind} {i + 1}: {texts[i]}" for i in shown]
        fig.add_trace(go.Scatter(x=segments[:, 0], y=segments[:, 1], mode="lines", hoverinfo="skip",
                                 line={"width": 1}, opacity=0.5, name=f"{kind}s moved", legendgroup=kind))  # fmt: skip
        fig.add_trace(go.Scatter(x=before[:, 0], y=before[:, 1], mode="markers", name=f"{kind}s, {labels[0]}",
                                 marker={"symbol": f"{symbol}-open", "size": 7}, text=hover, legendgroup=kind,
                                 hovertemplate="%{text}<extra>" + labels[0] + "</extra>"))  # fmt: skip
        fig.add_trace(go.Scatter(x=after[:, 0], y=after[:, 1], mode="markers", name=f"{kind}s, {labels[1]}",
                                 marker={"symbol": symbol, "size": 8}, text=hover, legendgroup=kind,
                                 hovertemplate="%{text}<extra>" + labels[1] + "</extra>"))  # fmt: skip
    fig.update_layout(
        template=TEMPLATE,
        title={"text": f"Each pair from {labels[0]} (open) to {labels[1]} (filled), one PCA of both", "x": 0.5},
        xaxis={"title": "PC 1", "zeroline": False},
        yaxis={"title": "PC 2", "zeroline": False, "scaleanchor": "x"},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=520,
    )
    return fig


def difference_heatmap(
    matrix: np.ndarray,
    shown: Sequence[int],
    rows: tuple[str, Sequence[str]],
    columns: tuple[str, Sequence[str]],
    title: str,
    value: str,
) -> go.Figure:
    """A signed after − before matrix of the `shown` pairs on a diverging scale centred on 0.

    `rows` and `columns` are (kind, texts), e.g. ("image", names) and ("caption", captions).
    """
    bound = float(np.abs(matrix).max()) or 1.0
    (row_kind, row_texts), (column_kind, column_texts) = rows, columns
    return heatmap(
        matrix, short_labels([column_texts[i] for i in shown], numbers=shown),
        short_labels([row_texts[i] for i in shown], numbers=shown),
        [f"{column_kind} {i + 1}: {column_texts[i]}" for i in shown],
        [f"{row_kind} {i + 1}: {row_texts[i]}" for i in shown], title, value, zrange=(-bound, bound),
        colorscale=DIVERGING,
    )  # fmt: skip


def grounding_difference_figure(
    difference: np.ndarray, words: Sequence[str], title: str, columns: int = 6
) -> go.Figure:
    """One signed map per word, (W, rows, cols), all on one symmetric range: where its weight went (red) and left."""
    bound = float(np.abs(difference).max()) or 1.0
    rows = max(1, -(-len(words) // columns))
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(words), horizontal_spacing=0.01,
                        vertical_spacing=min(0.25 / rows, 0.06))  # fmt: skip
    for i, word_map in enumerate(difference):
        fig.add_trace(
            go.Heatmap(z=word_map, zmin=-bound, zmax=bound, zmid=0, colorscale=DIVERGING, showscale=i == 0,
                       colorbar={"title": {"text": "Δ weight", "side": "right"}, "thickness": 12},
                       hovertemplate=f"{words[i]}: Δ %{{z:.3f}}<extra></extra>"),
            row=i // columns + 1, col=i % columns + 1,
        )  # fmt: skip
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x")
    fig.update_annotations(font_size=11)
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.5}, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      height=70 + 130 * rows)  # fmt: skip
    return fig


def lens_view(
    before: PairEncoding,
    after: PairEncoding,
    names: Sequence[str],
    captions: Sequence[str],
    labels: Sequence[str] = ("start", "trained"),
    pair: int = 0,
) -> LensView:
    """Every lens figure of two encodings of the same pairs; `pair` is the caption whose word maps are compared."""
    if before.image_features.shape[1] != after.image_features.shape[1]:
        raise ValueError("the two models have different joint dimensions: there is no shared frame to compare in")
    features = [(e.image_features.float().cpu(), e.text_features.float().cpu()) for e in (before, after)]
    movement = pair_movement(*features)
    n = len(names)
    notes = []
    if n > LENS_PAIRS:
        shown = sorted(movement.moved_most(LENS_PAIRS).tolist())
        notes.append(f"The arrows and heatmaps show the {LENS_PAIRS} of {n} pairs whose ranks changed most.")
    else:
        shown = list(range(n))
    layout = shared_layout(*features).numpy()
    index = torch.tensor(shown)
    affinity_change = affinity_difference(*features)[index][:, index].numpy()
    inconsistency_change = inconsistency_difference(*features)[index][:, index].numpy()
    arrow = f"{labels[1]} − {labels[0]}"
    grounding = None
    try:
        maps = [caption_maps(encoding, row=pair) for encoding in (before, after)]
        change = grounding_difference(maps[0].word_maps, maps[1].word_maps).numpy()
        grounding = grounding_difference_figure(change, maps[1].words, f"Pair {pair + 1}: SPARC word weights, {arrow}")
    except ValueError as error:  # towers without patch tokens, or two grids
        notes.append(f"No grounding difference: {error}")
    return LensView(
        movement=movement_figure(layout, shown, names, captions, labels),
        affinity_difference=difference_heatmap(
            affinity_change, shown, ("image", names), ("caption", captions), f"Image-text cosine, {arrow}", "Δ cosine"
        ),
        inconsistency_difference=difference_heatmap(
            inconsistency_change,
            shown,
            ("pair", names),
            ("pair", names),
            f"SaCo |A_I − A_T|, {arrow} (blue: more consistent)",
            "Δ |A_I − A_T|",
        ),
        grounding_difference=grounding,
        moved_most=moved_most_table(movement, names, captions, MOVED_ROWS),
        summary=movement_summary(movement),
        notes=notes,
    )


def wise_ft_figure(path: Sequence[dict[str, float]], reference: str) -> go.Figure:
    """R@1 on the target pairs and on the reference set, and retention, along WiSE-FT's alpha (`wise_ft_path`)."""
    alphas = [row["alpha"] for row in path]
    fig = go.Figure()
    for key, name in (("target_r1", "R@1, the analysed pairs"), ("reference_r1", f"R@1, {reference}"),
                      ("retention", f"retention ({reference} R@1 / the start model's)")):  # fmt: skip
        fig.add_trace(go.Scatter(x=alphas, y=[row[key] for row in path], mode="lines+markers", name=name))
    fig.update_layout(
        template=TEMPLATE,
        title={"text": "Along WiSE-FT's line: θ = (1 − α) θ_start + α θ_trained", "x": 0.5},
        xaxis={"title": "α (0: start model, 1: trained model)", "range": [-0.02, 1.02]},
        yaxis={"title": "mean R@1 of both directions; retention"},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        height=380,
    )
    return fig
