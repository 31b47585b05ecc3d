"""The session engine without a server: one analysis with its model, which expires, and the first-view gate
every tab shares, which keeps its draw's signature so that Gradio still passes gr.Request and gr.Progress."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.helpers import special_args

import vlviz.ui.session as session_module
from vlviz.data.inputs import pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.models.encoding import EncodedPairs, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.policy import ModelPolicy
from vlviz.ui.consistency_tab import ConsistencyTab
from vlviz.ui.memory import LEDGER
from vlviz.ui.session import GATE_PARAMETERS, Session, Updates, first_view_gate

LOCAL = ModelPolicy(public=False, allowed=())


@pytest.fixture(scope="module")
def scenes() -> EncodedPairs:
    return encode_pair_set(load_model(OFFLINE_SPEC), pairs_from_uploads(*sample_files("scenes")))


def test_a_session_holds_its_pairs_with_the_model_that_encoded_them(scenes: EncodedPairs) -> None:
    session = Session(LOCAL)
    with pytest.raises(gr.Error, match="Analyze a set of pairs first: the view needs them"):
        session.analyzed("the view needs them.")
    model = load_model(OFFLINE_SPEC)
    held = session.hold(scenes, model)
    assert session.analyzed("") is held and held.pairs is scenes.pairs and session.model_of(held) is model
    linked = session.hold(scenes, None)  # pairs a link handed over: their model loads by the name they keep
    assert session.model_of(linked).name == scenes.model_name == OFFLINE_SPEC
    session.close()


def test_an_analysis_expires_with_its_time_to_live(scenes: EncodedPairs, monkeypatch: pytest.MonkeyPatch) -> None:
    """An API session never closes: main kept its pairs as long as Gradio kept its state, so they expire here."""
    session = session_module.SESSIONS.new(LOCAL)
    session.hold(scenes, None)
    assert LEDGER.used() >= scenes.nbytes
    monkeypatch.setattr(session_module, "SESSION_TTL_S", -1.0)
    session_module.expire_analyses()  # the heap-trim thread's call
    assert session._analysis is None and session.analysis is None
    assert LEDGER.address_of(session.token) is None and session.token not in LEDGER._held
    session.close()


def test_the_first_view_gate_keeps_the_draws_signature_so_gradio_passes_request_and_progress() -> None:
    """A generic `*args` gate hides `request` from Gradio, which fills it from the signature's positions."""
    received = {}

    def draw(
        x: int,
        session: object,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Updates:
        received.update(request=request, progress=progress)
        return {}

    gate = first_view_gate(draw, "Tab", gr.State(None))
    assert list(gate.__signature__.parameters) == ["x", "session", "request", "progress", *GATE_PARAMETERS]
    analysed = SimpleNamespace(analysis=SimpleNamespace(serial=3))
    request = gr.Request(username="visitor")
    inputs, progress_index, _, _ = special_args(gate, [1, analysed, analysed, None, "Tab"], request=request)
    assert inputs[2] is request and progress_index == 3  # where Gradio puts them: the draw's own places
    gate(*inputs)
    assert received["request"] is request and received["progress"] is inputs[3]


def test_the_first_view_gate_draws_each_analysis_once_and_only_in_view() -> None:
    box, drawn = gr.Textbox(), gr.State(None)
    calls = []
    gate = first_view_gate(lambda x: calls.append(x) or {box: x}, "Tab", drawn)
    session = SimpleNamespace(analysis=SimpleNamespace(serial=5))
    assert gate(1, session, None, "Other tab") == gr.skip()  # not in view
    assert gate(1, SimpleNamespace(analysis=None), None, "Tab") == gr.skip()  # nothing analysed
    assert gate(2, session, None, "Tab") == {box: 2, drawn: 5}  # in view, new: drawn, its serial noted
    assert gate(3, session, 5, "Tab") == gr.skip()  # the same analysis again: already on screen
    assert calls == [2]


def test_a_tabs_draw_method_behind_the_gate_still_gets_the_request() -> None:
    with gr.Blocks():
        tab = ConsistencyTab()
    gate = first_view_gate(tab.consistency, "Consistency", gr.State(None))
    request = gr.Request(username="visitor")
    values = ["clustered", "absolute |A_I − A_T|", 8, 0.1, "session", "session", None, "Consistency"]
    inputs, progress_index, _, _ = special_args(gate, values, request=request)
    assert inputs[5] is request and progress_index == 6  # `consistency(..., session, request, progress)`
