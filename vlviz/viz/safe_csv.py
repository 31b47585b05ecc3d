"""CSV files that are safe to open in a spreadsheet: user text never runs as a formula (CSV injection)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Text starting with one of these may run as a formula when a CSV is opened in a spreadsheet (CSV injection)."""


def _neutralise(value: object) -> object:
    """Prefix formula-like text with a quote (OWASP's advice); numbers and other values pass unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def write_csv(frame: pd.DataFrame, path: str | Path, *, index: bool = True) -> None:
    """`frame.to_csv(path, index=index)` with formula-like text in cells, index and column labels neutralised.

    Captions and file names are user text, and exports are opened in spreadsheets. Only strings are
    escaped, so -0.5 stays a number. The caller's frame is left unchanged. Lines end in CRLF (RFC 4180),
    which also makes the csv writer quote a caption holding a lone carriage return.
    """
    safe = frame.copy(deep=False)
    for position in range(frame.shape[1]):
        column = frame.iloc[:, position]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            safe.isetitem(position, column.map(_neutralise))
    safe.columns = frame.columns.map(_neutralise).rename(_neutralise(frame.columns.name))
    if index:
        safe.index = frame.index.map(_neutralise).rename(_neutralise(frame.index.name))
    safe.to_csv(path, index=index, lineterminator="\r\n")
