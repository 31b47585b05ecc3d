"""Training data sources: scenes at any size, finite pairs with a fixed held-out split."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from vlviz.data.sources import PairSource, SceneSource, normalise_uint8


def _pairs(n: int) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]
    return images, [f"caption {i}" for i in range(n)]


def test_normalise_matches_open_clip_preprocess() -> None:
    preprocess = open_clip.image_transform(32, is_train=False)
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    expected = preprocess(Image.fromarray(image))
    got = normalise_uint8(torch.from_numpy(image)[None], open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    assert torch.allclose(got[0], expected, atol=1e-5)


def test_scene_source_is_deterministic_and_sized_for_the_model() -> None:
    source = SceneSource(48, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=10)
    pixels, captions = source.batch(step=3, batch_size=4, seed=1)
    again, captions_again = source.batch(step=3, batch_size=4, seed=1)
    assert pixels.shape == (4, 3, 48, 48) and torch.equal(pixels, again) and captions == captions_again
    assert source.batch(step=4, batch_size=4, seed=1)[1] != captions
    assert source.held_out.pixels.shape == (10, 3, 48, 48) and source.held_out.scenes is not None


def test_pair_source_keeps_the_held_out_split_apart() -> None:
    images, captions = _pairs(10)
    source = PairSource(images, captions, open_clip.image_transform(32, is_train=False), held_out_fraction=0.2)
    assert len(source) == 8 and len(source.held_out.captions) == 2
    assert not set(source.held_out.captions) & set(source.captions)
    seen = [c for step in range(2) for c in source.batch(step, batch_size=4, seed=0)[1]]
    assert sorted(seen) == sorted(source.captions)  # one epoch visits every training pair once


def test_pair_source_refuses_bad_settings() -> None:
    images, captions = _pairs(3)
    preprocess = open_clip.image_transform(32, is_train=False)
    with pytest.raises(ValueError, match="too few to train on"):
        PairSource(images[:2], captions[:2], preprocess)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        PairSource(images, captions[:2], preprocess)
    source = PairSource(*_pairs(5), preprocess)
    with pytest.raises(ValueError, match="batch_size 8 is larger than the 4 training pairs"):
        source.batch(0, 8, seed=0)
