"""WiSE-FT interpolation: the hand-computed mix, its ends, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.model import CLIP
from PIL import Image

from tests.conftest import SCENE_CAPTIONS, SCENES_DIR, TINY_VIT_CFG
from vlviz.compare.interpolation import (
    interpolate_state_dicts,
    interpolated_model,
    interpolated_vlmodel,
    mean_r1,
    wise_ft_path,
)
from vlviz.data.inputs import PairSet
from vlviz.models.encoding import VLModel
from vlviz.models.loading import OFFLINE_SPEC, load_model


def test_a_quarter_of_the_way_by_hand() -> None:
    start = {"w": torch.tensor([0.0, 4.0]), "half": torch.tensor([2.0], dtype=torch.float16), "ids": torch.arange(3)}
    trained = {"w": torch.tensor([8.0, 0.0]), "half": torch.tensor([6.0], dtype=torch.float16), "ids": torch.arange(3)}
    mixed = interpolate_state_dicts(start, trained, 0.25)
    assert torch.equal(mixed["w"], torch.tensor([2.0, 3.0]))  # 0.75 * start + 0.25 * trained
    assert mixed["half"].dtype == torch.float16 and float(mixed["half"]) == 3.0
    assert torch.equal(mixed["ids"], torch.arange(3))
    assert torch.equal(start["w"], torch.tensor([0.0, 4.0]))  # the inputs are left as they were


def test_mismatches_are_refused_with_the_reason() -> None:
    start = {"w": torch.zeros(2), "ids": torch.arange(3)}
    with pytest.raises(ValueError, match="different parameters"):
        interpolate_state_dicts(start, {"w": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(start, {"w": torch.zeros(3), "ids": torch.arange(3)}, 0.5)
    with pytest.raises(ValueError, match="not a floating-point"):
        interpolate_state_dicts(start, {"w": torch.zeros(2), "ids": torch.arange(1, 4)}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state_dicts(start, start, 1.5)


def test_the_ends_of_the_line_are_the_two_models() -> None:
    torch.manual_seed(0)
    start, trained = CLIP(**TINY_VIT_CFG).eval(), CLIP(**TINY_VIT_CFG).eval()
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(1, 100, (2, 16))
    with torch.no_grad():
        for alpha, model in ((0.0, start), (1.0, trained)):
            mixed = interpolated_model(start, trained, alpha)
            assert torch.allclose(mixed.encode_image(pixels), model.encode_image(pixels), atol=1e-6)
            assert torch.allclose(mixed.encode_text(ids), model.encode_text(ids), atol=1e-6)
        halfway = interpolated_model(start, trained, 0.5)
    expected = (start.visual.conv1.weight + trained.visual.conv1.weight) / 2
    assert torch.allclose(halfway.visual.conv1.weight, expected)
    assert halfway is not start and not halfway.training


def test_wise_ft_path_runs_from_the_start_model_to_the_trained_one() -> None:
    start = load_model(OFFLINE_SPEC)
    noisy = copy.deepcopy(start.model)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    trained = VLModel("noisy", noisy, start.preprocess, start.tokenizer, start.device, name="noisy")
    files = sorted(SCENE_CAPTIONS)[:8]
    pairs = PairSet(
        [Image.open(SCENES_DIR / f).convert("RGB") for f in files], [SCENE_CAPTIONS[f] for f in files], files
    )
    rows = wise_ft_path(start, trained, pairs, pairs, [0.0, 0.5, 1.0])
    assert [row["alpha"] for row in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["reference_r1"] == pytest.approx(mean_r1(start.encode_pairs(pairs.images, pairs.captions)))
    assert rows[-1]["target_r1"] == pytest.approx(mean_r1(trained.encode_pairs(pairs.images, pairs.captions)))
    assert rows[0]["retention"] == 1.0 and rows[0]["reference_r1"] > 0.5  # the offline model knows its scenes
    halfway = interpolated_vlmodel(start, trained, 0.5)
    assert halfway.name.startswith("WiSE-FT α=0.5") and halfway.model is not start.model
