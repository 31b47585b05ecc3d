"""View links without a browser: what a link's parameters restore, and what they never do."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from vlviz.data.inputs import pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.models.encoding import EncodedPairs, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.policy import ModelPolicy
from vlviz.ui.runner import SessionRun
from vlviz.ui.session import KEPT, Session, WantedView
from vlviz.ui.talk_page import open_as_talk
from vlviz.ui.view_links import LinkedView, restore_view, view_link

PUBLIC = ModelPolicy(public=True, allowed=(OFFLINE_SPEC,))


def _request(**params: str) -> SimpleNamespace:
    return SimpleNamespace(query_params=params)


@pytest.fixture(scope="module")
def scenes() -> EncodedPairs:
    return encode_pair_set(load_model(OFFLINE_SPEC), pairs_from_uploads(*sample_files("scenes")))


def _holding(analysis: EncodedPairs) -> Session:
    session = Session(PUBLIC)
    session.hold(analysis, None)
    return session


def test_no_parameters_change_nothing() -> None:
    assert restore_view(Session(PUBLIC), _request()) is None


def test_a_sample_set_link_restores_its_model_tab_pair_and_word() -> None:
    link = restore_view(Session(PUBLIC), _request(model=OFFLINE_SPEC, sample="scenes", tab="grounding", pair="3",
                                                  word="2"))  # fmt: skip
    assert link.model == OFFLINE_SPEC and link.sample == "scenes" and link.linked is None
    assert link.tab == "grounding" and link.wanted == WantedView(3, 2)


def test_a_public_server_refuses_a_link_to_another_model_and_bounds_every_number() -> None:
    link = restore_view(Session(PUBLIC), _request(model="/etc/passwd", tab="<script>", pair="1e9", word="x"))
    assert link.model is None and link.tab == "affinity"
    assert link.wanted == WantedView(None, None) and link.linked is None


def test_links_name_sample_sets_and_keep_other_pairs_under_a_token(scenes: EncodedPairs) -> None:
    assert view_link("Grounding", 2, 1, _holding(scenes)).startswith(
        "[Link to this view](?model=vlviz-scenes&sample=scenes&tab=grounding&pair=2&word=1)"
    )
    edited = EncodedPairs(scenes.pairs.__class__(scenes.pairs.images, ["mine", *scenes.pairs.captions[1:]],
                                                 scenes.pairs.names), scenes.encoding, scenes.model_name, [])  # fmt: skip
    link = view_link("Affinity", None, None, _holding(edited))
    token = link.split("pairs=")[1].split("&")[0]
    assert "sample=" not in link and KEPT.get(token)[0] is edited
    assert restore_view(Session(PUBLIC), _request(pairs=token, tab="affinity")).linked is edited
    with pytest.raises(gr.Error, match="Analyze a set of pairs first"):
        view_link("Affinity", None, None, Session(PUBLIC))


def _restored(session: Session, **params: str) -> tuple[LinkedView | None, list[str]]:
    """What `restore_view` restores and its notices (outside a page, Gradio's toasts are Python warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        link = restore_view(session, _request(**params))
    return link, [str(warning.message) for warning in caught]


def test_a_talk_token_brings_its_model_by_name_never_its_folder(scenes: EncodedPairs, tmp_path: Path) -> None:
    folder = tmp_path / "sessions" / ("a" * 32) / "runs" / "run-1"
    folder.mkdir(parents=True)
    trainer = Session(PUBLIC)
    trainer.runner.runs.append(SessionRun(1, "run 1", OFFLINE_SPEC, OFFLINE_SPEC, "scenes", checkpoint=folder / "w"))
    told = EncodedPairs(scenes.pairs, scenes.encoding, "session run 1", [])
    trainer.hold(told, None)
    token = open_as_talk(trainer).split("story=")[1].split(")")[0]  # a talk keeps the run's folder
    link, notices = _restored(Session(PUBLIC), pairs=token)
    assert link.linked is told and link.model is None  # another session has no 'session run 1'
    assert len(notices) == 1 and "session run 1" in notices[0] and str(tmp_path) not in notices[0]
    link, notices = _restored(trainer, pairs=token)  # the session that trained it gets its run back
    assert link.model == "session run 1" and not notices


def test_unknown_parameters_and_values_are_ignored_with_a_notice() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    link, notices = _restored(Session(PUBLIC), tab="../evil", pair="abc", word="7", **{"paír": "3", hostile: "1"})
    assert link.tab == "affinity" and link.wanted == WantedView(None, 7)
    assert len(notices) == 1 and "'tab', 'pair', 'paír', '&lt;img" in notices[0] and "<img" not in notices[0]
    assert _restored(Session(PUBLIC), foo="1")[1]  # a link of unknown parameters only: still told
    assert not _restored(Session(PUBLIC), tab="grounding", view="api", __theme="dark")[1]  # Gradio's own


def test_a_refused_model_is_quoted_escaped() -> None:
    _, notices = _restored(Session(PUBLIC), model="<img src=x onerror=alert(1)>")
    assert len(notices) == 1 and "not one of the models" in notices[0]
    assert "<img" not in notices[0] and "&lt;img src=x" in notices[0]  # Gradio's toasts show HTML
