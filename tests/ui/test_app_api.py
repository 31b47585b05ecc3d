"""The app's API through gradio_client, against the app launched on the offline model."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app as app_module
from tests.conftest import SCENE_CAPTIONS
from vlviz.data.samples import SAMPLE_SETS
from vlviz.models.loading import OFFLINE_SPEC

SCENES = SAMPLE_SETS["scenes"]


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def _analyze(client: Client, files: list[Path], captions: str, kind: str = "cosine similarity"):
    return client.predict([handle_file(str(f)) for f in files], captions, OFFLINE_SPEC, kind, api_name="/analyze")


def test_api_lists_analyze_and_query(client: Client) -> None:
    assert {"/analyze", "/query"} <= set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def test_analyze_returns_the_matrices_as_data(client: Client) -> None:
    files = [SCENES / f"scene_{i:02d}.png" for i in range(3)]
    captions = "a small red circle\na large blue square\na white cross on the left"
    result = _analyze(client, files, captions)
    data, status, downloads = result[5], result[6], result[8]
    assert downloads is None  # files are written on request
    downloads = client.predict("cosine similarity", 1, api_name="/affinity_downloads")
    names = ["affinity.html", "affinity.json", "affinity.npz", "affinity_figures.zip", "image_text.csv", "ranks.csv"]
    assert sorted(Path(f).name for f in downloads) == names
    assert data["model"] == OFFLINE_SPEC and data["captions"] == captions.split("\n")
    assert data["names"] == ["scene_00.png", "scene_01.png", "scene_02.png"]
    for key in ("image_text", "image_image", "text_text", "image_to_text_probability"):
        assert len(data[key]) == 3 and all(len(row) == 3 for row in data[key])
    a_i = data["image_image"]
    assert all(abs(a_i[i][j] - a_i[j][i]) < 1e-6 for i in range(3) for j in range(3))
    assert all(abs(sum(row) - 1) < 1e-4 for row in data["image_to_text_probability"])
    assert data["head"] == "softmax" and data["logit_bias"] is None
    assert sorted(data["image_to_text_rank"]) and all(1 <= r <= 3 for r in data["image_to_text_rank"])
    assert "vlviz-scenes" in status and "not photographs" in status


def test_the_offline_model_matches_the_sample_scenes(client: Client) -> None:
    files = sorted(SCENES.glob("scene_*.png"))[:8]
    data = _analyze(client, files, "\n".join(SCENE_CAPTIONS[f.name] for f in files))[5]
    assert sum(rank == 1 for rank in data["image_to_text_rank"]) >= 6


@pytest.mark.parametrize(
    ("files", "captions", "message"),
    [
        ([SCENES / "scene_00.png"], "one\ntwo", "1 image but 2 captions"),
        ([SCENES / "scene_00.png", SCENES / "scene_01.png"], "only one", "2 images but 1 caption"),
        ([], "a caption", "No images were uploaded"),
        ([SCENES / "captions.csv"], "", "No images were uploaded"),
    ],
)
def test_bad_input_gets_a_clear_message(client: Client, files: list[Path], captions: str, message: str) -> None:
    with pytest.raises(AppError, match=message):
        _analyze(client, files, captions)


def test_two_caption_tables_are_read_as_the_library_reads_them(client: Client, tmp_path: Path) -> None:
    """The app hands every upload to `pairs_from_uploads`: tables that agree merge, tables that disagree are named."""
    images = [SCENES / "scene_00.png", SCENES / "scene_01.png"]
    first, second = tmp_path / "first.csv", tmp_path / "second.json"
    first.write_text("file,caption\nscene_00.png,a red circle\n")
    second.write_text('[{"file": "scene_01.png", "caption": "a blue square"}]')
    data = _analyze(client, [*images, first, second], "")[5]
    assert data["captions"] == ["a red circle", "a blue square"]
    second.write_text(
        '[{"file": "scene_00.png", "caption": "a blue square"}, {"file": "scene_01.png", "caption": "x"}]'
    )
    with pytest.raises(AppError, match="different captions"):
        _analyze(client, [*images, first, second], "")


def test_corrupt_and_wrong_files_are_named(client: Client, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    broken.write_bytes(buffer.getvalue()[:60])
    disguised = tmp_path / "notes.jpg"
    disguised.write_text("not an image")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(AppError, match=r"broken\.png"):
        _analyze(client, [broken], "a red square")
    with pytest.raises(AppError, match=r"notes\.jpg is not a readable image"):
        _analyze(client, [disguised], "a note")
    with pytest.raises(AppError, match="Invalid file type"):  # refused by the upload component itself
        _analyze(client, [notes], "a note")


def test_long_captions_are_truncated_with_a_notice(client: Client) -> None:
    long_caption = " ".join(["a small red circle on the left"] * 8)
    result = _analyze(client, [SCENES / "scene_00.png"], long_caption)
    data, notices = result[5], result[7]
    assert "truncated" in notices and "scene\\_00.png" in notices and data["notices"]  # Markdown, escaped


def test_zip_with_caption_table(client: Client, tmp_path: Path) -> None:
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(2):
            z.write(SCENES / f"scene_{i:02d}.png", f"img/scene_{i:02d}.png")
        z.writestr("captions.csv", "file,caption\nscene_01.png,second\nscene_00.png,first\n")
    data = _analyze(client, [archive], "")[5]
    assert data["names"] == ["scene_00.png", "scene_01.png"] and data["captions"] == ["first", "second"]


def test_query_ranks_the_analyzed_images(app_url: str) -> None:
    fresh = Client(app_url, verbose=False)  # a new session: nothing analyzed yet
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        fresh.predict("a red circle", api_name="/query")
    files = [SCENES / f"scene_{i:02d}.png" for i in (0, 1, 4, 5)]  # four distinct captions
    _analyze(fresh, files, "\n".join(SCENE_CAPTIONS[f.name] for f in files))
    ranked = fresh.predict(SCENE_CAPTIONS["scene_04.png"], api_name="/query")
    assert len(ranked) == 4
    assert ranked[0]["caption"].startswith("1. scene_04.png")


def test_initial_model_is_offline_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLVIZ_MODEL", raising=False)
    monkeypatch.setattr(app_module, "hub_reachable", lambda: False)
    assert app_module.initial_model_spec() == OFFLINE_SPEC
    monkeypatch.setattr(app_module, "hub_reachable", lambda: True)
    assert app_module.initial_model_spec() == "ViT-B-32:laion2b_s34b_b79k"
    monkeypatch.setenv("VLVIZ_MODEL", "/some/folder")
    assert app_module.initial_model_spec() == "/some/folder"


def test_webdataset_shards_are_uploads_too(client: Client, tmp_path: Path) -> None:
    shard = tmp_path / "pairs-000.tar"
    with tarfile.open(shard, "w") as archive:
        for i, caption in enumerate(("first", "second")):
            archive.add(SCENES / f"scene_{i:02d}.png", f"{i:04d}.png")
            data = caption.encode()
            info = tarfile.TarInfo(f"{i:04d}.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = _analyze(client, [shard], "ignored")[5]
    assert data["captions"] == ["first", "second"] and len(data["names"]) == 2
    assert any("captions box was not used" in notice for notice in data["notices"])
