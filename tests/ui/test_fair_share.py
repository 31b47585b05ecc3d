"""Fair share: one heavy analysis per session at a time, and a session (or, on a public server, an address)
holds only its share of the queue's waiting places, so one visitor cannot starve the others."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import vlviz.ui.consistency_tab as consistency_tab
from tests.conftest import SCENE_CAPTIONS, SCENES_DIR, analyzed_client, free_port
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.models.policy import ModelPolicy
from vlviz.ui import build_app
from vlviz.ui.fair_share import QUEUE_SHARE, QUEUE_SHARE_PER_ADDRESS, FairShare, share_queue
from vlviz.ui.session import SessionBusy, first_view_gate

FILES = [SCENES_DIR / f"scene_{i:02d}.png" for i in range(3)]


def _embedding_space(client: Client) -> tuple:
    return client.predict("pca", 15, 0.1, "cosine", 0, False, False, api_name="/embedding_space")


def _analyze(client: Client) -> tuple:
    files = [handle_file(str(f)) for f in FILES]
    captions = "\n".join(SCENE_CAPTIONS[f.name] for f in FILES)
    return client.predict(files, captions, OFFLINE_SPEC, "cosine similarity", api_name="/analyze")


def test_a_session_runs_one_heavy_analysis_at_a_time(app_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Main let one session take every analysis slot; a second call now gets a message at once, no slot."""
    running, release = threading.Event(), threading.Event()
    draw = consistency_tab.consistency_view

    def held_view(*args, **kwargs):  # a Consistency view that runs until the test lets it end
        running.set()
        release.wait()
        return draw(*args, **kwargs)

    monkeypatch.setattr(consistency_tab, "consistency_view", held_view)
    client, other = analyzed_client(app_url, FILES), analyzed_client(app_url, FILES)
    job = client.submit("clustered", "absolute |A_I − A_T|", 4, 0.1, api_name="/consistency")
    try:
        assert running.wait(60)
        for call in (_embedding_space, _analyze):
            with pytest.raises(AppError, match="This session is already running an analysis"):
                call(client)
        assert _embedding_space(other)[0] is not None  # other sessions are not held back
    finally:
        release.set()
    assert job.result()[0] is not None
    assert _embedding_space(client)[0] is not None  # the slot is free again


@pytest.fixture
def held_app() -> Iterator[tuple[gr.Blocks, str, threading.Event]]:
    """A one-event app whose single worker is held (by session 'runner') until the test sets the event,
    so every other request waits in the queue."""
    running, release = threading.Event(), threading.Event()

    def hold(text: str) -> str:
        running.set()
        release.wait()
        return text

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(hold, box, box, api_name="hold", concurrency_limit=1)
    demo.queue(max_size=10)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/gradio_api/queue/join"
    try:
        assert _join(url, "runner").status_code == 200 and running.wait(60)
        yield demo, url, release
    finally:
        release.set()
        demo.close()


def _join(url: str, session_hash: str) -> httpx.Response:
    return httpx.post(url, json={"data": ["x"], "fn_index": 0, "session_hash": session_hash}, timeout=30)


def test_a_session_holds_at_most_its_share_of_the_waiting_places(held_app) -> None:
    demo, url, _ = held_app
    share_queue(demo, per_session=2, per_address=None)
    assert [_join(url, "greedy").status_code for _ in range(2)] == [200, 200]
    refused = _join(url, "greedy")
    assert refused.status_code == 503  # Gradio's own "queue full" answer, with the reason
    assert "This session already has 2 requests waiting" in refused.json()["detail"]
    assert _join(url, "polite").status_code == 200  # the queue kept room for another session


def test_on_a_public_server_an_address_holds_at_most_its_share(held_app) -> None:
    demo, url, _ = held_app
    share_queue(demo, per_session=2, per_address=3)
    assert [_join(url, f"hash-{i}").status_code for i in range(3)] == [200, 200, 200]
    refused = _join(url, "hash-3")  # a new session hash from the same address
    assert refused.status_code == 503 and "Your address already has 3 requests waiting" in refused.json()["detail"]


def test_the_app_shares_its_queue_by_session_and_on_a_public_server_by_address() -> None:
    for policy, per_address in ((ModelPolicy(False, ()), None), (ModelPolicy(True, ()), QUEUE_SHARE_PER_ADDRESS)):
        push = build_app(OFFLINE_SPEC, initial_sample=None, policy=policy)._queue.push
        assert isinstance(push, FairShare) and (push.per_session, push.per_address) == (QUEUE_SHARE, per_address)


def test_a_first_view_draw_of_a_busy_session_draws_nothing_instead_of_a_refusal() -> None:
    """A tab shown while its session's Analyze runs: no toast; the Analyze's end draws the tab."""
    box, drawn = gr.Textbox(), gr.State(None)
    session = SimpleNamespace(analysis=SimpleNamespace(serial=7))

    def busy(x: int, request: gr.Request | None = None) -> dict:
        raise SessionBusy("busy")

    def streaming(x: int) -> Iterator[dict]:
        yield {box: x}
        raise SessionBusy("busy")

    assert first_view_gate(busy, "Tab", drawn)(1, None, session, None, "Tab") == gr.skip()
    assert list(first_view_gate(streaming, "Tab", drawn)(3, session, None, "Tab")) == [{box: 3, drawn: 7}, gr.skip()]
    assert first_view_gate(lambda x: {box: x}, "Tab", drawn)(5, session, None, "Tab") == {box: 5, drawn: 7}
    assert "request" in inspect.signature(first_view_gate(busy, "Tab", drawn)).parameters  # Gradio still injects it
