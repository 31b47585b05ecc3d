"""The lens view of two encodings of the same scenes: its figures hold the core's numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import SCENE_CAPTIONS, SCENES_DIR
from vlviz.metrics.affinity import affinity
from vlviz.models.encoding import VLModel
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.viz.lens_view import lens_view


@pytest.fixture(scope="module")
def encodings() -> tuple:
    start = load_model(OFFLINE_SPEC)
    noisy = copy.deepcopy(start.model)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0)))
    trained = VLModel("noisy", noisy, start.preprocess, start.tokenizer, start.device, name="noisy")
    files = sorted(SCENE_CAPTIONS)[:6]
    images, captions = [Image.open(SCENES_DIR / f).convert("RGB") for f in files], [SCENE_CAPTIONS[f] for f in files]
    return start.encode_pairs(images, captions), trained.encode_pairs(images, captions), files, captions


def test_the_lens_draws_the_core_numbers(encodings: tuple) -> None:
    before, after, names, captions = encodings
    view = lens_view(before, after, names, captions, pair=1)
    expected = affinity(after.image_features.float(), after.text_features.float()) - affinity(
        before.image_features.float(), before.text_features.float()
    )
    heat = view.affinity_difference.data[0]
    assert np.allclose(np.asarray(heat.z, dtype=np.float32), expected.numpy(), atol=1e-5)
    assert heat.zmin == -heat.zmax  # diverging, centred on 0
    assert len(view.movement.data) == 6  # images and captions: arrows, before, after
    assert len(view.moved_most) == 6 and list(view.moved_most["pair"]) != []
    assert view.summary["image_to_text_r1_before"] >= view.summary["image_to_text_r1_after"] - 1
    assert view.grounding_difference is not None and not view.notes
    assert len(view.grounding_difference.layout.annotations) == len(captions[1].split())  # one map per word


def test_one_encoding_against_itself_moves_nothing(encodings: tuple) -> None:
    before, _, names, captions = encodings
    view = lens_view(before, before, names, captions)
    assert np.allclose(np.asarray(view.inconsistency_difference.data[0].z, dtype=np.float32), 0.0)
    assert view.summary["mean_own_cosine_before"] == view.summary["mean_own_cosine_after"]
    before_points, after_points = view.movement.data[1], view.movement.data[2]
    assert np.allclose(before_points.x, after_points.x) and np.allclose(before_points.y, after_points.y)
