"""Occlusion maps: hidden patches filled right, drops computed as defined, batched like one at a time."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlviz.data.scenes import generate_scenes
from vlviz.grounding import occlusion
from vlviz.grounding.maps import (
    OCCLUSION,
    caption_maps,
    model_caption_maps,
    occlusion_scene_maps,
    scene_grounding_score,
    score_scenes,
)
from vlviz.grounding.occlusion import fine_similarity, model_occlusion_maps, occluded, occlusion_maps
from vlviz.grounding.sparc import alignment_weights
from vlviz.models.loading import OFFLINE_SPEC, load_model


def colour_tower(pixels: torch.Tensor) -> torch.Tensor:
    """A tower that sees only its own patch: each 4x4 patch's mean colour is its embedding (n, P, 3)."""
    return F.avg_pool2d(pixels, 4).flatten(2).transpose(1, 2)


def grey_image_with_red_patch(patch: int) -> torch.Tensor:
    image = torch.full((1, 3, 12, 12), 0.2)
    row, col = divmod(patch, 3)
    image[0, :, row * 4 : (row + 1) * 4, col * 4 : (col + 1) * 4] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return image


def test_a_hidden_patch_takes_the_images_median_and_nothing_else_changes() -> None:
    image = grey_image_with_red_patch(4)
    copies = occluded(image, (3, 3), torch.tensor([4, 0]))
    assert copies.shape == (1, 2, 3, 12, 12)
    torch.testing.assert_close(copies[0, 0], torch.full((3, 12, 12), 0.2))  # the red patch is gone
    torch.testing.assert_close(copies[0, 1], image[0])  # hiding grey with grey changes nothing
    with pytest.raises(ValueError, match="does not divide"):
        occluded(torch.zeros(1, 3, 10, 12), (3, 3), torch.tensor([0]))


def test_the_red_word_draws_its_evidence_from_the_red_patch() -> None:
    image = grey_image_with_red_patch(5)
    red, blue = torch.tensor([1.0, -0.5, -0.5]), torch.tensor([-0.5, -0.5, 1.0])
    tokens = torch.stack([red, blue])[None]  # (1, T=2, D=3)
    maps = occlusion_maps(colour_tower, image, tokens, (3, 3))
    assert maps.shape == (1, 2, 9)
    # Hiding the red patch costs 'red' all it had, cos(red, [1, 0, 0]) - cos(red, grey) = 1 / sqrt(1.5) - 0
    # (its grouped embedding turns grey); hiding a grey patch with the grey median costs nothing.
    assert maps[0, 0, 5] == pytest.approx(1.5**-0.5) and maps[0, 0].abs().sum() == maps[0, 0, 5]
    assert maps[0, 1].abs().max() == 0  # 'blue' weighed only grey patches: no patch holds its evidence


def test_each_drop_is_the_fine_similarity_before_minus_after() -> None:
    torch.manual_seed(0)
    pixels, tokens = torch.rand(2, 3, 12, 12), torch.randn(2, 4, 3)
    maps = occlusion_maps(colour_tower, pixels, tokens, (3, 3))
    for patch in (0, 7):
        hidden = occluded(pixels, (3, 3), torch.tensor([patch]))[:, 0]
        expected = fine_similarity(tokens, colour_tower(pixels)) - fine_similarity(tokens, colour_tower(hidden))
        torch.testing.assert_close(maps[..., patch], expected)
    torch.testing.assert_close(occlusion_maps(colour_tower, pixels, tokens, (3, 3), batch=3), maps)
    torch.testing.assert_close(occlusion_maps(colour_tower, pixels, tokens, (3, 3), batch=1), maps)  # images chunked


def test_fine_similarity_is_the_cosine_of_a_token_and_its_grouped_patches() -> None:
    tokens, patches = torch.randn(1, 2, 3), torch.randn(1, 9, 3)
    grouped = alignment_weights(tokens, patches) @ patches[0]
    torch.testing.assert_close(fine_similarity(tokens, patches), F.cosine_similarity(tokens, grouped, dim=-1))


def test_a_uniform_image_has_nothing_to_hide() -> None:
    maps = occlusion_maps(colour_tower, torch.full((1, 3, 12, 12), 0.4), torch.randn(1, 3, 3), (3, 3))
    assert maps.abs().max() == 0


# ------------------------------------------------------------------------ on a model, through vlviz.grounding.maps


def test_a_models_occlusion_maps_are_cached_per_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    scenes = generate_scenes(3, seed=11, image_size=64)
    images = scenes.pil_images()
    calls = []
    monkeypatch.setattr(
        occlusion, "occlusion_maps", lambda *args, **kw: calls.append(len(args[1])) or occlusion_maps(*args, **kw)
    )
    first = model_occlusion_maps(model, images[:2], scenes.captions[:2])
    again = model_occlusion_maps(model, images, scenes.captions)  # two pairs known, one new
    assert calls == [2, 1] and first.shape == (2, model.context_length, 64)
    torch.testing.assert_close(again[:2], first)


def test_occlusion_is_a_map_kind_of_the_grounding_view_and_score() -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    scenes = generate_scenes(4, seed=12, image_size=64, captions="varied")
    image, caption = scenes.pil_images()[0], scenes.captions[0]
    maps = model_caption_maps(model, image, caption, OCCLUSION)
    assert maps.kind == OCCLUSION and maps.word_maps.shape == (len(maps.words), 8, 8)
    with pytest.raises(ValueError, match="need the model"):
        caption_maps(model.encode_pairs([image], [caption]), kind=OCCLUSION)
    scores = score_scenes(model, scenes, kinds=["sparc", OCCLUSION])
    given = occlusion_scene_maps(model, scenes.pil_images(), scenes.captions)
    pairs = model.encode_pairs(scenes.pil_images(), scenes.captions)
    direct = scene_grounding_score(pairs, scenes, kinds=[OCCLUSION], token_maps={OCCLUSION: given})
    assert json.dumps(scores[OCCLUSION]) == json.dumps(direct[OCCLUSION])  # the cached maps, NaN and all
    assert 0 <= scores[OCCLUSION]["colour"]["pointing_game"] <= 1 and scores[OCCLUSION]["colour"]["words"] > 0
    assert scores["sparc"] != scores[OCCLUSION]
