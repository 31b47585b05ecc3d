"""What the table-writing benchmarks share: a figure over seeds, and their table written into the README."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def mean_and_spread(values: list[float]) -> str:
    """Mean ± standard deviation over seeds (NaN values left out; – when none is left)."""
    kept = [value for value in values if not math.isnan(value)]
    if not kept:
        return "–"
    return f"{statistics.mean(kept):.3f}" + (f" ± {statistics.stdev(kept):.3f}" if len(kept) > 1 else "")


def write_readme_block(name: str, markdown: str) -> None:
    """Replace README.md's text between `<!-- NAME:start -->` and `<!-- NAME:end -->` with `markdown`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = README.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no {start} ... {end} markers")
    block = f"{start}\n{markdown}\n{end}"
    README.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))
