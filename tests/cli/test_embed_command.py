"""`python -m vlviz embed` into a folder, resumed, and `report --embeddings` from it without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlviz.cli.report
import vlviz.models.loading
from tests.embedding.test_embeddings_store import write_scene_shards
from vlviz.cli.main import main


def _no_model(*args: object, **kwargs: object) -> None:
    raise AssertionError("a report from an embedding folder must not load a model")


def test_embed_then_report_from_the_folder_without_a_model(
    tiny_vit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = write_scene_shards(tmp_path / "data"), tmp_path / "embeddings"
    embed = ["embed", "--model", str(tiny_vit_dir), "--data", source, "--out", str(out), "--shard-size", "4"]
    assert main([*embed, "--format", "parquet"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["pairs"], first["shards"], first["rank_0_wrote"], first["world_size"]) == (10, 3, 3, 1)
    assert main([*embed, "--format", "parquet"]) == 0  # a rerun finds the folder complete
    assert json.loads(capsys.readouterr().out)["rank_0_found_done"] == 3

    monkeypatch.setattr(vlviz.cli.report, "load_model", _no_model)
    monkeypatch.setattr(vlviz.models.loading, "load_model", _no_model)
    report = tmp_path / "report"
    args = ["report", "--embeddings", str(out), "--out", str(report), "--method", "pca", "--top-k", "3"]
    monkeypatch.setattr(vlviz.cli.report, "MAP_PAIRS", 4)
    assert main([*args, "--sample", "6", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(report / "report.html")
    facts = json.loads((report / "report.json").read_text())
    assert (facts["pairs"], facts["pairs_in_folder"], facts["sample_seed"], facts["model"]) == (
        6, 10, 1, str(tiny_vit_dir)
    )  # fmt: skip
    page = (report / "report.html").read_text()
    assert "The folder holds 10 pairs; every view below covers a seeded uniform random sample of 6" in page
    assert "Over all 10 pairs: modality gap" in page and "precomputed embeddings" in page
    assert "<h3>Most inconsistent pairs</h3>" in page and 'class="saco-pair"' not in page  # no images: a table
    assert "The embedding map, its gap table and embeddings.npz cover a seeded random 4 of these 6 pairs" in page
    assert len(json.loads((report / "embedding.json").read_text())["names"]) == 4
    assert {"report.html", "report.json", "ranks.csv", "samples.csv", "top_pairs.csv", "consistency.json",
            "embedding.json", "embeddings.npz"} <= {p.name for p in report.iterdir()}  # fmt: skip
    assert main(args) == 0  # 10 pairs fit the default sample: all of them, no note
    assert json.loads((report / "report.json").read_text())["sample_seed"] is None
    assert "The folder holds" not in (report / "report.html").read_text()


def test_bad_input_ends_with_a_message(
    tiny_vit_dir: Path, tiny_resnet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, out = write_scene_shards(tmp_path / "data", n=3), tmp_path / "embeddings"
    (tmp_path / "pairs.zip").write_bytes(b"PK")
    blocked = tmp_path / "pairs.zip" / "embeddings"  # a folder inside a file
    cases = [
        (["embed", "--data", str(tmp_path / "missing"), "--out", str(out)], "missing does not exist"),
        (["embed", "--model", str(tiny_vit_dir), "--data", source, "--out", str(blocked)], "cannot write to"),
        (["embed", "--data", str(tmp_path / "pairs.zip"), "--out", str(out)], "pairs.zip is a zip"),
        (["report", "--embeddings", str(tmp_path / "data"), "--out", str(tmp_path / "r")], "holds no index.json"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert main(["embed", "--model", str(tiny_vit_dir), "--data", source, "--out", str(out)]) == 0
    capsys.readouterr()
    cases = [
        (["embed", "--model", str(tiny_resnet_dir), "--data", source, "--out", str(out)], "holds embeddings of"),
        (["report", "--embeddings", str(out), "--model", "vlviz-scenes", "--out", str(tmp_path / "r")],
         "--model does not apply"),
        (["report", "--pairs", str(out), "--out", str(tmp_path / "r")], "give it as --embeddings"),
        (["report", "--pairs", source, "--sample", "5", "--out", str(tmp_path / "r")], "--sample applies to"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 2
        assert message in capsys.readouterr().err
    (out / "embeddings-00000.npz").unlink()
    assert main(["report", "--embeddings", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "is not finished (0 shards written so far)" in capsys.readouterr().err


def test_embed_names_the_pairs_it_left_out_and_goes_on(
    tiny_vit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = write_scene_shards(tmp_path / "data", n=4, corrupt=(1,))
    assert main(["embed", "--model", str(tiny_vit_dir), "--data", source, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "left out: pair 1 (0001.png):" in captured.err and str(tmp_path) not in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["pairs"], summary["left_out"]) == (4, 1)
