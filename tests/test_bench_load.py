"""The load benchmark's pure helpers: what it counts as a leak, a generic error, a server failure."""

from __future__ import annotations

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
