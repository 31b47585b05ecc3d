"""`python -m vlviz explore FOLDER`: the folder is opened (its map built) before the app starts on it, and a bad
folder ends with its message, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import vlviz.cli.explore as explore
import vlviz.cli.main
import vlviz.embedding.layout_store as layout_store
import vlviz.ui
from tests.embedding.test_embeddings_store import write_scene_shards
from vlviz.cli.main import main
from vlviz.embedding import space
from vlviz.embedding.dataset import MANIFEST_FILE
from vlviz.models.loading import OFFLINE_SPEC

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_line_hands_explore_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    handed = []
    monkeypatch.setattr(vlviz.cli.main.os, "execv", lambda path, argv: handed.append((path, argv)))
    main(["explore", "folder", "--model", "vlviz-scenes", "--port", "7999"])
    assert handed == [
        (
            sys.executable,
            [sys.executable, "-m", "vlviz.cli.explore", "folder", "--model", "vlviz-scenes", "--port", "7999"],
        )
    ]


def test_explore_builds_the_map_then_serves_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, out = write_scene_shards(tmp_path / "data", n=12), tmp_path / "embeddings"
    assert main(["embed", "--model", OFFLINE_SPEC, "--data", source, "--out", str(out), "--shard-size", "8"]) == 0
    assert "layout" not in json.loads((out / MANIFEST_FILE).read_text())["built"]
    monkeypatch.setattr(
        layout_store, "fit_layout", lambda i, t, *_: space.fit_layout(i, t, space.LayoutSettings("pca"))
    )
    served = {}

    def build_app(model_spec: str, initial_sample: str | None, datasets: list[str]) -> SimpleNamespace:
        served.update(model=model_spec, sample=initial_sample, datasets=datasets)
        return SimpleNamespace(launch=lambda **kwargs: served.update(port=kwargs["server_port"]))

    monkeypatch.setattr(vlviz.ui, "build_app", build_app)
    assert explore.main([str(out), "--port", "7999"]) == 0
    assert served == {"model": OFFLINE_SPEC, "sample": None, "datasets": [str(out)], "port": 7999}
    assert "layout" in json.loads((out / MANIFEST_FILE).read_text())["built"]  # the page opens without waiting


def test_a_bad_folder_ends_with_its_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vlviz", "explore", str(tmp_path / "nothing")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: nothing holds no index.json: write it with `python -m vlviz embed`" in done.stderr
