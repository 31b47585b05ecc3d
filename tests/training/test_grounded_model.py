"""The grounded offline model's recipe: a continual run from vlviz-scenes that saves where its maps are read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from vlviz.cli.main import main
from vlviz.models.loading import GROUNDED_SPEC, load_model
from vlviz.models.towers import TokenReadout, token_readout
from vlviz.training.grounded_model import GROUNDED_MODEL_TRAIN_CONFIG, build_grounded_model


def test_the_recipe_saves_a_model_that_reads_its_maps_before_the_blocks(tmp_path: Path) -> None:
    config = replace(GROUNDED_MODEL_TRAIN_CONFIG, steps=2, batch_size=4, eval_every=2)
    records = list(build_grounded_model(tmp_path / "grounded", config))
    assert records[0]["step"] == 0 and records[-1]["step"] == 2
    model = load_model(str(tmp_path / "grounded"), device="cpu")
    assert token_readout(model.model) == TokenReadout(0, 0)
    saved = json.loads((tmp_path / "grounded" / "train_config.json").read_text())
    assert saved["start"] == "vlviz-scenes" and saved["losses"] == {"word_region": 1.0}
    log = (tmp_path / "grounded" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [0, 2]


def test_the_shipped_grounded_model_loads_with_its_readout() -> None:
    model = load_model(GROUNDED_SPEC, device="cpu")
    assert token_readout(model.model) == TokenReadout(0, 0)


def test_build_offline_model_takes_the_grounded_recipe(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["build-offline-model", "--grounded", "--steps", "1", "--batch-size", "4", "--out", str(out)]) == 0
    assert token_readout(load_model(str(out), device="cpu").model) == TokenReadout(0, 0)


def test_the_shipped_grounded_model_points_at_the_named_colour_where_its_twin_does_not() -> None:
    from vlviz.data.sources import SceneSource
    from vlviz.grounding.maps import untrained_model
    from vlviz.models.towers import preprocess_stats
    from vlviz.training.evaluation import evaluate

    model = load_model(GROUNDED_SPEC, device="cpu")
    held_out = SceneSource(64, *preprocess_stats(model.model), held_out=256, captions="varied").held_out
    grounded = evaluate(model.model, model.tokenizer, held_out)
    twin = evaluate(untrained_model(model).model, model.tokenizer, held_out)
    assert grounded["pointing_game_colour"] >= 0.75 > twin["pointing_game_colour"] + 0.3, (grounded, twin)
    assert grounded["object_accuracy_colour"] >= 0.8 > twin["object_accuracy_colour"]
    assert grounded["blank_peak_share_colour"] <= 0.2
