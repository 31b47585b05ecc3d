"""A self-contained HTML report of the Affinity, Consistency and Embedding-space views.

`python -m vlviz report --pairs SOURCE --model SPEC --out DIR` reads pairs from any source
`vlviz.data.formats.read_pairs` knows (a folder of images with a caption table, a zip of them, a
caption table beside its images, webdataset shards, parquet, COCO captions, an imagefolder);
encodes everything in batches; and writes DIR/report.html (plotly.js inlined once: it opens
offline) with the numbers beside it as CSV, JSON and .npz. Global figures cover every pair
through the chunked paths, so the report scales to thousands of pairs; heatmaps show a random
subset (said on the page).
All images are decoded into memory first (at most 1024 px a side each, see `vlviz.data.inputs`).

`python -m vlviz report --embeddings DIR --out OUT` draws the same views from a folder that
`python -m vlviz embed` wrote (`vlviz.embedding.store`), with no model and no image: up to `sample`
pairs whole, a larger folder as a seeded uniform sample of that many (the page says so), with the
modality gap and the mean own-pair cosine over every pair.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image
from tqdm import tqdm

from vlviz.data.formats import read_pairs
from vlviz.data.inputs import MAX_IMAGE_PIXELS, InputError, PairSet
from vlviz.embedding.space import LayoutSettings, close_modality_gap
from vlviz.embedding.store import StoredEmbeddings, is_embeddings_folder, load_embeddings
from vlviz.metrics.affinity import affinity_report
from vlviz.metrics.consistency import DEFAULT_TEMPERATURE
from vlviz.models.encoding import batches
from vlviz.models.loading import load_model
from vlviz.viz.exports import write_consistency_files, write_csv, write_embedding_files
from vlviz.viz.figures import embedding_scatter
from vlviz.viz.html import page_html, top_pairs_html
from vlviz.viz.tables import consistency_table, gap_table, retrieval_table, top_pairs_table
from vlviz.viz.views import ConsistencyView, affinity_view, consistency_view, embedding_view

REPORT_MAX_PAIRS = 20_000
HEATMAP_SAMPLES = 150  # samples shown in each heatmap of the report
ENCODE_BATCH = 256  # pairs encoded per progress step
MAP_PAIRS = 5_000
"""Pairs an embedding folder's map shows at most (a seeded random subset beyond): a UMAP of 2 x 20,000 points,
fitted and then transformed gap-closed, ran for over half an hour on 2 busy CPU cores."""


def load_report_pairs(path: str | Path, max_pairs: int = REPORT_MAX_PAIRS, **options: Any) -> PairSet:
    """Pairs from any source `read_pairs` reads; `options` are its format options (columns, images folder, ...).

    The report runs on the user's own machine, so the hosted app's per-request pixel budget is lifted:
    only each image's own size limit applies.
    """
    return read_pairs(path, max_pairs=max_pairs, max_request_pixels=max_pairs * MAX_IMAGE_PIXELS, **options)


@dataclass(frozen=True)
class _Encoded:
    """What a report's views are drawn from: N encoded pairs, their images when there are any, and the page's facts."""

    images: torch.Tensor  # (N, D) L2-normalised image embeddings
    texts: torch.Tensor  # (N, D) caption embeddings
    names: list[str]
    captions: list[str]
    thumbnails: list[Image.Image] | None  # None for an embedding folder: no image was kept
    map_pairs: int | None  # most pairs the embedding map shows (a seeded random subset beyond); None: all
    about: str  # the line under the page's title (HTML)
    notes: list[str]
    facts: dict[str, Any]  # report.json's fields (model, pairs, source, ...)


def write_report(
    pairs_path: str | Path,
    model_spec: str,
    out_dir: str | Path,
    top_k: int = 10,
    method: str = "umap",
    seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE,
    max_pairs: int = REPORT_MAX_PAIRS,
    device: str | None = None,
    show_progress: bool = True,
    source_options: dict[str, Any] | None = None,
) -> Path:
    """Write DIR/report.html and its data files; return the report's path.

    `source_options` are `read_pairs`'s format options for `pairs_path` (image_column, images_dir, ...).
    """
    if is_embeddings_folder(pairs_path):
        raise InputError(
            f"{Path(pairs_path).name} holds embeddings written by `python -m vlviz embed`: give it as --embeddings "
            "(no model is needed)."
        )
    with tqdm(total=5, desc="reading pairs", unit="step", disable=not show_progress) as bar:
        pairs = load_report_pairs(pairs_path, max_pairs, **(source_options or {}))
        n = len(pairs)
        if n < 2:
            raise InputError("A report compares samples with each other: give at least 2 image-caption pairs.")
        bar.total += (n + ENCODE_BATCH - 1) // ENCODE_BATCH
        bar.update()
        bar.set_description("loading the model")
        model = load_model(model_spec, device)
        bar.set_description("encoding")
        image_parts, text_parts = [], []
        for images, captions in zip(batches(pairs.images, ENCODE_BATCH), batches(pairs.captions, ENCODE_BATCH)):
            image_parts.append(model.encode_images(images))
            text_parts.append(model.encode_texts(captions))
            bar.update()
        about = (
            f"<b>Model:</b> {html.escape(model.spec)} · <b>pairs:</b> {n} · <b>source:</b> "
            f"{html.escape(str(pairs_path))} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        )
        encoded = _Encoded(
            torch.cat(image_parts), torch.cat(text_parts), pairs.names, pairs.captions, pairs.images, None, about,
            pairs.notices, {"model": model.spec, "pairs": n, "source": str(pairs_path)},
        )  # fmt: skip
        return _write_views(encoded, Path(out_dir), top_k, method, seed, temperature, bar)


def write_embeddings_report(
    folder: str | Path,
    out_dir: str | Path,
    top_k: int = 10,
    method: str = "umap",
    seed: int = 0,
    temperature: float = DEFAULT_TEMPERATURE,
    sample: int = REPORT_MAX_PAIRS,
    show_progress: bool = True,
) -> Path:
    """The report of an embedding folder (`python -m vlviz embed`), without a model: same views, no thumbnails.

    A folder of more than `sample` pairs is analysed on `load_embeddings`' seeded uniform sample of `sample`
    pairs (seed `seed`): every O(N^2) figure (ranks, consistency, the map) is over that sample, the modality
    gap and the mean own-pair cosine over every pair; the map shows at most MAP_PAIRS of the pairs analysed
    (a seeded random subset). The page says which figure covers what.
    """
    if sample < 2:
        raise ValueError(f"--sample must be at least 2 pairs, got {sample}.")
    with tqdm(total=5, desc="reading embeddings", unit="step", disable=not show_progress) as bar:
        stored = load_embeddings(folder, max_pairs=sample, seed=seed)
        if stored.pairs < 2:
            raise InputError("A report compares samples with each other: the folder holds only 1 pair.")
        bar.update()
        encoded = _Encoded(
            stored.image_features, stored.text_features, stored.names, stored.captions, None, MAP_PAIRS,
            _embeddings_about(stored, Path(folder)), _sample_notes(stored),
            {"model": stored.model, "pairs": len(stored.names), "source": stored.source, "embeddings": str(folder),
             "pairs_in_folder": stored.pairs, "sample_seed": seed if stored.sampled else None},
        )  # fmt: skip
        return _write_views(encoded, Path(out_dir), top_k, method, seed, temperature, bar)


def _embeddings_about(stored: StoredEmbeddings, folder: Path) -> str:
    shown = f"{len(stored.names):,} of {stored.pairs:,}" if stored.sampled else f"{stored.pairs:,}"
    return (
        f"<b>Model:</b> {html.escape(stored.model)} (precomputed embeddings in {html.escape(str(folder))}) · "
        f"<b>pairs:</b> {shown} · <b>source:</b> {html.escape(stored.source)} · "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def _sample_notes(stored: StoredEmbeddings) -> list[str]:
    """What a sampled folder's figures cover, and the figures that cover every pair."""
    if not stored.sampled:
        return []
    n, s = stored.pairs, len(stored.names)
    return [
        f"The folder holds {n:,} pairs; every view below covers a seeded uniform random sample of {s:,} of them "
        f"(seed {stored.seed}, the first {s:,} of a random permutation; --sample sets how many), so ranks and R@1 "
        f"are among those {s:,} captions and images.",
        f"Over all {n:,} pairs: modality gap {stored.gap:.4f}, mean cosine of each image with its own caption "
        f"{stored.matched_cosine:.4f}.",
    ]


def _write_views(
    encoded: _Encoded, out: Path, top_k: int, method: str, seed: int, temperature: float, bar: tqdm
) -> Path:
    """Compute the Consistency, Affinity and Embedding views of `encoded`; write report.html and the data files."""
    images, texts, names, captions = encoded.images, encoded.texts, encoded.names, encoded.captions
    bar.set_description("consistency")
    consistency = consistency_view(
        images, texts, names, captions, k=top_k, temperature=temperature, max_heatmap=HEATMAP_SAMPLES, seed=seed
    )
    bar.update()
    bar.set_description("affinity")
    out.mkdir(parents=True, exist_ok=True)
    affinity_blocks = _affinity_section(images, texts, names, captions, consistency.shown, out)
    bar.update()
    bar.set_description(f"embedding space ({method})")
    mapped, map_notes = _map_subset(len(names), encoded.map_pairs, seed)
    map_images, map_texts = images[mapped], texts[mapped]
    map_names, map_captions = [names[i] for i in mapped.tolist()], [captions[i] for i in mapped.tolist()]
    embedding = embedding_view(map_images, map_texts, map_names, map_captions, LayoutSettings(method, seed=seed))
    closed = embedding_scatter(
        embedding.layout.transform(*close_modality_gap(map_images, map_texts)).numpy(), map_names, map_captions,
        embedding.layout.axis_titles, embedding.title + ", gap closed in the same frame",
    )  # fmt: skip
    bar.update()

    bar.set_description("writing")
    model = encoded.facts["model"]
    consistency_json = {"model": model, **consistency.to_dict(names, captions)}
    embedding_json = {"model": model, **embedding.to_dict(map_names, map_captions)}
    if encoded.thumbnails is None:
        files = _write_consistency_numbers(out, consistency, consistency_json, names, captions)
        top_pairs = top_pairs_table(consistency.summary.top_pairs, names, captions).to_html(index=False)
    else:
        files = write_consistency_files(
            out, consistency, consistency_json, images, texts, encoded.thumbnails, names, captions
        )
        top_pairs = top_pairs_html(consistency.summary.top_pairs, encoded.thumbnails, names, captions)
    files += write_embedding_files(out, embedding, embedding_json, map_images, map_texts, map_names, map_captions)
    files.append(out / "ranks.csv")
    layout_notes = [embedding.layout.note] if embedding.layout.note else []
    notes = [*encoded.notes, *consistency.notes, *map_notes, *layout_notes]
    blocks = [
        "<h1>vlviz report</h1>",
        f"<p>{encoded.about}</p>",
        *(f"<p><i>{html.escape(note)}</i></p>" for note in notes),
        "<h2>Affinity</h2>",
        *affinity_blocks,
        "<h2>Consistency (SaCo)</h2>",
        "<p>A_I compares images with images, A_T captions with captions (cosine); the inconsistency is "
        "|A_I − A_T| over every two samples i ≠ j. SaCo's exact distance is not public: these are vlviz's "
        "figures.</p>",
        consistency_table(consistency.summary.figures).to_html(index=False),
        consistency.image_heatmap,
        consistency.text_heatmap,
        consistency.inconsistency_heatmap,
        consistency.scatter,
        "<h3>Most inconsistent pairs</h3>",
        top_pairs,
        "<h2>Embedding space</h2>",
        gap_table(embedding.gap).to_html(index=False),
        embedding.figure,
        closed,
        "<h2>Files</h2>",
        "<ul>" + "".join(f"<li>{html.escape(p.name)}</li>" for p in files) + "</ul>",
    ]
    report = out / "report.html"
    report.write_text(page_html("vlviz report", blocks), encoding="utf-8")
    (out / "report.json").write_text(json.dumps({**encoded.facts, "files": [p.name for p in files]}), encoding="utf-8")
    bar.update()
    return report


def _map_subset(n: int, limit: int | None, seed: int) -> tuple[torch.Tensor, list[str]]:
    """The pairs the embedding map shows, ascending: all, or a seeded random `limit` of them (with a note)."""
    if limit is None or n <= limit:
        return torch.arange(n), []
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    note = (
        f"The embedding map, its gap table and embeddings.npz cover a seeded random {limit:,} of these {n:,} pairs "
        "(a UMAP of more takes too long); every other figure covers all of them."
    )
    return chosen, [note]


def _write_consistency_numbers(
    out: Path, view: ConsistencyView, data: dict[str, object], names: list[str], captions: list[str]
) -> list[Path]:
    """consistency.json, samples.csv and top_pairs.csv: the consistency files that need no image."""
    paths = [out / "consistency.json", out / "samples.csv", out / "top_pairs.csv"]
    paths[0].write_text(json.dumps(data, indent=1), encoding="utf-8")
    samples = pd.DataFrame(
        {"index": range(1, len(names) + 1), "image": names, "caption": captions,
         "inconsistency": view.summary.sample_inconsistency.cpu().numpy()}
    )  # fmt: skip
    write_csv(samples, paths[1], index=False)
    write_csv(top_pairs_table(view.summary.top_pairs, names, captions), paths[2], index=False)
    return paths


def _affinity_section(
    images: torch.Tensor, texts: torch.Tensor, names: list[str], captions: list[str], shown: list[int], out: Path
) -> list[go.Figure | str]:
    """Retrieval figures over all pairs (ranks.csv holds every rank), and the image-text heatmap of the samples
    the other heatmaps show."""
    report = affinity_report(images, texts, logit_scale=1.0, shown=shown)  # cosines and ranks: no probabilities drawn
    figure = affinity_view(report, names, captions).image_text
    ranks = pd.DataFrame(
        {"image": names, "caption": captions, "image→text rank": report.image_to_text_rank.numpy(),
         "text→image rank": report.text_to_image_rank.numpy(), "cos(own pair)": np.round(report.own_cosine.numpy(), 4)}
    )  # fmt: skip
    write_csv(ranks, out / "ranks.csv", index=False)
    worst = ranks.sort_values("image→text rank", ascending=False).head(10)
    table = retrieval_table(report.image_to_text_rank, report.text_to_image_rank, report.own_cosine)
    return [table.to_html(index=False), figure, "<h3>Worst-ranked pairs</h3>", worst.to_html(index=False)]
