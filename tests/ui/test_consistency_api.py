"""The Consistency and Embedding-space APIs through gradio_client, against the app on the offline model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from vlviz.data.samples import SAMPLE_SETS
from vlviz.models.loading import OFFLINE_SPEC

SCENES = SAMPLE_SETS["scenes"]
SCENE_CAPTIONS = {row["file"]: row["caption"] for row in csv.DictReader((SCENES / "captions.csv").open())}
FILES = [SCENES / f"scene_{i:02d}.png" for i in range(6)]
CAPTIONS = "\n".join(SCENE_CAPTIONS[f.name] for f in FILES)


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def _uploads(files: list[Path]) -> list:
    return [handle_file(str(f)) for f in files]


def _analyze(client: Client, files: list[Path], captions: str) -> None:
    """Both views read the pairs the session analysed last."""
    client.predict(_uploads(files), captions, OFFLINE_SPEC, "cosine similarity", api_name="/analyze")


def _consistency(client: Client, files: list[Path], captions: str, top_k: int = 4, temperature: float = 0.1):
    _analyze(client, files, captions)
    return client.predict("clustered", "absolute |A_I − A_T|", top_k, temperature, api_name="/consistency")


def _embedding(client: Client, method: str = "pca", close_gap: bool = False, files: list[Path] = FILES):
    _analyze(client, files, "\n".join(SCENE_CAPTIONS[f.name] for f in files))
    return client.predict(method, 15, 0.1, "cosine", 0, close_gap, False, api_name="/embedding_space")


def test_views_need_an_analysis_first(app_url: str) -> None:
    fresh = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        fresh.predict("clustered", "absolute |A_I − A_T|", 4, 0.1, api_name="/consistency")
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        fresh.predict("pca", 15, 0.1, "cosine", 0, False, False, api_name="/embedding_space")
    with pytest.raises(AppError, match="Draw the Consistency view first"):
        fresh.predict(api_name="/consistency_downloads")


def test_api_lists_consistency_and_embedding_space(client: Client) -> None:
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/consistency", "/embedding_space"} <= set(endpoints)


def test_consistency_returns_figures_top_pairs_and_downloads(client: Client) -> None:
    *plots, table, top_html, downloads, data, _notices = _consistency(client, FILES, CAPTIONS)
    assert len(plots) == 4 and all(plot is not None for plot in plots)
    figures = data["figures"]
    assert figures["pairs"] == 6 and figures["spearman_exact"] and figures["spearman_pairs"] == 15
    assert 0 <= figures["mean_abs_inconsistency"] <= 2 and -1 <= figures["pearson"] <= 1
    assert data["model"] == OFFLINE_SPEC and data["names"] == [f.name for f in FILES]
    assert len(data["sample_inconsistency"]) == 6 and sorted(data["heatmap_samples"]) == list(range(6))
    top = data["top_pairs"]
    assert len(top) == 4 and [row["rank"] for row in top] == [1, 2, 3, 4]
    gaps = [row["|A_I − A_T|"] for row in top]
    assert gaps == sorted(gaps, reverse=True)
    assert all(abs(abs(row["A_I"] - row["A_T"]) - row["|A_I − A_T|"]) < 1e-3 for row in top)
    assert top[0]["image i"] in top_html and top[0]["caption i"] in top_html and "data:image/jpeg" in top_html
    assert [row[0] for row in table["data"]][:2] == ["pairs N", "mean |A_I − A_T|"]
    assert downloads is None  # files are written on request, from the view on screen
    names = sorted(Path(path).name for path in client.predict(api_name="/consistency_downloads"))
    assert names == [
        "affinities.npz", "consistency.html", "consistency.json", "consistency_figures.zip", "samples.csv", "top_pairs.csv",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("files", "captions", "temperature", "message"),
    [
        (FILES[:1], SCENE_CAPTIONS[FILES[0].name], 0.1, "at least 2 image-caption pairs"),
        (FILES[:2], "only one caption", 0.1, "2 images but 1 caption"),
        (FILES[:2], "one\ntwo", 0.0, "less than minimum value 0.001"),  # the Number component refuses it
    ],
)
def test_consistency_bad_input_gets_a_clear_message(
    client: Client, files: list[Path], captions: str, temperature: float, message: str
) -> None:
    with pytest.raises(AppError, match=message):
        _consistency(client, files, captions, temperature=temperature)


def test_embedding_space_returns_coordinates_and_the_gap(client: Client) -> None:
    plot, gap_table, _notices, picker, _picked, downloads, data = _embedding(client, "pca")
    assert plot is not None and data["method"] == "pca" and data["note"] is None
    assert len(data["image_xy"]) == 6 and len(data["caption_xy"]) == 6 and len(data["image_xy"][0]) == 2
    assert data["gap"]["before"]["gap"] > 0 and abs(data["gap"]["after"]["gap"]) < 1e-5
    assert gap_table["data"][0][0] == "modality gap ‖Δ‖"
    assert len(picker["choices"]) == 6
    assert downloads is None
    names = sorted(Path(path).name for path in client.predict(api_name="/embedding_downloads"))
    assert names == ["embedding.csv", "embedding.html", "embedding.json", "embedding_figures.zip", "embeddings.npz"]


def test_embedding_space_closes_the_gap(client: Client) -> None:
    before = _embedding(client, "pca")[-1]
    after = _embedding(client, "pca", close_gap=True)[-1]
    assert after["gap_closed"] and after["image_xy"] != before["image_xy"]
    assert after["gap"] == before["gap"]  # the table always compares as trained with gap closed


def test_umap_on_too_few_pairs_falls_back_to_pca_with_a_note(client: Client) -> None:
    *_, notices, _picker, _picked, _downloads, data = _embedding(client, "umap", files=FILES[:3])
    assert data["method"] == "pca" and "UMAP needs at least" in data["note"] and "UMAP needs" in notices
