"""Start model against trained model: the same views of the same pairs, for each model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlviz.data.inputs import PairSet
from vlviz.models.encoding import VLModel, encode_pair_set, input_image
from vlviz.models.loading import load_model
from vlviz.models.tokens import first_content_word
from vlviz.viz.run_comparison import VIEWS, encoding_views, side_by_side


def _pairs() -> PairSet:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    return PairSet(images, ["a red circle", "the blue square", "a white cross"], ["a.png", "b.png", "c.png"])


def _views(model: VLModel, pairs: PairSet) -> tuple:
    return encode_pair_set(model, pairs).encoding, model.input_image(pairs.images[0])


def test_views_of_both_models(tiny_vit_dir: Path, tiny_arch_name: str) -> None:
    start = load_model(str(tiny_vit_dir), device="cpu")  # written with seed 0
    torch.manual_seed(1)  # ':random' draws from the global generator, which an earlier test may have left at seed 0
    trained = load_model(f"{tiny_arch_name}:random", device="cpu")
    pairs = _pairs()
    (before_encoding, before_image), (after_encoding, after_image) = _views(start, pairs), _views(trained, pairs)
    views = side_by_side(before_encoding, after_encoding, pairs, (before_image, after_image))
    assert set(views) == set(VIEWS)
    before, after = views["affinity"]
    assert before.layout.title.text.startswith("start") and after.layout.title.text.startswith("trained")
    assert not np.array_equal(np.asarray(before.data[0].z), np.asarray(after.data[0].z))  # different models
    z = np.asarray(views["inconsistency"][0].data[0].z, dtype=float)
    assert z.shape == (3, 3) and np.allclose(z, z.T, atol=1e-6)


def test_no_grounding_for_a_resnet(tiny_resnet_dir: Path) -> None:
    pairs = _pairs()
    assert (
        encoding_views(*_views(load_model(str(tiny_resnet_dir), device="cpu"), pairs)[:1], pairs, None, "start")[
            "grounding"
        ]
        is None
    )


def test_input_image_undoes_the_normalisation(tiny_vit_dir: Path) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    image = Image.fromarray(np.full((32, 32, 3), (200, 30, 90), dtype=np.uint8))
    restored = input_image(
        model.preprocess(image), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    )
    assert restored.shape == (32, 32, 3) and np.abs(restored.astype(int) - (200, 30, 90)).max() <= 1
    assert np.array_equal(model.input_image(image), restored)  # the model's view of a PIL image is the same
    assert first_content_word(["a", "small", "red", "circle"]) == 2
