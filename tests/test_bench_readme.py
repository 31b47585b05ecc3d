"""bench.readme: the figures over seeds and the README block the table-writing benchmarks share."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import readme


def test_mean_and_spread_leave_undefined_values_out() -> None:
    assert readme.mean_and_spread([0.5, math.nan, 0.7]) == "0.600 ± 0.141"
    assert readme.mean_and_spread([0.25]) == "0.250"
    assert readme.mean_and_spread([math.nan]) == "–"


def test_the_block_between_the_markers_is_replaced_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "README.md"
    page.write_text("before\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n")
    monkeypatch.setattr(readme, "README", page)
    readme.write_readme_block("t", "| a |\n|---|")
    assert page.read_text() == "before\n<!-- t:start -->\n| a |\n|---|\n<!-- t:end -->\nafter\n"
    with pytest.raises(SystemExit, match="markers"):
        readme.write_readme_block("other", "x")
