"""The Embedding-space callback: PCA at once while the process's first UMAP compiles, then the UMAP."""

from __future__ import annotations

import pytest

from vlviz.data.inputs import PairSet
from vlviz.data.scenes import generate_scenes
from vlviz.models.encoding import encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.policy import ModelPolicy
from vlviz.ui.embedding_tab import LAYOUT_WORKER, embedding_space
from vlviz.ui.session import SessionSpace


@pytest.mark.parametrize("ready", [False, True])
def test_pca_first_while_umap_compiles(monkeypatch: pytest.MonkeyPatch, ready: bool) -> None:
    scenes = generate_scenes(12, seed=5)
    pairs = PairSet(scenes.pil_images(), list(scenes.captions), [f"s{i}.png" for i in range(12)])
    analysis = encode_pair_set(load_model(OFFLINE_SPEC, "cpu"), pairs)
    space = SessionSpace(ModelPolicy(public=False, allowed=()))
    monkeypatch.setattr(LAYOUT_WORKER.ready, "is_set", lambda: ready)
    drawn = list(embedding_space("umap", 5, 0.1, "cosine", 0, analysis=analysis, space=space))
    methods = [outputs[6]["method"] for outputs in drawn]  # the data output
    assert methods == (["umap"] if ready else ["pca", "umap"])
    if not ready:
        assert "UMAP is compiling" in drawn[0][2]  # the notices
    space.close()
