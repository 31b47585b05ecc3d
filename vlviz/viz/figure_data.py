"""A figure's numbers and a script that redraws them, for papers: one folder per figure, or a zip of them.

Each figure becomes figure.json (plotly's own JSON: layout, trace styles, the "vlviz" template),
one file per trace with its numbers, and redraw.py, which reads them back and redraws the figure
with plotly and pandas alone. redraw.py is `vlviz.viz.redraw_figure` copied as it is: the same code
for every figure, so no caption or file name ever becomes code; they reach it only through the CSVs.

Trace N (counted from 1, in drawing order) gets, by what it holds:
- traceN_matrix.csv for a heatmap or contour: its z, rows labelled by y and columns by x;
- traceN_points.csv for any other trace with x or y arrays (scatter, scattergl, bar, ...): one row
  per point, with x, y and, where they vary from point to point, text, hovertext, marker.color and
  marker.size;
- traceN_image.png (.jpeg, ...) for an image trace whose source is a data URI: its picture, as it is;
- nothing otherwise: it stays as figure.json has it.
CSVs go through `write_csv`: text that a spreadsheet would run as a formula starts with a quote.
"""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.basedatatypes import BaseTraceType

from vlviz.viz.safe_csv import write_csv

MATRIX_TRACES = ("heatmap", "contour")
POINT_COLUMNS = ("x", "y", "text", "hovertext", "marker.color", "marker.size")
REDRAW_SCRIPT = Path(__file__).with_name("redraw_figure.py")
DATA_URI = re.compile(r"data:image/(\w+);base64,(.*)", re.DOTALL)
ZIP_README = """Each folder holds one figure: figure.json (plotly's JSON of it), one CSV per trace with its
numbers (an image trace's picture as an image file), and redraw.py, which redraws the figure from
them with plotly and pandas: `python redraw.py` in the folder. Its docstring says what each file holds.
"""


def trace_array(value: object) -> np.ndarray | None:
    """A trace property as an array, or None when it is not one (unset, a scalar, one colour for all).

    Reads numpy arrays, lists and plotly's base64 typed arrays ({dtype, bdata, shape}), which figures read
    back from JSON hold.
    """
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return array.reshape([int(size) for size in str(shape).split(",")]) if shape else array
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray(value)
    return None


def _matrix(trace: BaseTraceType) -> pd.DataFrame:
    """A heatmap's z with its y labels as rows and x labels as columns (positions when it has none)."""
    z = trace_array(trace.z)
    z = z if z.dtype.kind == "f" else np.array(z.tolist(), dtype=float)  # None cells become NaN
    x, y = trace_array(trace.x), trace_array(trace.y)
    return pd.DataFrame(
        z, index=range(z.shape[0]) if y is None else y.tolist(), columns=range(z.shape[1]) if x is None else x.tolist()
    )


def _points(trace: BaseTraceType) -> pd.DataFrame | None:
    """One row per point: x and y, and the per-point properties of the same length; None without x or y arrays."""
    columns = {name: trace_array(trace[name]) for name in POINT_COLUMNS if name in trace}
    columns = {name: values for name, values in columns.items() if values is not None and values.ndim == 1}
    if "x" not in columns and "y" not in columns:
        return None
    n = len(columns["x"] if "x" in columns else columns["y"])
    return pd.DataFrame({name: values for name, values in columns.items() if len(values) == n})


def _write_trace(folder: Path, number: int, trace: BaseTraceType) -> Path | None:
    """Write one trace's numbers (see the module docstring); None when they stay in figure.json only."""
    if trace.type == "image":
        found = DATA_URI.fullmatch(trace.source or "")
        if not found:
            return None
        path = folder / f"trace{number}_image.{found[1]}"
        path.write_bytes(base64.b64decode(found[2]))
        return path
    if trace.type in MATRIX_TRACES and trace.z is not None:
        path = folder / f"trace{number}_matrix.csv"
        write_csv(_matrix(trace), path)
        return path
    table = _points(trace)
    if table is None:
        return None
    path = folder / f"trace{number}_points.csv"
    write_csv(table, path, index=False)
    return path


def write_figure_data(folder: str | Path, figure: go.Figure) -> list[Path]:
    """Write `figure` as figure.json, its numbers (one file per trace) and redraw.py into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "figure.json", folder / "redraw.py"]
    paths[0].write_text(figure.to_json(), encoding="utf-8")
    shutil.copyfile(REDRAW_SCRIPT, paths[1])
    for number, trace in enumerate(figure.data, start=1):
        path = _write_trace(folder, number, trace)
        if path is not None:
            paths.append(path)
    return paths


def figure_folder_name(number: int, figure: go.Figure) -> str:
    """A folder name for the figure: its number and its title in lowercase ASCII words (no user-chosen path)."""
    title = re.sub(r"<[^>]*>", " ", figure.layout.title.text or "")
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48].rstrip("-")
    return f"{number}-{words}" if words else f"{number}-figure"


def write_figures_zip(path: str | Path, figures: Sequence[go.Figure]) -> Path:
    """One zip holding a `write_figure_data` folder per figure (named by `figure_folder_name`) and a README."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", ZIP_README)
        for number, figure in enumerate(figures, start=1):
            name = figure_folder_name(number, figure)
            for file in write_figure_data(Path(scratch) / name, figure):
                archive.write(file, f"{name}/{file.name}")
    return path
