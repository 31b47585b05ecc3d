"""A figure's numbers (CSV), JSON and redraw.py: the files hold the figure's numbers, and the script, run
on them alone, redraws a figure with the same numbers, without ever running a caption as code."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
import torch.nn.functional as F
from plotly.basedatatypes import BaseTraceType

from vlviz.metrics.affinity import affinity_report
from vlviz.viz.figure_data import REDRAW_SCRIPT, trace_array, write_figure_data, write_figures_zip
from vlviz.viz.figures import affinity_scatter, embedding_scatter, grounding_grid, heatmap
from vlviz.viz.views import affinity_view

# Captions that would do harm if they ever reached code or a spreadsheet formula.
CAPTIONS = ['a cat"""; import os; os.system("touch pwned")  #', '=HYPERLINK("http://x","y")', "a dog"]
NAMES = ["cat.png", "@link.png", "dog.png"]
N = len(CAPTIONS)


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(N, 8, generator=generator), dim=-1)
    return images, F.normalize(images + torch.randn(N, 8, generator=generator), dim=-1)


def affinity_heatmap() -> go.Figure:
    return affinity_view(affinity_report(*_features(), logit_scale=100.0), NAMES, CAPTIONS).image_text


def pair_scatter() -> go.Figure:
    generator = np.random.default_rng(0)
    x, y = generator.uniform(-1, 1, 6), generator.uniform(-1, 1, 6)
    labels = [f"{i + 1}. {name}: {caption}" for i, (name, caption) in enumerate(zip(NAMES, CAPTIONS))]
    return affinity_scatter(x, y, np.array([0, 0, 1, 0, 1, 2]), np.array([1, 2, 2, 1, 2, 0]), labels, highlight=2)


def word_grid() -> go.Figure:
    generator = np.random.default_rng(1)
    image = generator.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return grounding_grid(image, generator.random((3, 2, 2)), ["cat", "=sum", "dog"], columns=2)


def embedding_map() -> go.Figure:
    """A scatter whose line trace separates its segments with NaN gaps."""
    coordinates = np.random.default_rng(2).normal(size=(2 * N, 2))
    return embedding_scatter(coordinates, NAMES, CAPTIONS, ("x", "y"), "Embeddings", highlight=[1])


def numbers(trace: BaseTraceType) -> dict[str, object]:
    """What a trace draws: its arrays (as lists, NaN kept) and an image's source."""
    out: dict[str, object] = {"source": trace.source} if trace.type == "image" else {}
    for prop in ("x", "y", "z", "text", "marker.color"):
        if prop in trace and (array := trace_array(trace[prop])) is not None:
            out[prop] = array.astype(float) if array.dtype.kind in "fiu" else array.tolist()
    return out


def assert_same_numbers(original: go.Figure, redrawn: go.Figure) -> None:
    assert [t.type for t in redrawn.data] == [t.type for t in original.data]
    for before, after in zip(original.data, redrawn.data, strict=True):
        expected, got = numbers(before), numbers(after)
        assert got.keys() == expected.keys()
        for prop, values in expected.items():
            if isinstance(values, np.ndarray):
                np.testing.assert_allclose(got[prop], values, rtol=1e-6, err_msg=prop)
            else:
                assert got[prop] == values, prop


def test_a_heatmap_csv_holds_its_matrix_and_both_axes(tmp_path: Path) -> None:
    figure = affinity_heatmap()
    paths = write_figure_data(tmp_path, figure)
    assert [p.name for p in paths] == ["figure.json", "redraw.py", "trace1_matrix.csv"]
    matrix = pd.read_csv(tmp_path / "trace1_matrix.csv", index_col=0)
    trace = figure.data[0]
    np.testing.assert_allclose(matrix.to_numpy(), trace.z, rtol=1e-6)
    assert list(matrix.index) == list(trace.y) and list(matrix.columns) == list(trace.x)
    assert "caption 1: " + CAPTIONS[0] in matrix.columns


def test_a_scatter_csv_holds_every_point_its_hover_text_and_colour(tmp_path: Path) -> None:
    figure = pair_scatter()
    write_figure_data(tmp_path, figure)
    diagonal, points, ringed = (pd.read_csv(tmp_path / f"trace{i}_points.csv") for i in (1, 2, 3))
    assert list(diagonal.columns) == ["x", "y"]  # its colour is one for all: it stays in figure.json
    assert list(points.columns) == ["x", "y", "text", "marker.color"]
    np.testing.assert_allclose(points[["x", "y"]].to_numpy(), np.column_stack([figure.data[1].x, figure.data[1].y]))
    np.testing.assert_allclose(points["marker.color"], figure.data[1].marker.color)
    assert points["text"].tolist() == list(figure.data[1].text) and len(ringed) == 2


def test_a_subplot_figure_keeps_each_image_as_a_png_and_each_map_as_a_matrix(tmp_path: Path) -> None:
    figure = word_grid()
    names = [p.name for p in write_figure_data(tmp_path, figure)[2:]]
    assert names == [f"trace{i}_image.png" if i % 2 else f"trace{i}_matrix.csv" for i in range(1, 7)]
    assert (tmp_path / "trace1_image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    second_map = pd.read_csv(tmp_path / "trace4_matrix.csv", index_col=0)
    np.testing.assert_allclose(second_map.to_numpy(), figure.data[3].z)


def test_labels_that_look_like_formulas_are_quoted_in_the_csv(tmp_path: Path) -> None:
    figure = heatmap(np.eye(2), ["a", "b"], ["c", "d"], ["=1+1", "b"], ["@c", "d"], "t", "v")
    write_figure_data(tmp_path, figure)
    with (tmp_path / "trace1_matrix.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["", "'=1+1", "b"] and rows[1][0] == "'@c"


def test_the_redraw_script_is_the_same_code_for_every_figure_and_holds_no_user_text(tmp_path: Path) -> None:
    script = REDRAW_SCRIPT.read_text(encoding="utf-8")
    for number, figure in enumerate([affinity_heatmap(), pair_scatter(), word_grid()]):
        write_figure_data(tmp_path / str(number), figure)
        assert (tmp_path / str(number) / "redraw.py").read_text(encoding="utf-8") == script
    for text in [*CAPTIONS, *NAMES, "import os", "system("]:
        assert text not in script


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[go.Figure], Path]:
    """Four figures zipped, unzipped in a fresh folder, and each redrawn there by its own redraw.py."""
    figures = [affinity_heatmap(), pair_scatter(), word_grid(), embedding_map()]
    folder = tmp_path_factory.mktemp("zip")
    archive = write_figures_zip(folder / "figures.zip", figures)
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder / "out")
    for sub in sorted(p for p in (folder / "out").iterdir() if p.is_dir()):
        done = subprocess.run(
            [sys.executable, "redraw.py"], cwd=sub, capture_output=True, text=True, timeout=120, check=True
        )
        assert done.stdout.strip().endswith(("redrawn.svg", "redrawn.html"))
    return figures, folder / "out"


def test_the_zip_holds_one_folder_per_figure_named_by_its_title(redrawn: tuple[list[go.Figure], Path]) -> None:
    _, out = redrawn
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["1-image-text-cosine-similarity", "2-a-t-against-a-i-one-point-per-pair-of-samples",
                       "3-every-word-each-map-on-its-own-colour-range", "4-embeddings"]  # fmt: skip
    assert (out / "README.txt").exists() and not any(out.rglob("pwned"))  # no caption ran


def test_running_redraw_py_draws_the_same_numbers_in_the_same_style(redrawn: tuple[list[go.Figure], Path]) -> None:
    figures, out = redrawn
    for figure, folder in zip(figures, sorted(p for p in out.iterdir() if p.is_dir()), strict=True):
        again = pio.read_json(folder / "redrawn.json")
        assert_same_numbers(figure, again)
        assert again.layout.template.layout.font.family == figure.layout.template.layout.font.family
        assert again.layout.title.text == figure.layout.title.text
        assert (folder / "redrawn.html").exists() or (folder / "redrawn.svg").exists()


def test_redraw_py_reads_the_numbers_from_the_csv(redrawn: tuple[list[go.Figure], Path], tmp_path: Path) -> None:
    folder = shutil.copytree(redrawn[1] / "1-image-text-cosine-similarity", tmp_path / "edited")
    path = folder / "trace1_matrix.csv"
    matrix = pd.read_csv(path, index_col=0)
    matrix.iloc[0, 0] = 0.125
    path.write_text(matrix.to_csv(lineterminator="\r\n"), encoding="utf-8")
    subprocess.run([sys.executable, "redraw.py"], cwd=folder, capture_output=True, timeout=120, check=True)
    z = trace_array(pio.read_json(folder / "redrawn.json").data[0].z)
    assert z[0, 0] == 0.125 and np.allclose(z, matrix.to_numpy())


def test_trace_array_reads_plotly_typed_arrays() -> None:
    figure = pio.from_json(go.Figure(go.Heatmap(z=np.arange(6, dtype=np.float32).reshape(2, 3))).to_json())
    assert isinstance(figure.data[0].z, dict)  # {dtype, bdata, shape} as read back from JSON
    np.testing.assert_array_equal(trace_array(figure.data[0].z), np.arange(6).reshape(2, 3))
    assert trace_array("one colour") is None and trace_array(None) is None
