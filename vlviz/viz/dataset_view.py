"""The Dataset tab's data: an opened embedding folder's map as the raw arrays the browser draws, its colour
columns, a search's hits as a table, and the pairs a selection of points names.

The map ships as three little-endian float32 arrays end to end (x, y, colour value; 12 bytes a point, 24 MB for
a million pairs' 2M points), which the page decodes in tens of milliseconds (docs/results/draw_engines.md);
plotly's JSON of the same points is larger and decodes 20 times slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from vlviz.embedding.dataset import SOURCE_COLUMN_PREFIX, EmbeddedDataset
from vlviz.embedding.linked import LinkedPairs
from vlviz.embedding.search_index import SearchHits
from vlviz.viz.html import markdown_text

MODALITY = "modality"
CLUSTER = "cluster"
RANK_SHIFT = "rank_shift"
COLUMN_LABELS = {  # a colour column -> what the legend calls it
    MODALITY: "modality (image or caption)",
    "own_cosine": "own-pair cosine (image with its caption)",
    "inconsistency": "inconsistency (SaCo's per-sample |A_I - A_T|)",
    RANK_SHIFT: "how far each pair's own caption moved in image-to-caption retrieval, linked model minus this one "
    "(a share of the other captions; > 0: ranked worse)",
}
Columns = dict[str, np.ndarray]  # name -> (N,) per-pair values
CLUSTER_COLOURS = (  # the map's clusters, largest first: Tableau 10, then six of D3's category20
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2",
)  # fmt: skip


def colour_choices(dataset: EmbeddedDataset, extra: Columns | None = None) -> list[str]:
    """What the map can be coloured by: the modality, the map's clusters, each of the dataset's per-pair columns,
    then `extra`'s (e.g. the rank shift against a linked map)."""
    clusters = [CLUSTER] if dataset.layout is not None else []
    return [MODALITY, *clusters, *dataset.columns, *(extra or {})]


@dataclass(frozen=True)
class ColourValues:
    """Each point's colour value, how the page colours them, and the legend's line."""

    values: np.ndarray  # (2N,) float32: a category's number, or a value in [0, 1]
    kind: Literal["categorical", "clusters", "continuous"]  # image/caption colours, cluster colours, or a ramp
    legend: str
    swatches: tuple[tuple[str, str], ...] = ()  # (colour, name) of each category the legend lists


def legend_markdown(colour: ColourValues) -> str:
    """The legend's line, then a coloured square and name per category: Markdown that shows the names literally
    (a legend names a source column; a cluster's name, words of its captions); the colours are the app's own."""
    swatches = " &nbsp; ".join(
        f'<span style="color:{swatch}">&#9632;</span> {markdown_text(name)}' for swatch, name in colour.swatches
    )
    return "\n\n".join([markdown_text(colour.legend), *([swatches] if swatches else [])])


def cluster_choices(dataset: EmbeddedDataset) -> list[tuple[str, int]]:
    """The map's clusters as (what a list shows, its number): largest first, each with its size and name."""
    clusters = dataset.clusters
    if clusters is None:
        return []
    return [
        (f"{cluster + 1}: {label or 'no word stands out'} ({size:,} points)", cluster)
        for cluster, (size, label) in enumerate(zip(clusters.sizes.tolist(), clusters.labels))
    ]


def colour_values(dataset: EmbeddedDataset, colour: str, extra: Columns | None = None) -> ColourValues:
    """The points' colour by `colour` (one of `colour_choices`): a per-pair column (the dataset's or `extra`'s) is
    min-max scaled, each pair's image and caption sharing their pair's value.

    Raises:
        ValueError: `colour` is none of the dataset's choices.
    """
    if colour == MODALITY:
        values = (np.arange(2 * len(dataset)) >= len(dataset)).astype(np.float32)
        return ColourValues(values, "categorical", "Blue: images; orange: captions.")
    if colour == CLUSTER and dataset.clusters is not None:
        clusters = dataset.clusters
        legend = (
            f"Colour: the map's {len(clusters.labels)} clusters (k-means on the map's points; images and captions "
            "of one pair may lie in different ones). Select a cluster to send its pairs to Analyze."
        )
        swatches = tuple(
            (CLUSTER_COLOURS[cluster % len(CLUSTER_COLOURS)], label)
            for cluster, (label, _) in enumerate(cluster_choices(dataset))
        )
        return ColourValues(clusters.assignment.astype(np.float32), "clusters", legend, swatches)
    columns = {**dataset.columns, **(extra or {})}
    if colour not in columns:
        raise ValueError(f"Colour by one of {', '.join(colour_choices(dataset, extra))}, not {colour!r}.")
    column = np.asarray(columns[colour], dtype=np.float32)
    known = np.isfinite(column)
    low, high = (float(column[known].min()), float(column[known].max())) if known.any() else (0.0, 0.0)
    scaled = np.nan_to_num((column - low) / max(high - low, 1e-12), nan=0.0)
    label = COLUMN_LABELS.get(colour, colour)
    if colour.startswith(SOURCE_COLUMN_PREFIX):
        label = f"{colour.removeprefix(SOURCE_COLUMN_PREFIX)} (a field of the source's rows)"
    legend = f"Colour: {label}, from dark purple ({low:.4g}) to yellow ({high:.4g})."
    if not known.all():
        legend += f" {int((~known).sum()):,} pairs without a value are drawn dark purple."
    return ColourValues(np.concatenate([scaled, scaled]).astype(np.float32), "continuous", legend)


def map_points(coordinates: np.ndarray, values: np.ndarray) -> bytes:
    """(2N, 2) map positions and (2N,) colour values as the bytes the page draws: x, y, value, float32 each.

    Positions are centred and scaled by one factor into [-1, 1] (the drawing's clip space), so the map keeps its
    aspect ratio. In float32 throughout: a million pairs' map is made in tens of milliseconds, per request.
    """
    coordinates = np.asarray(coordinates, dtype=np.float32)
    low, high = coordinates.min(0).astype(np.float64), coordinates.max(0).astype(np.float64)
    centre = (high + low) / 2
    radius = float((high - low).max()) / 2 or 1.0
    out = np.empty((3, len(coordinates)), dtype="<f4")
    np.multiply(coordinates.T - centre[:, None].astype(np.float32), np.float32(0.95 / radius), out=out[:2])  # a margin
    out[2] = values
    return out.tobytes()


def points_preview(payload: bytes, at_most: int) -> bytes:
    """Every k-th point of a `map_points` payload, k = ceil(count / at_most): a large map's shape, which the page
    draws first (its positions as in the whole map, so the whole one is drawn over it in place)."""
    values = np.frombuffer(payload, dtype="<f4").reshape(3, -1)  # x, y, value rows
    step = -(-values.shape[1] // max(at_most, 1))
    return np.ascontiguousarray(values[:, ::step]).tobytes()


def selected_pairs(points: list[int], n_pairs: int, limit: int) -> tuple[np.ndarray, int]:
    """The pairs of the selected points (images are points 0..N-1, captions N..2N-1), in order of first
    appearance: the first `limit` of them, and how many pairs the points name in all. Out-of-range points are
    dropped."""
    indices = np.asarray([p for p in points if isinstance(p, int) and 0 <= p < 2 * n_pairs], dtype=np.int64)
    return pairs_of_points(indices, n_pairs, limit)


def pairs_of_points(points: np.ndarray, n_pairs: int, limit: int) -> tuple[np.ndarray, int]:
    """`selected_pairs` of map points known to be in range (e.g. a cluster's)."""
    pairs = points % n_pairs if n_pairs else points
    _, first = np.unique(pairs, return_index=True)
    ordered = pairs[np.sort(first)]
    return ordered[:limit], len(ordered)


def pair_points(pairs: np.ndarray, n_pairs: int) -> list[int]:
    """The map points of some pairs: each pair's image and caption (what the map highlights)."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return [*pairs.tolist(), *(pairs + n_pairs).tolist()]


def hits_table(dataset: EmbeddedDataset, hits: SearchHits) -> pd.DataFrame:
    """A search's pairs, best first: rank, pair number (from 1), file name, caption, cosine to the query."""
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(hits.pairs) + 1),
            "pair": hits.pairs + 1,
            "name": dataset.names(hits.pairs) if len(hits.pairs) else [],
            "caption": dataset.captions(hits.pairs) if len(hits.pairs) else [],
            "cosine": np.round(hits.scores.astype(np.float64), 4),
        }
    )


def rank_shift(linked: LinkedPairs, n_pairs: int) -> np.ndarray:
    """(N,) per pair of the first map, how far its own caption moved in image-to-caption retrieval from the first
    model to the second (`LinkedPairs.rank_shift`: a share of the other captions, > 0 ranked worse); 0 for a pair
    the second folder lacks."""
    shift = np.zeros(n_pairs, dtype=np.float32)
    shift[linked.first] = linked.rank_shift
    return shift
