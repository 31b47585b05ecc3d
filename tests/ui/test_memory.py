"""vlviz.ui.memory: what visitors make the server hold counts in bytes, per session and for the process."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.conftest import SCENE_CAPTIONS, SCENES_DIR
from vlviz.data.inputs import InputError
from vlviz.ui import memory
from vlviz.ui.memory import MB, KeptAnalyses, MemoryLedger

SERIALS = iter(range(10**6, 10**7))


def fake_analysis(nbytes: int) -> SimpleNamespace:
    """What the ledger reads of an analysis: its serial and its bytes."""
    return SimpleNamespace(serial=next(SERIALS), nbytes=nbytes)


def test_an_analysis_takes_its_bytes_as_it_decodes_and_holds_what_it_kept() -> None:
    ledger = MemoryLedger(budget=100 * MB, session_budget=40 * MB)
    with ledger.reserve("a") as room, ledger.reserve("b") as other:  # two at once: nothing set aside up front
        room.take(30 * MB, "a's images")
        other.take(30 * MB, "b's images")
        assert ledger.used() == 60 * MB
        with pytest.raises(InputError, match=r"a's images take 41 MB in memory, more than the 40 MB"):
            room.take(11 * MB, "a's images")  # its session's budget
        ledger.hold("a", fake_analysis(30 * MB))
    assert ledger.used() == 30 * MB
    ledger.hold("a", fake_analysis(10 * MB))  # the next analysis replaces it
    assert ledger.used() == 10 * MB
    ledger.release("a")
    assert ledger.used() == 0


def test_the_process_budget_caps_every_session_and_refuses_when_full() -> None:
    ledger = MemoryLedger(budget=100 * MB, session_budget=60 * MB)
    ledger.hold("a", fake_analysis(60 * MB))
    with ledger.reserve("b") as room:
        with pytest.raises(InputError, match=r"more than the 40 MB this server keeps"):
            room.take(50 * MB, "b's images")  # what the process has left
        room.take(35 * MB, "b's images")
        ledger.hold("b", fake_analysis(35 * MB))
    with pytest.raises(gr.Error, match="holds as many pairs as it can right now"), ledger.reserve("c"):
        pass
    assert ledger.used() == 95 * MB  # a refusal takes nothing


def test_kept_analyses_count_once_are_capped_per_session_and_evicted_oldest_first() -> None:
    ledger = MemoryLedger(budget=100 * MB, session_budget=60 * MB)
    kept = KeptAnalyses(ledger, ttl_s=3600)
    shown = fake_analysis(20 * MB)
    ledger.hold("a", shown)
    token = kept.put(shown, "vlviz-scenes", "a")
    assert kept.put(shown, "vlviz-scenes", "a") == token  # the same link twice: one entry
    assert ledger.used() == 20 * MB  # on screen and kept: counted once
    tokens = [kept.put(fake_analysis(MB), "m", "a") for _ in range(memory.MAX_KEPT_PER_SESSION)]
    assert kept.get(token) is None and all(kept.get(t) for t in tokens)  # the session's oldest went
    other = kept.put(fake_analysis(10 * MB), "m", "b")
    ledger.hold("c", fake_analysis(60 * MB))
    with ledger.reserve("d") as room:  # room is made by dropping kept analyses, oldest first
        room.take(20 * MB, "d's images")
    assert kept.get(tokens[0]) is None and kept.get(other) is None


def test_one_address_shares_one_budget_among_its_sessions_on_a_public_server() -> None:
    ledger = MemoryLedger(budget=100 * MB, session_budget=40 * MB, address_budget=50 * MB)
    kept = KeptAnalyses(ledger, ttl_s=3600)
    ledger.hold("a", fake_analysis(30 * MB), address="10.0.0.9")
    kept.put(fake_analysis(15 * MB), "m", "a")  # a link counts against the address of its session
    assert ledger.used("10.0.0.9") == 45 * MB
    with pytest.raises(gr.Error, match="your sessions' analyses"), ledger.reserve("b", address="10.0.0.9"):
        pass  # a fresh session of the same address: 5 MB left, under the minimum
    with ledger.reserve("c", address="10.0.0.7") as room:  # another visitor is not held back
        room.take(40 * MB, "c's images")


def test_kept_analyses_expire_and_free_their_bytes() -> None:
    ledger = MemoryLedger(budget=100 * MB, session_budget=60 * MB)
    kept = KeptAnalyses(ledger, ttl_s=0.0)
    token = kept.put(fake_analysis(5 * MB), "m", "a")
    assert ledger.used() == 5 * MB
    kept.expire()
    assert ledger.used() == 0 and kept.get(token) is None


def test_a_session_over_its_memory_budget_gets_a_clear_message_and_keeps_its_pairs(
    app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(app_url, verbose=False)
    files = [SCENES_DIR / f"scene_{i:02d}.png" for i in range(2)]
    captions = "\n".join(SCENE_CAPTIONS[f.name] for f in files)
    client.predict([handle_file(str(f)) for f in files], captions, "vlviz-scenes", "cosine similarity",
                   api_name="/analyze")  # fmt: skip
    one = memory.LEDGER.session_budget
    monkeypatch.setattr(memory.LEDGER, "session_budget", memory.MIN_RESERVATION_BYTES)
    many = [SCENES_DIR / f"scene_{i:02d}.png" for i in range(24)] * 20  # 480 pairs: more than 16 MB held
    with pytest.raises(AppError, match=r"in memory, more than the 16 MB this server keeps for one set of pairs"):
        client.predict([handle_file(str(f)) for f in many], "\n".join(["a caption"] * len(many)), "vlviz-scenes",
                       "cosine similarity", api_name="/analyze")  # fmt: skip
    monkeypatch.setattr(memory.LEDGER, "session_budget", one)
    ranked = client.predict("a red circle", api_name="/query")  # the pairs analysed before are still there
    assert len(ranked) == 2
