"""The shared Consistency / Embedding-space views, their tables, HTML and downloadable files."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.embedding.space import LayoutSettings
from vlviz.grounding.maps import CaptionMaps
from vlviz.metrics.consistency import consistency_figures, in_modal_affinities
from vlviz.viz.annotation_view import annotation_view, write_annotation_csv
from vlviz.viz.exports import write_consistency_files, write_embedding_files
from vlviz.viz.html import page_html, top_pairs_html
from vlviz.viz.pair_grounding import every_method_view, grounding_of
from vlviz.viz.tables import consistency_table
from vlviz.viz.talk import GroundingPanel
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
    view = embedding_view(images, texts, NAMES, CAPTIONS, LayoutSettings("pca"))
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

    layout_view = embedding_view(images, texts, NAMES, CAPTIONS, LayoutSettings("pca"))
    write_embedding_files(tmp_path, layout_view, layout_view.to_dict(NAMES, CAPTIONS), images, texts, NAMES, CAPTIONS)  # fmt: skip
    saved = np.load(tmp_path / "embeddings.npz")
    assert np.allclose(saved["image_features"], images.numpy()) and saved["coordinates"].shape == (2 * N, 2)
    coordinates = pd.read_csv(tmp_path / "embedding.csv")
    assert list(coordinates["kind"]) == ["image"] * N + ["caption"] * N


def test_kept_layout_transforms_instead_of_refitting() -> None:
    images, texts = _features()
    first = embedding_view(images, texts, NAMES, CAPTIONS, LayoutSettings("pca"))
    closed = embedding_view(images, texts, NAMES, CAPTIONS, close_gap=True, layout=first.layout)
    assert closed.layout is first.layout and "(kept layout)" in closed.title
    assert not torch.allclose(closed.coordinates, first.coordinates)


def test_heatmap_pages_cover_every_pair_once() -> None:
    assert heatmap_page(10, 1) == (list(range(10)), None)
    pages = [heatmap_page(701, page, size=300)[0] for page in (1, 2, 3)]
    assert [p[0] for p in pages] == [0, 300, 600] and sum(len(p) for p in pages) == 701
    shown, note = heatmap_page(701, 9, size=300)  # past the end: the last page
    assert shown == list(range(600, 701)) and "pairs 601–701 of 701 (page 3 of 3" in note


def _caption_maps(kind: str, words: list[str], seed: int) -> CaptionMaps:
    maps = torch.rand(len(words), 2, 2, generator=torch.Generator().manual_seed(seed))
    return CaptionMaps(kind, (2, 2), words, maps, words, maps.flatten(1), first_word=1)


def test_every_method_view_titles_each_panel_and_says_why_a_method_is_missing() -> None:
    words = ["a", "red", "circle"]
    maps = {kind: _caption_maps(kind, words, seed) for seed, kind in enumerate(("sparc", "cosine", "legrad"))}
    panel = GroundingPanel("m", np.zeros((8, 8, 3), np.uint8), maps, {"sparc": 0.5, "cosine": 0.25, "legrad": 1.0})
    head = grounding_of("m", 1, "img.png", "a red circle")
    view = every_method_view(head, panel, {"maskclip": "no <block> to re-read"}, None, scenes=3)
    assert view.word == 1 and view.data["kinds"]["legrad"]["word_map"] == maps["legrad"].word_maps[1].flatten().tolist()
    assert view.data["kinds"]["maskclip"] == {"label": "MaskCLIP (value path)", "reason": "no <block> to re-read"}
    texts = [a.text for a in view.figure.layout.annotations]
    assert texts[:4] == [
        "SPARC weights<br>pointing 0.50", "dense cosine map<br>pointing 0.25",
        "LeGrad (attention-map gradients)<br>pointing 1.00", "MaskCLIP (value path)<br>not drawn",
    ]  # fmt: skip
    assert texts[4] == "no &lt;block&gt; to re-read"  # the reason, escaped, in the refused method's own cell
    assert [t.type for t in view.figure.data] == ["image", "heatmap"] * 3
    assert (
        "3 loaded bundled scenes" in view.notice and "Not drawn: MaskCLIP (value path): no &lt;block&gt;" in view.notice
    )
    unscored = every_method_view(head, replace(panel, pointing={}), {}, 9, scenes=0)  # a word out of range: the first
    assert unscored.word == 1 and "No pair is a bundled scene" in unscored.notice
    assert unscored.data["kinds"]["sparc"]["pointing"] is None


def _figures(pointing: float, words: int) -> dict[str, float]:
    return {
        "pointing_game": pointing, "mass_in_mask": 0.5, "chance": 0.1, "words": words, "object_chance": 0.5,
        "object_accuracy": float("nan") if words == 0 else 0.75, "on_object": words,
    }  # fmt: skip


def test_the_annotation_table_has_a_row_per_method_and_category_beside_the_baseline(tmp_path: Path) -> None:
    categories = {"=dog": _figures(1.0, 1), "cat": _figures(0.5, 2), "cow": _figures(0.0, 0)}
    scores = {"all": _figures(0.6, 3), "categories": categories}
    result = {
        "format": "coco", "query": "a photo of a {}.", "min_cover": 0.25,
        "notices": ["1 of the 2 images have no annotations"],
        "images": 2, "objects": 3, "not_named": 0, "outside_crop": 0,
        "scores": {"sparc": scores}, "untrained": {"sparc": copy.deepcopy(scores)},
    }  # fmt: skip
    result["untrained"]["sparc"]["all"]["pointing_game"] = 0.2
    view = annotation_view(result, "my_model", "instances.json")
    table = view.table
    assert list(table["category"]) == ["all objects", "=dog", "cat"]  # a category without a scored word is left out
    assert list(table.columns[:4]) == ["method", "category", "words", "pointing game"]
    first = table.iloc[0]
    assert (first["method"], first["pointing game"], first["pointing game (untrained)"]) == ("SPARC weights", 0.6, 0.2)
    assert "2 images, 3 objects" in view.summary and "- 1 of the 2 images" in view.summary
    assert "my\\_model" in view.summary  # user text shown literally
    written = pd.read_csv(write_annotation_csv(table, tmp_path))
    assert list(written["category"]) == ["all objects", "'=dog", "cat"]  # a category name never runs as a formula
