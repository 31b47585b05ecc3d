"""Downloadable files of the Affinity, Consistency and Embedding-space views: HTML, CSV, JSON and .npz.

Figures go to one offline HTML page per view (plotly.js inlined; PNG would need kaleido, which
vlviz does not depend on) and, each with its numbers and a script that redraws it, to one zip per view
(`vlviz.viz.figure_data`); numbers to CSV and JSON; embeddings and matrices to .npz.
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

from vlviz.metrics.affinity import AffinityReport
from vlviz.metrics.consistency import in_modal_affinities
from vlviz.viz.figure_data import write_figures_zip
from vlviz.viz.html import page_html, top_pairs_html
from vlviz.viz.safe_csv import write_csv
from vlviz.viz.tables import consistency_table, gap_table, top_pairs_table
from vlviz.viz.views import ConsistencyView, EmbeddingView


def write_affinity_files(
    folder: str | Path,
    report: AffinityReport,
    figures: Sequence[go.Figure],
    data: dict[str, object],
    names: Sequence[str],
    captions: Sequence[str],
) -> list[Path]:
    """affinity.html (the heatmaps), affinity.json (`data`), image_text.csv, ranks.csv, affinity.npz and
    affinity_figures.zip (each heatmap's numbers and redraw script).

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
    paths.append(write_figures_zip(folder / "affinity_figures.zip", figures))
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
    """consistency.html, consistency.json, samples.csv, top_pairs.csv, consistency_figures.zip (each figure's
    numbers and redraw script) and, for N <= 4096, affinities.npz."""
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
    figures = [view.image_heatmap, view.text_heatmap, view.inconsistency_heatmap, view.scatter]
    paths.append(write_figures_zip(folder / "consistency_figures.zip", figures))
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
    """embedding.html, embedding.json, embedding.csv (2-D coordinates), embeddings.npz (the features) and
    embedding_figures.zip (the map's numbers and redraw script)."""
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
    paths.append(write_figures_zip(folder / "embedding_figures.zip", [view.figure]))
    return paths
