"""View links without a browser: what a link's parameters restore, and what they never do."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from vlviz.data.inputs import pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.encoding import EncodedPairs, encode_pair_set
from vlviz.models import OFFLINE_SPEC, load_model
from vlviz.policy import ModelPolicy
from vlviz.ui.session import KEPT, SessionSpace, WantedView
from vlviz.ui.view_links import restore_view, view_link

PUBLIC = ModelPolicy(public=True, allowed=(OFFLINE_SPEC,))


def _request(**params: str) -> SimpleNamespace:
    return SimpleNamespace(query_params=params)


@pytest.fixture(scope="module")
def scenes() -> EncodedPairs:
    return encode_pair_set(load_model(OFFLINE_SPEC), pairs_from_uploads(*sample_files("scenes")))


def test_no_parameters_change_nothing() -> None:
    assert all(out is gr.skip() or out == gr.skip() for out in restore_view(SessionSpace(PUBLIC), _request()))


def test_a_sample_set_link_restores_its_model_tab_pair_and_word() -> None:
    out = restore_view(SessionSpace(PUBLIC), _request(model=OFFLINE_SPEC, sample="scenes", tab="grounding", pair="3",
                                                      word="2"))  # fmt: skip
    model, sample, files, captions, tabs, shown_tab, wanted, linked = out
    assert model["value"] == OFFLINE_SPEC and sample["value"] == "scenes" and len(files) == len(captions.splitlines())
    assert tabs.selected == "grounding" and shown_tab == "Grounding" and wanted == WantedView(3, 2) and linked is None


def test_a_public_server_refuses_a_link_to_another_model_and_bounds_every_number() -> None:
    out = restore_view(SessionSpace(PUBLIC), _request(model="/etc/passwd", tab="<script>", pair="1e9", word="x"))
    model, *_, tabs, shown_tab, wanted, linked = out
    assert model == gr.skip() and tabs.selected == "affinity" and shown_tab == "Affinity"
    assert wanted == WantedView(None, None) and linked is None


def test_links_name_sample_sets_and_keep_other_pairs_under_a_token(scenes: EncodedPairs) -> None:
    assert view_link(scenes, "Grounding", 2, 1).startswith(
        "[Link to this view](?model=vlviz-scenes&sample=scenes&tab=grounding&pair=2&word=1)"
    )
    edited = EncodedPairs(scenes.pairs.__class__(scenes.pairs.images, ["mine", *scenes.pairs.captions[1:]],
                                                 scenes.pairs.names), scenes.encoding, scenes.model_name, [])  # fmt: skip
    link = view_link(edited, "Affinity", None, None)
    token = link.split("pairs=")[1].split("&")[0]
    assert "sample=" not in link and KEPT.get(token)[0] is edited
    *_, linked = restore_view(SessionSpace(PUBLIC), _request(pairs=token, tab="affinity"))
    assert linked is edited
    with pytest.raises(gr.Error, match="Analyze a set of pairs first"):
        view_link(None, "Affinity", None, None)
