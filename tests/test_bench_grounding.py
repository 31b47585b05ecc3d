"""bench.grounding's bookkeeping: runs resume from the results file, and the table groups them by seed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import grounding

FIGURES = dict.fromkeys(grounding.FIGURES, 0.5)


def _args(results: Path, **overrides: object) -> argparse.Namespace:
    settings = {"steps": 300, "batch_size": 32, "lr": 5e-4, "seeds": [0, 1], "starts": ["scratch"],
                "captions": ["varied"], "settings": ["CLIP"], "results": results}  # fmt: skip
    return argparse.Namespace(**(settings | overrides))


def _row(seed: int, value: float, steps: int = 300, setting: str = "CLIP") -> dict:
    return {"start": "scratch", "captions": "varied", "setting": setting, "seed": seed, "steps": steps,
            "batch_size": 32, "lr": 5e-4, "step0": FIGURES, "last": dict.fromkeys(grounding.FIGURES, value)}  # fmt: skip


def test_runs_in_the_results_file_are_not_trained_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "grounding.jsonl"
    results.write_text(json.dumps(_row(0, 0.1)) + "\n" + json.dumps(_row(1, 0.2, steps=5)) + "\n")
    trained = []

    def fake_run(start: str, captions: str, setting: tuple, args: object, seed: int) -> list[dict]:
        trained.append(seed)
        return [FIGURES, dict.fromkeys(grounding.FIGURES, 0.3)]

    monkeypatch.setattr(grounding, "run_one", fake_run)
    rows = grounding.run_all(_args(results))
    assert trained == [1]  # seed 0 at 300 steps was done; seed 1 only at another budget
    assert len(rows) == 3 and len(results.read_text().splitlines()) == 3
    table = grounding.table(rows, _args(results))
    assert "| scratch | varied | untrained (2) |" in table  # step 0 of both seeds at this budget
    assert "| scratch | varied | CLIP (2) | 0.200 ± 0.141 |" in table  # 0.1 and 0.3; the 5-step run left out


def test_the_share_of_peaks_on_an_object_is_pointing_over_object_accuracy() -> None:
    assert (
        grounding.with_derived({"pointing_game_colour": 0.2, "object_accuracy_colour": 0.8})["on_object_colour"] == 0.25
    )
    assert (
        grounding.with_derived({"pointing_game_colour": 0.0, "object_accuracy_colour": None})["on_object_colour"]
        is None
    )
