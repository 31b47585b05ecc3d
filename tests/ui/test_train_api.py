"""The Train tab's API: a run streams records through gradio_client, stops cleanly, and its checkpoint loads."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import load_file

from tests.browser import SCENES
from vlviz.losses import LOSSES


def _settings(steps: int, batch_size: int = 8, data: str = "scenes", **weights: float) -> list:
    loss_weights = [weights.get(name, 0.0) for name in LOSSES]
    return [
        "offline scenes model",
        data,
        "all",
        steps,
        batch_size,
        1e-4,
        2,
        0,
        "l1",
        "vlviz-scenes",
        *loss_weights,
    ]


def test_train_streams_updates_and_ends_with_a_checkpoint(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    job = client.submit(*_settings(steps=4, clip=1.0), api_name="/train")
    updates = list(job)
    assert len(updates) >= 2  # streamed while training, not only at the end
    *_, status, records, checkpoint, _chosen = updates[-1]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert "finished after 4 steps" in status
    assert {"image_to_text_r1", "probe_image_to_text_r1", "mean_abs_inconsistency", "pointing_game_colour"} <= set(
        records[-1]
    )
    assert "visual.proj" in load_file(checkpoint)  # the downloadable weights
    assert "`session run 1`" in status and "/" not in status  # named for this session, no server path
    # The same session loads its checkpoint by that name; the status shows the name, not the folder.
    files = [handle_file(str(SCENES / f"scene_{i:02d}.png")) for i in range(2)]
    result = client.predict(
        files, "a red circle\na blue square", "session run 1", "cosine similarity", api_name="/analyze"
    )
    assert result[5]["model"] == "session run 1" and "`session run 1`" in result[6]


def test_bad_settings_get_clear_errors(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="Give at least one loss"):
        client.predict(*_settings(steps=4), api_name="/train")
    with pytest.raises(AppError, match="batch_size 64 is larger than the 6 training pairs"):
        client.predict(*_settings(steps=4, batch_size=64, data="photos", clip=1.0), api_name="/train")


def test_stop_ends_the_run_and_keeps_its_checkpoint(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    job = client.submit(*_settings(steps=400, clip=1.0), api_name="/train")
    for update in job:
        records = update[-3]
        if records and records[-1]["step"] >= 5:
            assert "Stopping" in client.predict(api_name="/stop_training")
            break
    *_, status, records, checkpoint, _chosen = job.result()
    assert "stopped after" in status and len(records) < 400 and checkpoint


def test_stop_without_a_run_says_so(app_url: str) -> None:
    assert Client(app_url, verbose=False).predict(api_name="/stop_training") == "No run is training in this session."


def test_compare_start_and_trained_models_side_by_side(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="No finished run to compare"):
        client.predict([], api_name="/compare_models")
    client.predict(*_settings(steps=2, clip=1.0), api_name="/train")
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        client.predict([], api_name="/compare_models")
    files = [handle_file(str(SCENES / f"scene_{i:02d}.png")) for i in range(3)]
    client.predict(
        files, "a red circle\na blue square\na white cross", "vlviz-scenes", "cosine similarity", api_name="/analyze"
    )
    figures = client.predict([], api_name="/compare_models")
    assert len(figures) == 6 and all(figure is not None for figure in figures)


def test_the_lens_and_wise_ft_on_a_trained_run(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    client.predict(*_settings(steps=3, clip=1.0), api_name="/train")
    files = [handle_file(str(SCENES / f"scene_{i:02d}.png")) for i in range(4)]
    captions = "a red circle\na blue square\na white cross\na green triangle"
    client.predict(files, captions, "vlviz-scenes", "cosine similarity", api_name="/analyze")
    with pytest.raises(AppError, match="greater than maximum"):
        client.predict([], 1.5, api_name="/lens")
    movement, affinity, inconsistency, grounding, moved, curve, summary = client.predict([], 0.5, api_name="/lens")
    assert all(figure is not None for figure in (movement, affinity, inconsistency, grounding, curve))
    assert len(moved["data"]) == 4 and "α=0.5" in summary and "bundled scenes" in summary
    path = json.loads(curve["plot"])["data"]
    assert all(trace["x"] == [0.0, 0.25, 0.5, 0.75, 1.0] for trace in path)
    retention = path[2]["y"]
    assert retention[0] == 1.0  # the start model keeps all it knew
