"""The Consistency and Embedding-space views built from embeddings: figures, tables and HTML.

Shared by the app's tabs and the command-line report, so both show the same thing. No gradio, no
model calls: embeddings, names and captions in; plotly figures, pandas tables and HTML out.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.offline import get_plotlyjs

from vlviz.consistency import (
    DEFAULT_TEMPERATURE,
    ConsistencyFigures,
    ConsistencySummary,
    InconsistentPairs,
    cluster_order,
    consistency_summary,
    in_modal_affinities,
    pair_affinities,
    sample_pairs,
)
from vlviz.embedding_space import EmbeddingLayout, close_modality_gap, fit_layout, gap_report
from vlviz.figures import affinity_scatter, consistency_heatmaps, embedding_scatter, inconsistency_heatmap, short_labels

SCATTER_PAIRS = 10_000  # pairs drawn in the A_T-vs-A_I scatter; more are sampled (seeded)
THUMBNAIL_SIDE = 128


# ---------------------------------------------------------------------------------- consistency


@dataclass(frozen=True)
class ConsistencyView:
    """Everything the Consistency view shows for N pairs."""

    image_heatmap: go.Figure  # A_I
    text_heatmap: go.Figure  # A_T
    inconsistency_heatmap: go.Figure  # |A_I - A_T| or A_I - A_T
    scatter: go.Figure  # A_T against A_I, one point per pair of samples
    summary: ConsistencySummary  # global figures, per-sample scores, top-k pairs: over all N
    shown: list[int]  # samples in the heatmaps, in heatmap order
    notes: list[str]


def consistency_view(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    names: Sequence[str],
    captions: Sequence[str],
    k: int = 10,
    temperature: float = DEFAULT_TEMPERATURE,
    clustered: bool = True,
    signed: bool = False,
    max_heatmap: int | None = None,
    seed: int = 0,
) -> ConsistencyView:
    """Compute the Consistency view: figures over all N pairs, heatmaps over at most `max_heatmap`.

    The summary is the chunked pass (`consistency_summary`), so N may be large; the heatmaps show
    a seeded random subset of `max_heatmap` samples when N is larger (None: all), ordered by
    `cluster_order` when `clustered`. The scatter shows the top-k pairs ringed plus up to
    SCATTER_PAIRS others.
    """
    n = image_features.shape[0]
    notes = []
    summary = consistency_summary(image_features, text_features, k=k, temperature=temperature, seed=seed)
    shown = torch.arange(n)
    if max_heatmap is not None and n > max_heatmap:
        generator = torch.Generator().manual_seed(seed)
        shown = torch.randperm(n, generator=generator)[:max_heatmap].sort().values
        notes.append(f"The heatmaps show a random {max_heatmap} of the {n} samples; every figure counts all.")
    if not summary.figures.spearman_exact:
        notes.append(
            f"Spearman's rho is computed on a seeded random sample of {summary.figures.spearman_pairs:,} of the "
            f"{n * (n - 1) // 2:,} pairs; the other figures are exact."
        )
    image_image, text_text = in_modal_affinities(image_features[shown], text_features[shown])  # (S, S)
    image_image, text_text = image_image.cpu(), text_text.cpu()
    order = cluster_order(image_image, text_text) if clustered else torch.arange(len(shown))
    all_caption_labels = short_labels(captions)
    image_labels = [f"{i + 1}. {names[i]}" for i in shown.tolist()]
    caption_labels = [all_caption_labels[i] for i in shown.tolist()]
    image_heatmap, text_heatmap = consistency_heatmaps(
        image_image.numpy(), text_text.numpy(), order.tolist(), image_labels, caption_labels
    )
    difference = (image_image - text_text).numpy()
    inconsistency = inconsistency_heatmap(
        difference if signed else np.abs(difference), order.tolist(), image_labels, signed
    )
    scatter = _pair_scatter(image_features, text_features, names, captions, summary.top_pairs, seed)
    return ConsistencyView(
        image_heatmap=image_heatmap,
        text_heatmap=text_heatmap,
        inconsistency_heatmap=inconsistency,
        scatter=scatter,
        summary=summary,
        shown=shown[order].tolist(),
        notes=notes,
    )


def _pair_scatter(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    names: Sequence[str],
    captions: Sequence[str],
    top: InconsistentPairs,
    seed: int,
) -> go.Figure:
    """The A_T-vs-A_I scatter: the top pairs first (ringed), then sampled others without repeats."""
    n = image_features.shape[0]
    sampled = sample_pairs(n, SCATTER_PAIRS, seed).to(top.first.device)
    in_top = torch.isin(sampled[0] * n + sampled[1], top.first * n + top.second)
    pairs = torch.cat([torch.stack([top.first, top.second]), sampled[:, ~in_top]], dim=1)  # (2, M)
    x, y = pair_affinities(image_features, text_features, pairs)
    labels = [f"{i + 1}. {name}: {_cut(caption, 60)}" for i, (name, caption) in enumerate(zip(names, captions))]
    shown = pairs.shape[1]
    total = n * (n - 1) // 2
    title = "A_T against A_I, one point per pair of samples"
    if shown < total:
        title += f" ({shown:,} of {total:,} pairs)"
    first, second = pairs.cpu().numpy()
    return affinity_scatter(
        x.cpu().numpy(), y.cpu().numpy(), first, second, labels, highlight=top.first.numel(), title=title
    )


def consistency_table(figures: ConsistencyFigures) -> pd.DataFrame:
    """The global figures as a small table: figure, value, what it says."""
    spearman = "Spearman ρ(A_I, A_T)"
    if not figures.spearman_exact:
        spearman += f" (on {figures.spearman_pairs:,} sampled pairs)"
    rows = [
        ("pairs N", f"{figures.pairs}", "image-caption pairs compared"),
        ("mean |A_I − A_T|", _number(figures.mean_abs_inconsistency), "SaCo inconsistency over i ≠ j (0 = consistent)"),
        ("Pearson r(A_I, A_T)", _number(figures.pearson), "linear agreement of the two affinities (1 = perfect)"),
        (spearman, _number(figures.spearman), "agreement of their orderings (1 = same ranking)"),
        (
            f"symmetric KL, τ = {figures.temperature:g}",
            _number(figures.symmetric_kl),
            "KL(p‖q) + KL(q‖p) of row softmaxes over j ≠ i, mean over rows",
        ),
    ]
    return pd.DataFrame(rows, columns=["figure", "value", "meaning"])


def top_pairs_table(top: InconsistentPairs, names: Sequence[str], captions: Sequence[str]) -> pd.DataFrame:
    """The most inconsistent pairs, one row each, most inconsistent first."""
    rows = []
    for rank, (i, j, a_i, a_t) in enumerate(
        zip(top.first.tolist(), top.second.tolist(), top.image_affinity.tolist(), top.text_affinity.tolist()), 1
    ):
        rows.append(
            {
                "rank": rank,
                "i": i + 1,
                "image i": names[i],
                "caption i": captions[i],
                "j": j + 1,
                "image j": names[j],
                "caption j": captions[j],
                "A_I": round(a_i, 4),
                "A_T": round(a_t, 4),
                "|A_I − A_T|": round(abs(a_i - a_t), 4),
            }
        )
    return pd.DataFrame(rows)


def top_pairs_html(
    top: InconsistentPairs, images: Sequence[Image.Image], names: Sequence[str], captions: Sequence[str]
) -> str:
    """The most inconsistent pairs as cards: both images, both captions, A_I, A_T (self-contained HTML)."""
    cards = []
    for rank, (i, j, a_i, a_t) in enumerate(
        zip(top.first.tolist(), top.second.tolist(), top.image_affinity.tolist(), top.text_affinity.tolist()), 1
    ):
        sides = "".join(
            f'<figure style="margin:0;width:{THUMBNAIL_SIDE}px">'
            f'<img src="{thumbnail_uri(images[s])}" alt="{html.escape(names[s])}" '
            f'style="width:{THUMBNAIL_SIDE}px;height:{THUMBNAIL_SIDE}px;object-fit:contain;background:#222">'
            f'<figcaption style="font-size:12px"><b>{s + 1}. {html.escape(names[s])}</b><br>'
            f"{html.escape(captions[s])}</figcaption></figure>"
            for s in (i, j)
        )
        more = "images more alike than captions" if a_i > a_t else "captions more alike than images"
        cards.append(
            '<div class="saco-pair" style="border:1px solid #8884;border-radius:8px;padding:8px;'
            'display:flex;flex-direction:column;gap:6px">'
            f'<div style="font-size:13px"><b>#{rank}</b> · A_I {a_i:.3f} · A_T {a_t:.3f} · '
            f"|Δ| {abs(a_i - a_t):.3f}<br><i>{more}</i></div>"
            f'<div style="display:flex;gap:8px">{sides}</div></div>'
        )
    return f'<div class="saco-pairs" style="display:flex;flex-wrap:wrap;gap:10px">{"".join(cards)}</div>'


def thumbnail_uri(image: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """A small JPEG of the image as a data: URI, for self-contained HTML."""
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ embedding space


@dataclass(frozen=True)
class EmbeddingView:
    """The Embedding-space view: the plot, its layout and coordinates, and the gap figures."""

    figure: go.Figure
    layout: EmbeddingLayout
    coordinates: torch.Tensor  # (2N, 2) as drawn: images, then captions
    gap: dict[str, dict[str, float | None]]  # gap_report: "before" / "after" closing the gap
    title: str


def embedding_view(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    names: Sequence[str],
    captions: Sequence[str],
    method: str = "umap",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
    close_gap: bool = False,
    layout: EmbeddingLayout | None = None,
) -> EmbeddingView:
    """Lay images and captions out in 2-D (fit, or `transform` into a kept `layout`) and draw them.

    With `close_gap` the modality gap is removed before the layout sees the points (see
    `close_modality_gap`). The gap figures always compare the embeddings as trained with the
    gap closed.
    """
    points = close_modality_gap(image_features, text_features) if close_gap else (image_features, text_features)
    kept = layout is not None
    if layout is None:
        layout = fit_layout(
            *points, method=method, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, seed=seed
        )
        coordinates = layout.coordinates
    else:
        coordinates = layout.transform(*points)
    n = len(names)
    title = f"{layout.method.upper()} of {n} images and {n} captions"
    title += ", modality gap closed" if close_gap else ""
    title += " (kept layout)" if kept else ""
    figure = embedding_scatter(coordinates.numpy(), names, captions, layout.axis_titles, title)
    return EmbeddingView(figure, layout, coordinates, gap_report(image_features, text_features), title)


def gap_table(report: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """The modality gap and alignment figures before and after closing the gap."""
    rows = {
        "gap": ("modality gap ‖Δ‖", "‖mean image − mean caption‖ (Liang et al. 2022)"),
        "matched_cosine": ("matched cosine", "mean cos(image i, caption i)"),
        "unmatched_cosine": ("unmatched cosine", "mean cos(image i, caption j), i ≠ j"),
        "image_to_text_r1": ("image → caption R@1", "share of images whose own caption is the nearest"),
        "text_to_image_r1": ("caption → image R@1", "share of captions whose own image is the nearest"),
    }
    return pd.DataFrame(
        [
            {"figure": name, "as trained": _number(report["before"][key]), "gap closed": _number(report["after"][key]),
             "meaning": meaning}
            for key, (name, meaning) in rows.items()
        ]
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ pages


def page_html(title: str, blocks: Sequence[go.Figure | str]) -> str:
    """One offline HTML page: plotly.js inlined once in the head, then each figure or HTML block in order.

    String blocks are inserted as they are (escape user text before passing it).
    """
    body = []
    for block in blocks:
        if isinstance(block, go.Figure):
            body.append(block.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}))
        else:
            body.append(block)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}h2{margin-top:40px;border-bottom:1px solid #ccc}</style>\n"
        f"</head><body>\n{chr(10).join(body)}\n</body></html>\n"
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


# ------------------------------------------------------------------------------------------- data


def consistency_data(view: ConsistencyView, names: Sequence[str], captions: Sequence[str]) -> dict[str, object]:
    """The Consistency view's numbers as plain JSON values (the `consistency` API)."""
    summary = view.summary
    return {
        "names": list(names),
        "captions": list(captions),
        "figures": summary.figures.to_dict(),
        "sample_inconsistency": summary.sample_inconsistency.cpu().tolist(),
        "top_pairs": top_pairs_table(summary.top_pairs, names, captions).to_dict(orient="records"),
        "heatmap_samples": view.shown,
        "notes": view.notes,
    }


def embedding_data(view: EmbeddingView, names: Sequence[str], captions: Sequence[str]) -> dict[str, object]:
    """The Embedding-space view's numbers as plain JSON values (the `embedding_space` API)."""
    n = len(names)
    return {
        "names": list(names),
        "captions": list(captions),
        "method": view.layout.method,
        "note": view.layout.note,
        "axis_titles": list(view.layout.axis_titles),
        "image_xy": view.coordinates[:n].tolist(),
        "caption_xy": view.coordinates[n:].tolist(),
        "gap": view.gap,
    }
