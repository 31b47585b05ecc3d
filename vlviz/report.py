"""A self-contained HTML report of the Affinity, Consistency and Embedding-space views.

`python -m vlviz report --pairs SOURCE --model SPEC --out DIR` reads pairs from any source
`vlviz.data.formats.read_pairs` knows (a folder of images with a caption table, a zip of them, a
caption table beside its images, webdataset shards, parquet, COCO captions, an imagefolder);
encodes everything in batches; and writes DIR/report.html (plotly.js inlined once: it opens
offline) with the numbers beside it as CSV, JSON and .npz. Global figures cover every pair
through the chunked paths, so the report scales to thousands of pairs; heatmaps show a random
subset (said on the page).
All images are decoded into memory first (at most 1024 px a side each, see `vlviz.data.inputs`).
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm import tqdm

from vlviz.affinity import affinity_report
from vlviz.consistency import DEFAULT_TEMPERATURE
from vlviz.data.formats import read_pairs
from vlviz.data.inputs import MAX_IMAGE_PIXELS, InputError, PairSet
from vlviz.embedding_space import close_modality_gap
from vlviz.models import load_model
from vlviz.viz.exports import write_consistency_files, write_csv, write_embedding_files
from vlviz.viz.figures import embedding_scatter
from vlviz.viz.html import page_html, top_pairs_html
from vlviz.viz.tables import consistency_table, gap_table, retrieval_table
from vlviz.viz.views import affinity_view, consistency_view, embedding_view

REPORT_MAX_PAIRS = 20_000
HEATMAP_SAMPLES = 150  # samples shown in each heatmap of the report
ENCODE_BATCH = 256  # pairs encoded per progress step


def load_report_pairs(path: str | Path, max_pairs: int = REPORT_MAX_PAIRS, **options: Any) -> PairSet:
    """Pairs from any source `read_pairs` reads; `options` are its format options (columns, images folder, ...).

    The report runs on the user's own machine, so the hosted app's per-request pixel budget is lifted:
    only each image's own size limit applies.
    """
    return read_pairs(path, max_pairs=max_pairs, max_request_pixels=max_pairs * MAX_IMAGE_PIXELS, **options)


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
    out = Path(out_dir)
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
        for start in range(0, n, ENCODE_BATCH):
            image_parts.append(model.encode_images(pairs.images[start : start + ENCODE_BATCH]))
            text_parts.append(model.encode_texts(pairs.captions[start : start + ENCODE_BATCH]))
            bar.update()
        images, texts = torch.cat(image_parts), torch.cat(text_parts)

        bar.set_description("consistency")
        consistency = consistency_view(
            images, texts, pairs.names, pairs.captions, k=top_k, temperature=temperature,
            max_heatmap=HEATMAP_SAMPLES, seed=seed,
        )  # fmt: skip
        bar.update()
        bar.set_description("affinity")
        out.mkdir(parents=True, exist_ok=True)
        affinity_blocks = _affinity_section(images, texts, pairs, consistency.shown, out)
        bar.update()
        bar.set_description(f"embedding space ({method})")
        embedding = embedding_view(images, texts, pairs.names, pairs.captions, method=method, seed=seed)
        closed = embedding_scatter(
            embedding.layout.transform(*close_modality_gap(images, texts)).numpy(), pairs.names, pairs.captions,
            embedding.layout.axis_titles, embedding.title + ", gap closed in the same frame",
        )  # fmt: skip
        bar.update()

        bar.set_description("writing")
        consistency_json = {"model": model.spec, **consistency.to_dict(pairs.names, pairs.captions)}
        embedding_json = {"model": model.spec, **embedding.to_dict(pairs.names, pairs.captions)}
        files = write_consistency_files(
            out, consistency, consistency_json, images, texts, pairs.images, pairs.names, pairs.captions
        )
        files += write_embedding_files(out, embedding, embedding_json, images, texts, pairs.names, pairs.captions)
        files.append(out / "ranks.csv")
        notes = [*pairs.notices, *consistency.notes, *([embedding.layout.note] if embedding.layout.note else [])]
        blocks = [
            "<h1>vlviz report</h1>",
            f"<p><b>Model:</b> {html.escape(model.spec)} · <b>pairs:</b> {n} · <b>source:</b> "
            f"{html.escape(str(pairs_path))} · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>",
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
            top_pairs_html(consistency.summary.top_pairs, pairs.images, pairs.names, pairs.captions),
            "<h2>Embedding space</h2>",
            gap_table(embedding.gap).to_html(index=False),
            embedding.figure,
            closed,
            "<h2>Files</h2>",
            "<ul>" + "".join(f"<li>{html.escape(p.name)}</li>" for p in files) + "</ul>",
        ]
        report = out / "report.html"
        report.write_text(page_html("vlviz report", blocks), encoding="utf-8")
        (out / "report.json").write_text(
            json.dumps({"model": model.spec, "pairs": n, "source": str(pairs_path), "files": [p.name for p in files]}),
            encoding="utf-8",
        )
        bar.update()
    return report


def _affinity_section(
    images: torch.Tensor, texts: torch.Tensor, pairs: PairSet, shown: list[int], out: Path
) -> list[go.Figure | str]:
    """Retrieval figures over all pairs (ranks.csv holds every rank), and the image-text heatmap of the samples
    the other heatmaps show."""
    report = affinity_report(images, texts, logit_scale=1.0, shown=shown)  # cosines and ranks: no probabilities drawn
    figure = affinity_view(report, pairs.names, pairs.captions).image_text
    ranks = pd.DataFrame(
        {"image": pairs.names, "caption": pairs.captions, "image→text rank": report.image_to_text_rank.numpy(),
         "text→image rank": report.text_to_image_rank.numpy(), "cos(own pair)": np.round(report.own_cosine.numpy(), 4)}
    )  # fmt: skip
    write_csv(ranks, out / "ranks.csv", index=False)
    worst = ranks.sort_values("image→text rank", ascending=False).head(10)
    table = retrieval_table(report.image_to_text_rank, report.text_to_image_rank, report.own_cosine)
    return [table.to_html(index=False), figure, "<h3>Worst-ranked pairs</h3>", worst.to_html(index=False)]
