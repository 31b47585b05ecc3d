"""`python -m vlviz report`: reading pairs, chunked ranks, and the self-contained report on disk."""

from __future__ import annotations

import csv
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlviz.cli.report as report_module
from vlviz.cli.main import main
from vlviz.cli.report import load_report_pairs
from vlviz.data import inputs
from vlviz.data.inputs import InputError, PairSet, load_pairs_folder
from vlviz.data.samples import SAMPLE_SETS

SCENES = SAMPLE_SETS["scenes"]


@pytest.fixture
def scene_folder(tmp_path: Path) -> Path:
    """Six bundled scenes with their caption table, in a folder of their own."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    rows = (SCENES / "captions.csv").read_text().splitlines()
    (folder / "captions.csv").write_text("\n".join(rows[:7]) + "\n")
    for row in rows[1:7]:
        shutil.copy(SCENES / row.split(",")[0], folder)
    return folder


def test_pairs_from_a_folder_a_zip_or_a_table(scene_folder: Path, tmp_path: Path) -> None:
    from_folder = load_report_pairs(scene_folder)
    assert len(from_folder) == 6
    from_table = load_report_pairs(scene_folder / "captions.csv")
    assert from_table.names == from_folder.names and from_table.captions == from_folder.captions
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in scene_folder.iterdir():
            z.write(path, path.name)
    assert load_report_pairs(archive).captions == from_folder.captions
    with pytest.raises(InputError, match="at most 5"):
        load_report_pairs(scene_folder, max_pairs=5)
    with pytest.raises(InputError, match="does not exist"):
        load_report_pairs(tmp_path / "missing")


def test_the_report_lifts_the_hosted_pixel_budget(scene_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "MAX_REQUEST_PIXELS", 1)  # the app would refuse these six images
    with pytest.raises(InputError, match="megapixels"):
        load_pairs_folder(scene_folder)
    assert len(load_report_pairs(scene_folder)) == 6
    assert len(load_report_pairs(scene_folder / "captions.csv")) == 6


def test_report_command_writes_a_self_contained_page(
    scene_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(report_module, "HEATMAP_SAMPLES", 4)
    out = tmp_path / "report"
    args = ["report", "--pairs", str(scene_folder), "--model", "vlviz-scenes", "--out", str(out)]
    assert main([*args, "--method", "pca", "--top-k", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    page = (out / "report.html").read_text()
    for heading in ("<h2>Affinity</h2>", "<h2>Consistency (SaCo)</h2>", "<h2>Embedding space</h2>"):
        assert heading in page
    assert not re.search(r"<script[^>]*\ssrc=", page)  # plotly.js is inlined: the page opens offline
    assert "random 4 of the 6 samples" in page and page.count('class="saco-pair"') == 3
    expected = {"affinities.npz", "consistency.html", "consistency.json", "consistency_figures.zip", "embedding.csv",
                "embedding.html", "embedding.json", "embedding_figures.zip", "embeddings.npz", "ranks.csv",
                "report.html", "report.json", "samples.csv", "top_pairs.csv"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == expected


def test_report_command_names_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--pairs", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_ranks_csv_neutralises_formula_captions(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    captions = ["=1+2", "@cmd", "a cat"]
    pairs = PairSet([Image.new("RGB", (4, 4))] * 3, captions, ["+a.png", "b.png", "c.png"])
    report_module._affinity_section(images, texts, pairs.names, pairs.captions, [0, 1, 2], tmp_path)
    with (tmp_path / "ranks.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert [row[:2] for row in rows[1:]] == [["'+a.png", "'=1+2"], ["b.png", "'@cmd"], ["c.png", "a cat"]]
    assert all(float(cell) >= 1 for row in rows[1:] for cell in row[2:4])  # ranks stay numbers
