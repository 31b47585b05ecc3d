"""The load benchmark's pure helpers: what it counts as a leak, a generic error, a server failure; and its
attacker's (bench.attacks): the attack files are what they claim, and each answer gets the outcome it deserves."""

from __future__ import annotations

import tarfile
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench.attacks import (
    ACCEPTED,
    FILE_READ,
    HELD,
    LEAK,
    MB,
    NOT_RUN,
    REFUSED,
    UNEXPECTED,
    Answer,
    PrivateHost,
    RawSession,
    classify,
    cost_outcome,
    endpoints,
    escape_path,
    host_outcome,
    probe_outcome,
    unescaped_html,
    worst,
    write_caption_bomb,
    write_cells_bomb,
    write_png_tar,
    write_private_files,
    write_zero_targz,
)
from bench.load import (
    caption_owner,
    final_exceptions,
    foreign_items,
    image_windows,
    is_generic_error,
    is_refusal,
    percentile,
    tagged_caption,
)


def test_percentile_interpolates_and_handles_no_values() -> None:
    assert percentile([], 95) is None
    assert percentile([3.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95


def test_only_gradios_fallback_messages_are_generic() -> None:
    generic = "The upstream Gradio app has raised an exception but has not enabled verbose error reporting."
    assert is_generic_error(generic) and is_generic_error("Error") and is_generic_error(None)
    assert not is_generic_error("2 images but 1 caption: give one caption per image")


def test_foreign_captions_and_names_are_leaks() -> None:
    assert caption_owner(tagged_caption("a red circle", "c3")) == "c3"
    assert foreign_items(["a red circle c3"], ["c3_scene_00.png"], "c3") == []
    leaks = foreign_items(["a red circle c4", "a blue square"], ["c4_scene_01.png"], "c3")
    assert len(leaks) == 3  # another client's caption, an untagged caption, another client's file


def test_client_windows_are_distinct() -> None:
    names = [f"scene_{i:02d}.png" for i in range(24)]
    windows = image_windows(8, 3, names)
    assert len({tuple(w) for w in windows}) == 8 and all(len(w) == 3 for w in windows)
    assert len({n for w in windows for n in w}) == 24  # 8 x 3 fit: disjoint


def test_final_exceptions_reads_one_line_per_chain() -> None:
    log = """Traceback (most recent call last):
  File "a.py", line 1, in f
ValueError: bad

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "b.py", line 2, in g
gradio.exceptions.Error: 'bad'
Traceback (most recent call last):
  File "c.py", line 3, in h
IndexError: index 1 is out of bounds
"""
    found = final_exceptions(log)
    assert [line for line, _ in found] == ["gradio.exceptions.Error: 'bad'", "IndexError: index 1 is out of bounds"]
    assert found[1][1] == ['File "c.py", line 3, in h']
    assert is_refusal(found[0][0]) and not is_refusal(found[1][0])


def test_the_load_test_sends_loss_weights_in_the_registry_order() -> None:
    """bench.load spells the registry's names out (it imports no torch): they must be the `/train` API's order."""
    from bench.load import LOSS_NAMES
    from vlviz.losses import LOSSES

    assert tuple(LOSSES) == LOSS_NAMES


def test_rss_is_held_to_the_configured_budget_plus_slack() -> None:
    from bench.load import budget_report, memory_budget_mb

    assert memory_budget_mb({"VLVIZ_MEMORY_BUDGET_MB": "2048"}, {"VLVIZ_MEMORY_BUDGET_MB": "1"}) == 2048
    assert memory_budget_mb({}, {"VLVIZ_MEMORY_BUDGET_MB": "1024"}) == 1024
    assert memory_budget_mb({}, {}) is None and memory_budget_mb({}, {"VLVIZ_MEMORY_BUDGET_MB": "lots"}) is None
    samples = [1000 * 2**20, 1600 * 2**20, 1400 * 2**20]
    report = budget_report(samples, 1000)
    assert report["limit_mb"] == 1500 and report["samples_over_limit"] == 1 and report["peak_mb"] == 1600
    assert budget_report(samples, None)["samples_over_limit"] is None  # no budget: RSS only


def test_slowdown_ratio_and_queue_full_count() -> None:
    from bench.load import Stats, p95_ratio

    assert p95_ratio(0.9, 0.3) == 3.0 and p95_ratio(None, 0.3) is None and p95_ratio(0.9, None) is None
    stats = Stats()
    stats.unexpected_error("analyze", "c0", "QueueError: Queue is full! Please try again.")
    stats.unexpected_error("analyze", "c0", "TimeoutError: no answer")
    assert stats.http_503 == 1


GENERIC = "The upstream Gradio app has raised an exception but has not enabled verbose error reporting."


def test_the_zero_member_is_declared_in_full_and_compressed_a_thousandfold(tmp_path: Path) -> None:
    path = write_zero_targz(tmp_path / "zeros.tar.gz", 32 * MB)
    assert path.stat().st_size < 32 * MB / 500
    with tarfile.open(path, "r:gz") as archive:
        members = {m.name: m.size for m in archive.getmembers()}
    assert members["0000.bin"] == 32 * MB and {"0001.png", "0001.txt"} <= set(members)


def test_the_parquet_bombs_are_small_files_that_declare_large_captions(tmp_path: Path) -> None:
    caption = write_caption_bomb(tmp_path / "caption.parquet", 8 * MB)
    assert caption.stat().st_size < 20_000  # 8 MB of one letter, and a 7.5 KB image
    chunk = pq.ParquetFile(caption).metadata.row_group(0).column(1)
    assert chunk.total_uncompressed_size >= 8 * MB
    cells = write_cells_bomb(tmp_path / "cells.parquet", 16, 2 * MB)
    assert cells.stat().st_size < 20_000
    table = pq.read_table(cells)
    assert table.num_rows == 16 and all(len(c) == 2 * MB for c in table.column("caption").to_pylist())


def test_the_png_tar_is_small_and_its_images_large(tmp_path: Path) -> None:
    from PIL import Image

    path = write_png_tar(tmp_path / "pngs.tar", count=3, side=256)
    with tarfile.open(path) as archive:
        names = archive.getnames()
        image = Image.open(archive.extractfile("0002.png"))
        assert image.size == (256, 256)
    assert names == ["0000.png", "0000.txt", "0001.png", "0001.txt", "0002.png", "0002.txt"]


def test_the_private_files_name_the_secret(tmp_path: Path) -> None:
    tar, parquet = write_private_files(tmp_path / "private", "s3cret")
    with tarfile.open(tar) as archive:
        assert b"s3cret" in archive.extractfile("private.txt").read()
    assert "s3cret" in pq.read_table(parquet).column("image")[0].as_py()


def test_the_escape_path_names_gradios_folder_and_leaves_it_when_expanded(tmp_path: Path) -> None:
    cache, target = tmp_path / "gradio", tmp_path / "private" / "secret.tar"
    path = escape_path(cache, target)
    assert path == f"{cache}/{{..,..}}/private/secret.tar" and path.startswith(str(cache))
    with pytest.raises(ValueError):
        escape_path(cache, cache / "inside.tar")


def test_outcomes_put_secrets_and_server_paths_first() -> None:
    assert classify(Answer(data=["the private caption s3"]), hidden=["s3"]) == FILE_READ
    assert classify(Answer(error="row 0 names /s3/photo.png"), hidden=["s3"]) == FILE_READ  # a refusal that quotes
    assert classify(Answer(logs=["not available: /data/sessions/ab/runs/run-1"]), leaks=["/sessions/"]) == LEAK
    assert classify(Answer(error="secret.tar is not a file uploaded to this server")) == REFUSED
    assert classify(Answer(error=GENERIC)) == UNEXPECTED and classify(Answer(error="None")) == UNEXPECTED
    assert classify(Answer(data=[1])) == HELD and classify(Answer(data=[1]), if_answered=ACCEPTED) == ACCEPTED
    assert classify(Answer(failure="no answer within 120 s")) == UNEXPECTED
    assert classify(Answer(failure="no answer"), if_no_answer=ACCEPTED) == ACCEPTED


def test_a_bomb_that_cost_time_or_memory_went_off_even_when_refused() -> None:
    assert cost_outcome(REFUSED, 0.4, 5) == REFUSED
    assert cost_outcome(REFUSED, 2.0, 1200) == ACCEPTED  # refused only after materialising it
    assert cost_outcome(HELD, 150, 0) == ACCEPTED  # read through: 150 s of CPU
    assert cost_outcome(UNEXPECTED, 150, 0) == UNEXPECTED


def test_the_folder_probe_compares_masked_answers() -> None:
    names = ("probe-aaaa", "probe-bbbb")
    same = [Answer(error=f"{n}/x.tar is not a file uploaded to this server") for n in names]
    assert probe_outcome(*same, names) == REFUSED
    assert probe_outcome(Answer(data=[1]), Answer(error="probe-bbbb/x.tar does not exist"), names) == LEAK


def test_only_text_outputs_with_live_tags_are_unescaped_html() -> None:
    outputs = [
        "a red circle &lt;img src=x&gt;",
        {"data": [{"text": ["<img src=x>"]}]},  # a plotly figure: drawn as text
        {"__type__": "update", "value": "note: <form><input type=password></form>"},
        "a blue square <video src=y autoplay>",
        None,
    ]
    assert len(unescaped_html(outputs)) == 2 and unescaped_html(None) == []


def test_worst_orders_outcomes_by_harm() -> None:
    assert worst([REFUSED, HELD]) == HELD and worst([HELD, ACCEPTED, LEAK]) == LEAK
    assert worst([UNEXPECTED, FILE_READ]) == FILE_READ and worst([]) == NOT_RUN


def test_forged_hosts_must_be_refused() -> None:
    assert host_outcome(403) == REFUSED and host_outcome(400) == REFUSED
    assert host_outcome(200) == ACCEPTED and host_outcome(500) == UNEXPECTED


def test_events_are_found_by_name_with_their_state_inputs() -> None:
    config = {
        "components": [{"id": 1, "type": "file"}, {"id": 2, "type": "state"}, {"id": 3, "type": "textbox"}],
        "dependencies": [
            {"id": 7, "api_name": "analyze", "inputs": [1, 3, 2]},
            {"id": 8, "api_name": "open_as_talk", "inputs": [2]},
            {"id": 9, "api_name": None, "inputs": []},
        ],
    }
    api = endpoints(config)
    assert set(api) == {"analyze", "open_as_talk"} and api["analyze"].fn_index == 7
    assert api["analyze"].fill(["f", "captions"]) == ["f", "captions", None] and api["open_as_talk"].fill([]) == [None]


def test_stream_messages_end_their_events() -> None:
    answers, pending = {"e1": Answer(), "e2": Answer()}, {"e1", "e2"}
    RawSession._note({"msg": "log", "event_id": "e1", "log": "a warning"}, answers, pending, 0.1)
    RawSession._note({"msg": "process_completed", "event_id": "e1", "success": True, "output": {"data": [1]}},
                     answers, pending, 0.5)  # fmt: skip
    RawSession._note({"msg": "process_completed", "event_id": "e2", "success": False, "output": {"error": None}},
                     answers, pending, 0.7)  # fmt: skip
    assert not pending and answers["e1"].data == [1] and answers["e1"].logs == ["a warning"]
    assert answers["e1"].seconds == 0.5 and classify(answers["e2"]) == UNEXPECTED


def test_the_private_host_serves_the_tar_and_counts_fetches(tmp_path: Path) -> None:
    served = tmp_path / "secret.tar"
    served.write_bytes(b"tar bytes")
    host = PrivateHost(served)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/secret.tar", timeout=10) as response:
            assert response.read() == b"tar bytes"
        assert host.hits == 1
    finally:
        host.close()


def test_a_disk_budget_shows_as_a_refusal_or_as_removed_runs() -> None:
    from bench.attacks import disk_outcome

    run = 16 * MB
    assert disk_outcome(5, [run, 2 * run, 3 * run, 4 * run, 5 * run], None)[0] == ACCEPTED  # every run kept
    assert disk_outcome(5, [run, 2 * run, 3 * run, 3 * run, 3 * run], None)[0] == HELD  # the oldest removed
    assert disk_outcome(3, [run, 2 * run, 3 * run], "This session keeps at most 32 MB of runs")[0] == REFUSED
    assert disk_outcome(4, [None, 2 * run, 3 * run, 2 * run], None)[0] == HELD  # run-1 is every session's
    assert disk_outcome(1, [run], None)[0] == NOT_RUN and disk_outcome(3, [None, None, run], None)[0] == NOT_RUN
