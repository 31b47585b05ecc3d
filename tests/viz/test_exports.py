"""CSV downloads cannot smuggle spreadsheet formulas: captions and names that look like one are neutralised."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.embedding.space import LayoutSettings
from vlviz.metrics.affinity import affinity_report
from vlviz.viz.exports import write_affinity_files, write_consistency_files, write_csv, write_embedding_files
from vlviz.viz.views import consistency_view, embedding_view

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CAPTIONS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx", "plain"]
NAMES = ["=evil.png", *(f"img_{i}.png" for i in range(1, len(CAPTIONS)))]
N = len(CAPTIONS)


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def assert_no_formulas(path: Path) -> None:
    """No cell (label or value) of the file starts like a formula, unless it is a plain number."""
    for row in rows(path):
        for cell in row:
            assert not cell.startswith(FORMULA_START) or is_number(cell), f"{path.name}: {cell!r}"


def test_write_csv_neutralises_values_and_labels_but_keeps_numbers(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"caption": CAPTIONS[:3], "=bad label": [-0.5, 1.25, -3.0], "count": [-1, 2, 3]},
        index=pd.Index(["@a", "b", "+c"], name="-name"),
    )
    path = tmp_path / "t.csv"
    write_csv(frame, path)
    assert rows(path) == [
        ["'-name", "caption", "'=bad label", "count"],
        ["'@a", "'" + CAPTIONS[0], "-0.5", "-1"],
        ["b", "'" + CAPTIONS[1], "1.25", "2"],
        ["'+c", "'" + CAPTIONS[2], "-3.0", "3"],
    ]
    assert frame["caption"].tolist() == CAPTIONS[:3]  # the caller's frame is left alone
    write_csv(frame, path, index=False)
    back = pd.read_csv(path)
    assert back["'=bad label"].tolist() == [-0.5, 1.25, -3.0]  # still numbers
    assert back["count"].dtype.kind == "i"


def test_write_csv_handles_duplicate_labels_and_every_formula_start(tmp_path: Path) -> None:
    frame = pd.DataFrame([[1.0, -2.0], [-3.0, 4.0]], index=CAPTIONS[:2], columns=["same", "same"])
    frame["words"] = [CAPTIONS[4], CAPTIONS[5]]
    path = tmp_path / "dup.csv"
    write_csv(frame, path)
    assert rows(path)[0] == ["", "same", "same", "words"]
    assert [row[3] for row in rows(path)[1:]] == ["'\tx", "'\rx"]
    assert_no_formulas(path)


def test_every_exported_csv_is_neutralised(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(N, 8, generator=generator), dim=-1)
    texts = F.normalize(images + torch.randn(N, 8, generator=generator), dim=-1)
    report = affinity_report(images, texts, logit_scale=100.0)
    written = write_affinity_files(tmp_path / "a", report, [], {}, NAMES, CAPTIONS)

    view = consistency_view(images, texts, NAMES, CAPTIONS, k=3)
    pictures = [Image.new("RGB", (8, 8)) for _ in range(N)]
    data = view.to_dict(NAMES, CAPTIONS)
    written += write_consistency_files(tmp_path / "c", view, data, images, texts, pictures, NAMES, CAPTIONS)

    layout = embedding_view(images, texts, NAMES, CAPTIONS, LayoutSettings("pca"))
    data = layout.to_dict(NAMES, CAPTIONS)
    written += write_embedding_files(tmp_path / "e", layout, data, images, texts, NAMES, CAPTIONS)

    tables = [path for path in written if path.suffix == ".csv"]
    assert {path.name for path in tables} == {
        "image_text.csv", "ranks.csv", "samples.csv", "top_pairs.csv", "embedding.csv",
    }  # fmt: skip
    for path in tables:
        assert_no_formulas(path)
    header = rows(tmp_path / "a" / "image_text.csv")[0]
    assert header[1:] == ["'" + caption if caption.startswith(FORMULA_START) else caption for caption in CAPTIONS]
    cosines = [float(cell) for row in rows(tmp_path / "a" / "image_text.csv")[1:] for cell in row[1:]]
    assert min(cosines) < 0  # negative numbers are written as numbers, not escaped
    ranks = pd.read_csv(tmp_path / "a" / "ranks.csv")
    assert ranks["image"][0] == "'=evil.png" and ranks["caption"].tolist()[-1] == "plain"
