"""What the table-writing benchmarks share: a figure over seeds, and their table written into its docs page.

Each such benchmark owns a page of results, `docs/results/NAME.md`, that says how the table was made and
what it shows; the table itself sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` there and is
rewritten by the benchmark (`--docs`), whatever it shows.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"


def mean_and_spread(values: list[float]) -> str:
    """Mean ± standard deviation over seeds (NaN values left out; – when none is left)."""
    kept = [value for value in values if not math.isnan(value)]
    if not kept:
        return "–"
    return f"{statistics.mean(kept):.3f}" + (f" ± {statistics.stdev(kept):.3f}" if len(kept) > 1 else "")


def results_page(name: str) -> Path:
    """The docs page that shows the table `name`: docs/results/NAME.md."""
    return RESULTS_DIR / f"{name}.md"


def write_results_block(name: str, markdown: str, page: Path | None = None) -> Path:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` of `page` with `markdown`.

    `page` defaults to `results_page(name)`; the page and its markers must exist (its prose is written by
    hand), and nothing outside the markers changes. Returns the page written.
    """
    page = page or results_page(name)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.exists() else ""
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no {start} ... {end} markers")
    block = f"{start}\n{markdown}\n{end}"
    page.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))
    return page
