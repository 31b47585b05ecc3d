"""The training probe: a fixed batch whose layout is fitted once, its numbers for any model state, and its figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch

from vlviz.data.sources import SceneSource
from vlviz.models.loading import load_model
from vlviz.training.probe import ProbeBatch
from vlviz.viz.views import probe_figures


def test_probe_keeps_the_step0_layout_and_draws_its_numbers(tiny_vit_dir: Path) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    probe = ProbeBatch(SceneSource(32, mean, std, held_out=6).held_out, mean, std, size=4)
    assert probe.first_image.shape == (32, 32, 3) and probe.first_image.dtype.name == "uint8"
    first = probe.measure(model.model, model.tokenizer, step=0)
    layout = probe.layout
    z = torch.from_numpy(first.inconsistency)
    assert z.shape == (4, 4) and torch.allclose(z, z.T) and torch.allclose(z.diagonal(), torch.zeros(4), atol=1e-5)
    assert first.coordinates.shape == (8, 2)
    maps = first.grounding
    assert maps is not None and maps.word_maps.shape == (len(maps.words), *model.grid_size)
    assert torch.allclose(maps.word_maps.flatten(1).sum(1), torch.ones(len(maps.words)), atol=1e-5)  # SPARC rows
    again = probe.measure(model.model, model.tokenizer, step=5)
    assert probe.layout is layout  # fitted once, reused
    assert np.allclose(first.coordinates, again.coordinates)  # same model, same points

    figures = probe_figures(**vars(first))
    assert set(figures) == {"inconsistency", "embedding", "grounding"}
    assert "step 0" in figures["grounding"].layout.title.text
    assert np.allclose(np.asarray(figures["inconsistency"].data[0].z, dtype=float), first.inconsistency)
