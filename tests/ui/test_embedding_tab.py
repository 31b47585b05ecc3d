"""The Embedding-space callback: PCA at once while the process's first UMAP compiles, then the UMAP."""

from __future__ import annotations

import gradio as gr
import pytest

from vlviz.data.inputs import PairSet
from vlviz.data.scenes import generate_scenes
from vlviz.models.encoding import encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.policy import ModelPolicy
from vlviz.ui.embedding_tab import LAYOUT_WORKER, EmbeddingTab
from vlviz.ui.session import Session


@pytest.mark.parametrize("ready", [False, True])
def test_pca_first_while_umap_compiles(monkeypatch: pytest.MonkeyPatch, ready: bool) -> None:
    scenes = generate_scenes(12, seed=5)
    pairs = PairSet(scenes.pil_images(), list(scenes.captions), [f"s{i}.png" for i in range(12)])
    model = load_model(OFFLINE_SPEC, "cpu")
    session = Session(ModelPolicy(public=False, allowed=()))
    session.hold(encode_pair_set(model, pairs), model)
    monkeypatch.setattr(LAYOUT_WORKER.ready, "is_set", lambda: ready)
    with gr.Blocks():  # the tab's components; its callbacks' updates name them
        tab = EmbeddingTab()
    drawn = list(tab.embedding_space("umap", 5, 0.1, "cosine", 0, session=session))
    assert [updates[tab.data]["method"] for updates in drawn] == (["umap"] if ready else ["pca", "umap"])
    if not ready:
        assert "UMAP is compiling" in drawn[0][tab.notices]
    session.close()
