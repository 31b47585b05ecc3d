"""The training probe: a fixed batch whose layout is fitted once, and figures for any model state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch

from vlviz.data.sources import SceneSource
from vlviz.models import load_model
from vlviz.probe import ProbeBatch


def test_probe_views_keep_the_step0_layout(tiny_vit_dir: Path) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    probe = ProbeBatch(SceneSource(32, mean, std, held_out=6).held_out, mean, std, size=4)
    assert probe.first_image.shape == (32, 32, 3) and probe.first_image.dtype.name == "uint8"
    first = probe.views(model.model, model.tokenizer, step=0)
    layout = probe.layout
    assert set(first) == {"inconsistency", "embedding", "grounding"}
    assert "step 0" in first["grounding"].layout.title.text
    z = torch.tensor(first["inconsistency"].data[0].z)
    assert z.shape == (4, 4) and torch.allclose(z, z.T) and torch.allclose(z.diagonal(), torch.zeros(4), atol=1e-5)
    again = probe.views(model.model, model.tokenizer, step=5)
    assert probe.layout is layout  # fitted once, reused
    for before, after in zip(first["embedding"].data, again["embedding"].data, strict=True):  # same model, same points
        assert before.x is None or np.array_equal(before.x, after.x, equal_nan=True)
