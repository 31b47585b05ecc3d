"""Redraw a vlviz figure from its numbers, with plotly and pandas alone (no vlviz needed).

    python redraw.py [FOLDER]    FOLDER holds figure.json; the default is this script's own folder.

figure.json is the figure as plotly writes it: layout, trace styles and the "vlviz" template (fonts,
colour scales). Each traceN_KIND file replaces the numbers of trace N (counted from 1) with its own,
so edit them and run again:
  traceN_matrix.csv  a heatmap's matrix: row labels are its y, column labels its x;
  traceN_points.csv  one row per point; each column fills the trace property it is named after
                     (x, y, text, hovertext, marker.color, marker.size);
  traceN_image.png   an image trace's picture (or .jpeg, .webp: as the figure held it).
Traces without such a file are drawn as figure.json has them. Text cells that began with =, +, -, @
were written with a leading ' so that spreadsheets show them instead of running them as formulas.
Writes redrawn.json, and redrawn.svg when plotly can export images (pip install kaleido), else
redrawn.html (opens offline).
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pandas as pd
import plotly.io as pio
from plotly.basedatatypes import BaseTraceType

TRACE_FILE = re.compile(r"trace(\d+)_(matrix|points|image)\.(\w+)")
TEXT_COLUMNS = {"text": str, "hovertext": str}  # read as text even when every cell looks like a number


def labels(values: pd.Index) -> list:
    """Axis labels read back from CSV: numbers when every label is one, else text."""
    numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    return numbers.tolist() if numbers.notna().all() else [str(value) for value in values]


def fill(trace: BaseTraceType, kind: str, path: Path) -> None:
    """Replace one trace's numbers with those in its file."""
    if kind == "image":
        picture = base64.b64encode(path.read_bytes()).decode("ascii")
        trace.source = f"data:image/{path.suffix[1:]};base64,{picture}"
    elif kind == "matrix":
        matrix = pd.read_csv(path, index_col=0, keep_default_na=False, na_values=[""])
        trace.update(z=matrix.to_numpy(dtype=float), x=labels(matrix.columns), y=labels(matrix.index))
    else:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=TEXT_COLUMNS)
        for column in table.columns:
            values = table[column]
            numeric = pd.api.types.is_numeric_dtype(values)
            trace[column] = values.to_numpy() if numeric else values.fillna("").tolist()


def redraw(folder: Path) -> Path:
    """Read figure.json and the trace files in `folder`; write redrawn.json and redrawn.svg (or .html)."""
    figure = pio.read_json(folder / "figure.json")
    for path in sorted(folder.iterdir()):
        found = TRACE_FILE.fullmatch(path.name)
        if found:
            fill(figure.data[int(found[1]) - 1], found[2], path)
    (folder / "redrawn.json").write_text(figure.to_json(), encoding="utf-8")
    try:
        figure.write_image(folder / "redrawn.svg")
        return folder / "redrawn.svg"
    except Exception as error:  # no kaleido, or no browser for it to draw with
        print(f"No SVG ({' '.join(str(error).split())}); writing redrawn.html instead.", file=sys.stderr)
    figure.write_html(folder / "redrawn.html", include_plotlyjs=True)
    return folder / "redrawn.html"


if __name__ == "__main__":
    print(redraw(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent))
