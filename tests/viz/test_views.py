"""The shared Consistency / Embedding-space views, their tables, HTML and downloadable files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.metrics.consistency import consistency_figures, in_modal_affinities
from vlviz.viz.exports import write_consistency_files, write_embedding_files
from vlviz.viz.html import page_html, top_pairs_html
from vlviz.viz.tables import consistency_table
from vlviz.viz.views import consistency_view, embedding_view, heatmap_page

N = 7
NAMES = [f"img_{i}.png" for i in range(N)]
CAPTIONS = [f"caption number {i}" for i in range(N)]
IMAGES = [Image.new("RGB", (40, 30), (30 * i, 0, 0)) for i in range(N)]


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(N, 8, generator=generator), dim=-1)
    texts = F.normalize(images + torch.randn(N, 8, generator=generator), dim=-1)
    return images, texts


def test_consistency_view_covers_all_pairs_and_subsets_only_the_heatmaps() -> None:
    images, texts = _features()
    view = consistency_view(images, texts, NAMES, CAPTIONS, k=3, max_heatmap=4, clustered=False)
    assert view.summary.figures.pairs == N and len(view.summary.sample_inconsistency) == N
    assert len(view.shown) == 4 and view.shown == sorted(view.shown)
    assert view.image_heatmap.data[0].z.shape == (4, 4)
    assert any("random 4 of the 7 samples" in note for note in view.notes)
    # The scatter draws every pair once: the 3 ringed top pairs first, then the other 18.
    points, ringed = view.scatter.data[1], view.scatter.data[2]
    assert len(points.x) == N * (N - 1) // 2 and len(ringed.x) == 3
    data = view.to_dict(NAMES, CAPTIONS)
    assert json.loads(json.dumps(data)) == data and len(data["top_pairs"]) == 3


def test_consistency_table_reads_the_figures() -> None:
    images, texts = _features()
    table = consistency_table(consistency_figures(images[:2], texts[:2]))
    values = dict(zip(table["figure"], table["value"]))
    assert values["pairs N"] == "2" and values["Pearson r(A_I, A_T)"] == "n/a"  # one pair: undefined


def test_top_pairs_html_escapes_captions_and_embeds_images() -> None:
    images, texts = _features()
    captions = ["<script>alert(1)</script>", *CAPTIONS[1:]]
    top = consistency_view(images, texts, NAMES, captions, k=N * (N - 1) // 2).summary.top_pairs
    snippet = top_pairs_html(top, IMAGES, NAMES, captions)
    assert "<script>" not in snippet and "&lt;script&gt;" in snippet
    assert snippet.count('class="saco-pair"') == N * (N - 1) // 2
    assert snippet.count("data:image/jpeg;base64,") == 2 * N * (N - 1) // 2


def test_page_html_inlines_plotly_once_and_loads_nothing() -> None:
    images, texts = _features()
    view = embedding_view(images, texts, NAMES, CAPTIONS, method="pca")
    page = page_html("t", ["<h1>x</h1>", view.figure, view.figure])
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert page.count("<script") == 3  # plotly.js once, then one call per figure


def test_exported_files_hold_the_numbers(tmp_path: Path) -> None:
    images, texts = _features()
    view = consistency_view(images, texts, NAMES, CAPTIONS, k=2)
    data = view.to_dict(NAMES, CAPTIONS)
    paths = write_consistency_files(tmp_path, view, data, images, texts, IMAGES, NAMES, CAPTIONS)
    assert [p.name for p in paths][-1] == "affinities.npz"
    matrices = np.load(tmp_path / "affinities.npz")
    assert np.allclose(matrices["image_image"], in_modal_affinities(images, texts)[0].numpy())
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert np.allclose(samples["inconsistency"], view.summary.sample_inconsistency.numpy(), atol=1e-6)
    assert len(pd.read_csv(tmp_path / "top_pairs.csv")) == 2
    assert json.loads((tmp_path / "consistency.json").read_text()) == data

    layout_view = embedding_view(images, texts, NAMES, CAPTIONS, method="pca")
    write_embedding_files(tmp_path, layout_view, layout_view.to_dict(NAMES, CAPTIONS), images, texts, NAMES, CAPTIONS)  # fmt: skip
    saved = np.load(tmp_path / "embeddings.npz")
    assert np.allclose(saved["image_features"], images.numpy()) and saved["coordinates"].shape == (2 * N, 2)
    coordinates = pd.read_csv(tmp_path / "embedding.csv")
    assert list(coordinates["kind"]) == ["image"] * N + ["caption"] * N


def test_kept_layout_transforms_instead_of_refitting() -> None:
    images, texts = _features()
    first = embedding_view(images, texts, NAMES, CAPTIONS, method="pca")
    closed = embedding_view(images, texts, NAMES, CAPTIONS, close_gap=True, layout=first.layout)
    assert closed.layout is first.layout and "(kept layout)" in closed.title
    assert not torch.allclose(closed.coordinates, first.coordinates)


def test_heatmap_pages_cover_every_pair_once() -> None:
    assert heatmap_page(10, 1) == (list(range(10)), None)
    pages = [heatmap_page(701, page, size=300)[0] for page in (1, 2, 3)]
    assert [p[0] for p in pages] == [0, 300, 600] and sum(len(p) for p in pages) == 701
    shown, note = heatmap_page(701, 9, size=300)  # past the end: the last page
    assert shown == list(range(600, 701)) and "pairs 601–701 of 701 (page 3 of 3" in note
