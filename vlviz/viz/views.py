"""Every tab's view built from data: encodings and figures in, plotly figures and tables out.

Shared by the app's tabs, the command-line report and the model comparison, so all show the same
thing. No gradio and no model calls: embeddings, maps, names and captions in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from vlviz.embedding.space import (
    DEFAULT_SETTINGS,
    EmbeddingLayout,
    LayoutSettings,
    close_modality_gap,
    fit_layout,
    gap_report,
)
from vlviz.grounding.maps import DENSE_KINDS, GRADIENT_KINDS, CaptionMaps
from vlviz.metrics.affinity import AffinityReport
from vlviz.metrics.consistency import (
    DEFAULT_TEMPERATURE,
    ConsistencySummary,
    InconsistentPairs,
    cluster_order,
    consistency_summary,
    in_modal_affinities,
    pair_affinities,
    sample_pairs,
)
from vlviz.viz.figures import (
    affinity_scatter,
    consistency_heatmaps,
    display_image,
    embedding_scatter,
    grounding_grid,
    grounding_overlay,
    heatmap,
    inconsistency_heatmap,
    short_labels,
    token_patch_matrix,
)
from vlviz.viz.tables import ranks_table, top_pairs_table

SCATTER_PAIRS = 10_000  # pairs drawn in the A_T-vs-A_I scatter; more are sampled (seeded)
HEATMAP_PAGE = 300  # pairs per Affinity heatmap page: 3 heatmaps of 300 x 300 ship in about 2 MB
MAP_LABELS = {
    "sparc": "SPARC weights",
    "no-sparsity": "min-max weights without sparsity",
    "softmax": "softmax weights (the paper's ablation)",
    "cosine": "dense cosine map",
    "occlusion": "occlusion map",
    "maskclip": "MaskCLIP (value path)",
    "sclip": "SCLIP (correlative attention)",
    "clearclip": "ClearCLIP (q-q, no residual)",
    "naclip": "NACLIP (neighbourhood attention)",
    "naclip_pamr": "NACLIP + PAMR (refined by the image's edges)",
    "legrad": "LeGrad (attention-map gradients)",
    "gradeclip": "Grad-ECLIP (gradient-weighted values)",
}
MAP_VALUES = (
    {"cosine": "cosine", "occlusion": "drop", "naclip_pamr": "cosine"}
    | dict.fromkeys(DENSE_KINDS, "cosine")
    | dict.fromkeys(GRADIENT_KINDS, "relevance")
)  # what a map's values are (hover and colour bar); else weights
OVERLAY_SIDE = 224  # pixels of the image under a large grounding overlay
GRID_SIDE = 72  # pixels of the image under each small overlay


def item_labels(names: Sequence[str], numbers: Sequence[int] | None = None) -> list[str]:
    """Axis labels of images: their 1-based number and file name."""
    numbers = range(len(names)) if numbers is None else numbers
    return [f"{i + 1}. {name}" for i, name in zip(numbers, names)]


# ------------------------------------------------------------------------------------- affinity


@dataclass(frozen=True)
class AffinityView:
    """The Affinity view: three heatmaps and the ranks of every pair."""

    image_text: go.Figure  # cosine, or the model's match probability
    image_image: go.Figure  # A_I
    text_text: go.Figure  # A_T
    ranks: pd.DataFrame


def affinity_view(
    report: AffinityReport,
    names: Sequence[str],
    captions: Sequence[str],
    probabilities: bool = False,
    title_prefix: str = "",
    fixed_range: bool = False,
) -> AffinityView:
    """Draw an `AffinityReport` of N pairs: heatmaps of the pairs it holds (`report.shown`), ranks of all.

    Rows are images, columns captions, each named by its 1-based pair number. `probabilities` shows
    P(caption | image) in the image-text heatmap instead of the cosine; `fixed_range` puts cosines
    on [-1, 1] (to compare two models on one scale).
    """
    numbers = report.shown.tolist()
    caption_labels = short_labels([captions[i] for i in numbers], numbers=numbers)
    image_labels = item_labels([names[i] for i in numbers], numbers)
    image_hover = [f"image {i + 1} ({names[i]})" for i in numbers]
    caption_hover = [f"caption {i + 1}: {captions[i]}" for i in numbers]
    cosine_range = (-1.0, 1.0) if fixed_range else None
    if probabilities:
        head = "sigmoid(s·cos + b)" if report.head == "sigmoid" else "softmax over captions"
        image_text = heatmap(
            report.image_to_text_probability.numpy(), caption_labels, image_labels, caption_hover, image_hover,
            f"{title_prefix}P(caption | image), {head}", "probability", zrange=(0.0, 1.0),
        )  # fmt: skip
    else:
        image_text = heatmap(
            report.image_text.numpy(), caption_labels, image_labels, caption_hover, image_hover,
            f"{title_prefix}Image-text cosine similarity", "cosine", zrange=cosine_range,
        )  # fmt: skip
    image_image = heatmap(
        report.image_image.numpy(), image_labels, image_labels, image_hover, image_hover,
        f"{title_prefix}Image-image similarity (A_I)", "cosine", zrange=cosine_range,
    )  # fmt: skip
    text_text = heatmap(
        report.text_text.numpy(), caption_labels, caption_labels, caption_hover, caption_hover,
        f"{title_prefix}Text-text similarity (A_T)", "cosine", zrange=cosine_range,
    )  # fmt: skip
    return AffinityView(image_text, image_image, text_text, ranks_table(report, names, captions))


def heatmap_pages(n: int, size: int = HEATMAP_PAGE) -> int:
    """How many heatmap pages of `size` pairs N pairs fill (at least one)."""
    return max(1, math.ceil(n / size))


def heatmap_page(n: int, page: int, size: int = HEATMAP_PAGE) -> tuple[list[int], str | None]:
    """The pairs on 1-based `page` of `size` (clamped to the pages there are), and a note when not all N are shown."""
    pages = heatmap_pages(n, size)
    page = min(max(1, int(page)), pages)
    shown = list(range((page - 1) * size, min(n, page * size)))
    if pages == 1:
        return shown, None
    note = (
        f"The heatmaps show pairs {shown[0] + 1}–{shown[-1] + 1} of {n} (page {page} of {pages}: choose another "
        "page below them); the ranks cover all pairs, and every matrix is in the downloads."
    )
    return shown, note


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

    def to_dict(self, names: Sequence[str], captions: Sequence[str]) -> dict[str, Any]:
        """The view's numbers as plain JSON values (the `consistency` API)."""
        summary = self.summary
        return {
            "names": list(names),
            "captions": list(captions),
            "figures": summary.figures.to_dict(),
            "sample_inconsistency": summary.sample_inconsistency.cpu().tolist(),
            "top_pairs": top_pairs_table(summary.top_pairs, names, captions).to_dict(orient="records"),
            "heatmap_samples": self.shown,
            "notes": self.notes,
        }


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
    image_labels = item_labels([names[i] for i in shown.tolist()], shown.tolist())
    caption_labels = short_labels([captions[i] for i in shown.tolist()], numbers=shown.tolist())
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


@dataclass(frozen=True)
class EmbeddingView:
    """The Embedding-space view: the plot, its layout and coordinates, and the gap figures."""

    figure: go.Figure
    layout: EmbeddingLayout
    coordinates: torch.Tensor  # (2N, 2) as drawn: images, then captions
    gap: dict[str, dict[str, float | None]]  # gap_report: "before" / "after" closing the gap
    title: str

    def to_dict(self, names: Sequence[str], captions: Sequence[str]) -> dict[str, Any]:
        """The view's numbers as plain JSON values (the `embedding_space` API)."""
        n = len(names)
        return {
            "names": list(names),
            "captions": list(captions),
            "method": self.layout.method,
            "note": self.layout.note,
            "axis_titles": list(self.layout.axis_titles),
            "image_xy": self.coordinates[:n].tolist(),
            "caption_xy": self.coordinates[n:].tolist(),
            "gap": self.gap,
        }


def embedding_view(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    names: Sequence[str],
    captions: Sequence[str],
    settings: LayoutSettings = DEFAULT_SETTINGS,
    close_gap: bool = False,
    layout: EmbeddingLayout | None = None,
    fit: Callable[[torch.Tensor, torch.Tensor, LayoutSettings], EmbeddingLayout] = fit_layout,
) -> EmbeddingView:
    """Lay images and captions out in 2-D (fit, or `transform` into a kept `layout`) and draw them.

    With `close_gap` the modality gap is removed before the layout sees the points (see
    `close_modality_gap`). The gap figures always compare the embeddings as trained with the
    gap closed. `fit` fits the layout: `fit_layout`, or a `LayoutWorker`'s (the app's: UMAP in a child).
    """
    points = close_modality_gap(image_features, text_features) if close_gap else (image_features, text_features)
    kept = layout is not None
    if layout is None:
        layout = fit(*points, settings)
        coordinates = layout.coordinates
    else:
        coordinates = layout.transform(*points)
    n = len(names)
    title = f"{layout.method.upper()} of {n} images and {n} captions"
    title += ", modality gap closed" if close_gap else ""
    title += " (kept layout)" if kept else ""
    figure = embedding_scatter(coordinates.numpy(), names, captions, layout.axis_titles, title)
    return EmbeddingView(figure, layout, coordinates, gap_report(image_features, text_features), title)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


# ------------------------------------------------------------------------------------ grounding


@dataclass(frozen=True)
class GroundingView:
    """One caption's grounding drawn over its image: the chosen word, every word, every token."""

    overlay: go.Figure
    grid: go.Figure
    matrix: go.Figure


def grounding_view(
    maps: CaptionMaps, image: np.ndarray, word: int, opacity: float = 0.7, model: str = ""
) -> GroundingView:
    """Draw `caption_maps`' maps over the image as the model sees it (`VLModel.input_image`), word `word` large
    (its title naming `model` if given, as when it is compared with another model's)."""
    label = MAP_LABELS[maps.kind]
    value_name = MAP_VALUES.get(maps.kind, "weight")
    words, grid_maps = maps.words, maps.word_maps.numpy()
    overlay = word_overlay(maps, image, word, opacity, model)
    grid = grounding_grid(display_image(image, GRID_SIDE), grid_maps, words, opacity)
    matrix = token_patch_matrix(
        maps.token_maps.numpy(), maps.tokens, maps.grid_size, f"Token x patch: {label}", value_name
    )
    return GroundingView(overlay, grid, matrix)


def word_overlay(maps: CaptionMaps, image: np.ndarray, word: int, opacity: float = 0.7, model: str = "") -> go.Figure:
    """One word's map over the image as the model sees it, titled with the word, the map kind and `model` if given."""
    # the model on a line of its own: a run's or an untrained twin's name is long, and a title is one plot wide
    title = f"'{maps.words[word]}': {MAP_LABELS[maps.kind]}" + (f"<br><sup>{model}</sup>" if model else "")
    value_name = MAP_VALUES.get(maps.kind, "weight")
    return grounding_overlay(
        display_image(image, OVERLAY_SIDE), maps.word_maps.numpy()[word], title, opacity, value_name
    )


def attention_overlay(
    image: np.ndarray, patch_map: torch.Tensor, grid_size: tuple[int, int], word: str, opacity: float
) -> go.Figure:
    """Where the trained XMM fusion head looks for a masked word: its (P,) cross-attention over the image."""
    return grounding_overlay(
        display_image(image, OVERLAY_SIDE), patch_map.reshape(grid_size).numpy(),
        f"'{word}' masked: XMM cross-attention", opacity, "attention",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- probe


def probe_figures(
    step: int,
    captions: Sequence[str],
    inconsistency: np.ndarray,
    coordinates: np.ndarray,
    axis_titles: tuple[str, str],
    image: np.ndarray,
    grounding: CaptionMaps | None,
) -> dict[str, go.Figure]:
    """The training probe's figures (the fields of `vlviz.training.probe.ProbeMeasurement`).

    Its |A_I - A_T| heatmap, its embeddings on the step-0 layout, and SPARC's weights of the first
    caption's first content word over its image.
    """
    labels = short_labels(captions)
    figures = {"inconsistency": inconsistency_heatmap(inconsistency, list(range(len(captions))), labels, signed=False)}
    figures["inconsistency"].update_layout(title={"text": f"|A_I − A_T| of the probe batch, step {step}"})
    names = [f"probe {i + 1}" for i in range(len(captions))]
    figures["embedding"] = embedding_scatter(
        coordinates, names, captions, axis_titles, f"Probe embeddings on the step-0 layout, step {step}"
    )
    if grounding is not None:
        chosen = grounding.first_word
        title = f"SPARC weights of “{grounding.words[chosen]}”, step {step}"
        figures["grounding"] = grounding_overlay(image, grounding.word_maps[chosen].numpy(), title)
    return figures
