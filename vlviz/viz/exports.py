"""Downloadable files of the Affinity, Consistency and Embedding-space views: HTML, CSV, JSON and .npz.

Figures go to one offline HTML page per view (plotly.js inlined; PNG would need kaleido, which
vlviz does not depend on); numbers to CSV and JSON; embeddings and matrices to .npz.
Every CSV goes through `write_csv`, which keeps user text from running as a spreadsheet formula.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image

from vlviz.affinity import AffinityReport
from vlviz.consistency import in_modal_affinities
from vlviz.viz.html import page_html, top_pairs_html
from vlviz.viz.tables import consistency_table, gap_table, top_pairs_table
from vlviz.viz.views import ConsistencyView, EmbeddingView

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Text starting with one of these may run as a formula when a CSV is opened in a spreadsheet (CSV injection)."""


def _neutralise(value: object) -> object:
    """Prefix formula-like text with a quote (OWASP's advice); numbers and other values pass unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def write_csv(frame: pd.DataFrame, path: str | Path, *, index: bool = True) -> None:
    """`frame.to_csv(path, index=index)` with formula-like text in cells, index and column labels neutralised.

    Captions and file names are user text, and exports are opened in spreadsheets. Only strings are
    escaped, so -0.5 stays a number. The caller's frame is left unchanged. Lines end in CRLF (RFC 4180),
    which also makes the csv writer quote a caption holding a lone carriage return.
    """
    safe = frame.copy(deep=False)
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            safe.isetitem(position, column.map(_neutralise))
    safe.columns = frame.columns.map(_neutralise).rename(_neutralise(frame.columns.name))
    if index:
        safe.index = frame.index.map(_neutralise).rename(_neutralise(frame.index.name))
    safe.to_csv(path, index=index, lineterminator="\r\n")


def write_affinity_files(
    folder: str | Path,
    report: AffinityReport,
    figures: Sequence[go.Figure],
    data: dict[str, object],
    names: Sequence[str],
    captions: Sequence[str],
) -> list[Path]:
    """affinity.html (the heatmaps), affinity.json (`data`), image_text.csv, ranks.csv and affinity.npz.

    The matrices (CSV and .npz) cover the pairs the report holds (`report.shown`); the ranks cover all.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        folder / name for name in ("affinity.html", "affinity.json", "image_text.csv", "ranks.csv", "affinity.npz")
    ]
    paths[0].write_text(page_html("vlviz affinity", ["<h1>Affinity</h1>", *figures]), encoding="utf-8")
    paths[1].write_text(json.dumps(data, indent=1), encoding="utf-8")
    shown = report.shown.tolist()
    labels = [f"{i + 1}. {names[i]}" for i in shown]
    write_csv(pd.DataFrame(report.image_text.numpy(), index=labels, columns=[captions[i] for i in shown]), paths[2])
    ranks = pd.DataFrame(
        {
            "image": names,
            "caption": captions,
            "image_to_text_rank": report.image_to_text_rank.numpy(),
            "text_to_image_rank": report.text_to_image_rank.numpy(),
        }
    )
    write_csv(ranks, paths[3], index=False)
    arrays = {k: v.numpy() for k, v in report.__dict__.items() if isinstance(v, torch.Tensor)}
    np.savez_compressed(paths[4], **arrays, names=np.array(names), captions=np.array(captions))
    return paths


def write_consistency_files(
    folder: str | Path,
    view: ConsistencyView,
    data: dict[str, object],
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    images: Sequence[Image.Image],
    names: Sequence[str],
    captions: Sequence[str],
) -> list[Path]:
    """consistency.html, consistency.json, samples.csv, top_pairs.csv and, for N <= 4096, affinities.npz."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    top = view.summary.top_pairs
    blocks = [
        "<h1>Consistency (SaCo)</h1>",
        *(f"<p>{html.escape(note)}</p>" for note in view.notes),
        consistency_table(view.summary.figures).to_html(index=False),
        view.image_heatmap,
        view.text_heatmap,
        view.inconsistency_heatmap,
        view.scatter,
        "<h2>Most inconsistent pairs</h2>",
        top_pairs_html(top, images, names, captions),
    ]
    paths = [folder / "consistency.html", folder / "consistency.json", folder / "samples.csv", folder / "top_pairs.csv"]
    paths[0].write_text(page_html("vlviz consistency", blocks), encoding="utf-8")
    paths[1].write_text(json.dumps(data, indent=1), encoding="utf-8")
    samples = pd.DataFrame(
        {
            "index": range(1, len(names) + 1),
            "image": names,
            "caption": captions,
            "inconsistency": view.summary.sample_inconsistency.cpu().numpy(),
        }
    )
    write_csv(samples, paths[2], index=False)
    write_csv(top_pairs_table(top, names, captions), paths[3], index=False)
    if len(names) <= 4096:  # two float32 N x N matrices: 128 MB at 4096
        image_image, text_text = in_modal_affinities(image_features, text_features)
        paths.append(folder / "affinities.npz")
        np.savez_compressed(
            paths[-1], image_image=image_image.cpu().numpy(), text_text=text_text.cpu().numpy(),
            names=np.array(names), captions=np.array(captions),
        )  # fmt: skip
    return paths


def write_embedding_files(
    folder: str | Path,
    view: EmbeddingView,
    data: dict[str, object],
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    names: Sequence[str],
    captions: Sequence[str],
) -> list[Path]:
    """embedding.html, embedding.json, embedding.csv (2-D coordinates) and embeddings.npz (the features)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in ("embedding.html", "embedding.json", "embedding.csv", "embeddings.npz")]
    blocks = [
        "<h1>Embedding space</h1>",
        *([f"<p>{html.escape(view.layout.note)}</p>"] if view.layout.note else []),
        gap_table(view.gap).to_html(index=False),
        view.figure,
    ]
    paths[0].write_text(page_html("vlviz embedding space", blocks), encoding="utf-8")
    paths[1].write_text(json.dumps(data, indent=1), encoding="utf-8")
    n = len(names)
    coordinates = view.coordinates.numpy()
    table = pd.DataFrame(
        {
            "kind": ["image"] * n + ["caption"] * n,
            "index": [*range(1, n + 1), *range(1, n + 1)],
            "name": [*names, *names],
            "caption": [*captions, *captions],
            "x": coordinates[:, 0],
            "y": coordinates[:, 1],
        }
    )
    write_csv(table, paths[2], index=False)
    np.savez_compressed(
        paths[3], image_features=image_features.float().cpu().numpy(), text_features=text_features.float().cpu().numpy(),
        coordinates=coordinates, names=np.array(names), captions=np.array(captions),
    )  # fmt: skip
    return paths
