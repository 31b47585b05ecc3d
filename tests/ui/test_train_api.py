"""The Train tab's API: a run streams records through gradio_client, stops cleanly, and its checkpoint loads."""

from __future__ import annotations

import json

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import load_file

import vlviz.ui.runner as runner
import vlviz.ui.session as session
from tests.browser import SCENES
from vlviz.losses import LOSSES
from vlviz.training.runs import WEIGHTS_NAME


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
    assert {
        "image_to_caption_r1",
        "probe_image_to_caption_r1",
        "mean_abs_inconsistency",
        "pointing_game_colour",
    } <= set(records[-1])
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


def _train_until_it_streams(client: Client, steps: int = 400):
    """A long run of this client's session, once it trains (its records stream)."""
    job = client.submit(*_settings(steps=steps, clip=1.0), api_name="/train")
    for update in job:
        if update[-3]:
            return job
    pytest.fail(f"the run ended before it streamed: {job.result()[-4]}")


def test_a_session_trains_one_run_at_a_time_each_with_its_own_number(app_url: str) -> None:
    """Main numbered runs from the event's copy of the run list: two at once were both 'run 1', in one folder."""
    client = Client(app_url, verbose=False)
    job = _train_until_it_streams(client)
    with pytest.raises(AppError, match="This session is already training run 1; stop it or wait for it to end"):
        client.predict(*_settings(steps=1, clip=1.0), api_name="/train")
    assert client.predict(api_name="/stop_training") == "Stopping after the current step…"
    assert "**run 1: clip×1** stopped after" in job.result()[-4]
    status = client.predict(*_settings(steps=1, clip=1.0), api_name="/train")[-4]
    assert "**run 2: clip×1** finished after 1 steps" in status and "`session run 2`" in status
    runs = session.SESSIONS._by_hash[client.session_hash].folder / "runs"
    configs = [json.loads((runs / f"run-{n}" / "run_config.json").read_text())["config"] for n in (1, 2)]
    assert [config["steps"] for config in configs] == [400, 1]  # each run wrote its own folder
    assert all((runs / f"run-{n}" / WEIGHTS_NAME).is_file() for n in (1, 2))


def test_a_new_run_removes_the_sessions_oldest_runs_beyond_its_disk_budget(
    app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Main kept every run until the session's TTL: 74 one-step runs wrote 1.2 GB in two minutes."""
    client = Client(app_url, verbose=False)
    client.predict(*_settings(steps=1, clip=1.0), api_name="/train")
    runs = session.SESSIONS._by_hash[client.session_hash].folder / "runs"
    one_run = runner.folder_bytes(runs)
    monkeypatch.setattr(runner, "SESSION_DISK_BYTES", one_run * 3 // 2)  # room for one run, not two
    updates = list(client.submit(*_settings(steps=1, clip=1.0), api_name="/train"))
    assert "the files of run 1 were removed" in updates[0][-4] and "VLVIZ_SESSION_DISK_MB" in updates[0][-4]
    assert "`session run 2`" in updates[-1][-4]
    assert not (runs / "run-1").exists() and (runs / "run-2" / WEIGHTS_NAME).is_file()
    assert runner.folder_bytes(runs) <= one_run * 3 // 2
    files = [handle_file(str(SCENES / f"scene_{i:02d}.png")) for i in range(2)]
    with pytest.raises(AppError, match=r"session run 1 is no longer stored: .*VLVIZ_SESSION_DISK_MB"):
        client.predict(files, "a red circle\na blue square", "session run 1", "cosine similarity", api_name="/analyze")
    monkeypatch.setattr(runner, "SESSION_DISK_BYTES", one_run // 2)  # less than one run: refused, nothing removed
    with pytest.raises(AppError, match=r"This run needs about \d+ MB of disk; a session keeps at most"):
        client.predict(*_settings(steps=1, clip=1.0), api_name="/train")
    assert (runs / "run-2" / WEIGHTS_NAME).is_file()


def test_new_runs_are_refused_when_every_sessions_runs_fill_the_servers_budget(
    app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "RUNS_DISK_BYTES", 2**20)  # less than any run
    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match=r"all sessions together.*VLVIZ_RUNS_DISK_MB"):
        client.predict(*_settings(steps=1, clip=1.0), api_name="/train")
    assert not (session.SESSIONS._by_hash[client.session_hash].folder / "runs").exists()
