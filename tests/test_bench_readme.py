"""bench.readme: the figures over seeds, and the results block the table-writing benchmarks write into docs/."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from bench import readme

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_mean_and_spread_leave_undefined_values_out() -> None:
    assert readme.mean_and_spread([0.5, math.nan, 0.7]) == "0.600 ± 0.141"
    assert readme.mean_and_spread([0.25]) == "0.250"
    assert readme.mean_and_spread([math.nan]) == "–"


def test_the_block_between_the_markers_is_replaced_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readme, "RESULTS_DIR", tmp_path)
    page = tmp_path / "t.md"
    page.write_text("before\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n")
    assert readme.write_results_block("t", "| a |\n|---|") == page
    assert page.read_text() == "before\n<!-- t:start -->\n| a |\n|---|\n<!-- t:end -->\nafter\n"
    with pytest.raises(SystemExit, match="markers"):
        readme.write_results_block("other", "x", page=page)
    with pytest.raises(SystemExit, match="markers"):
        readme.write_results_block("missing", "x")  # no page: nothing is created
    assert not (tmp_path / "missing.md").exists()


def test_every_table_a_benchmark_writes_has_its_page_with_markers() -> None:
    names = set()
    for script in BENCH.glob("*.py"):
        names |= set(re.findall(r'write_results_block\("(\w+)"', script.read_text()))
    assert {"ablation", "grounding", "grounded_model", "draw_engines", "dataset"} <= names, names
    for name in names:  # a table lives on its results page, or on the docs page of the same name (docs/dataset.md)
        page = readme.results_page(name)
        text = (page if page.exists() else BENCH.parent / "docs" / f"{name}.md").read_text()
        assert text.count(f"<!-- {name}:start -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, name
    assert "<!--" not in (BENCH.parent / "README.md").read_text().replace("<!-- ci: test command", "")
