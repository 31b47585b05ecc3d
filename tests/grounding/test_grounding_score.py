"""The grounding score against scene masks: word positions, patch masks, and the score on hand-built maps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from vlviz.data.scenes import COLOURS, POSITIONS, SHAPES, generate_scenes
from vlviz.grounding.maps import (
    object_patch_masks,
    pointing_and_mass,
    scene_grounding_score,
    scene_word_positions,
    score_scenes,
    select_scenes,
)
from vlviz.models.encoding import PairEncoding
from vlviz.models.loading import load_model
from vlviz.models.tokens import token_layout

TOKENIZER = open_clip.get_tokenizer("ViT-B-32", context_length=32)


def _template_word_positions(scenes) -> dict[str, np.ndarray]:
    """How word positions were derived before the generator recorded them: from the template's fixed layout.

    Captions read "A, B and C" with each phrase "a {size} {colour} {shape} {position}"; punctuation is
    not a word, so a phrase starts after the phrases before it, plus one for the "and" before the last.
    """
    present = scenes.present
    count = present.sum(axis=1, keepdims=True)
    position_words = np.array([len(phrase.split()) for phrase in POSITIONS])
    length = np.where(present, 4 + position_words[scenes.cell], 0)
    slot = np.arange(present.shape[1])[None]
    start = np.cumsum(length, axis=1) - length + ((slot == count - 1) & (count > 1))
    return {"colour": np.where(present, start + 2, -1), "shape": np.where(present, start + 3, -1)}


def test_template_word_positions_are_the_ones_derived_from_the_template() -> None:
    scenes = generate_scenes(500, seed=9, image_size=24)
    expected = _template_word_positions(scenes)
    for name, positions in scene_word_positions(scenes).items():
        assert np.array_equal(positions.numpy(), expected[name])


def test_word_positions_name_each_objects_colour_and_shape() -> None:
    scenes = generate_scenes(60, seed=5)
    positions = scene_word_positions(scenes)
    words = token_layout(TOKENIZER, scenes.captions).words
    colours = list(COLOURS)
    for n in range(len(scenes)):  # checking strings, scene by scene
        for k in range(scenes.present.shape[1]):
            if not scenes.present[n, k]:
                assert positions["colour"][n, k] == -1 and positions["shape"][n, k] == -1
                continue
            assert words[n][positions["colour"][n, k]] == colours[scenes.colour[n, k]]
            assert words[n][positions["shape"][n, k]] == SHAPES[scenes.shape[n, k]]


def test_patch_masks_use_the_cover_threshold_and_keep_the_best_patch() -> None:
    masks = torch.zeros(1, 3, 8, 8, dtype=torch.bool)  # a 2 x 2 grid of 4 x 4 pixel patches
    masks[0, 0, :4, :4] = True  # object 0 fills the top-left patch
    masks[0, 0, :4, 4:5] = True  # and a quarter of the top-right one
    masks[0, 1, 6, 6] = True  # object 1: one pixel, 1/16 of the bottom-right patch
    inside = object_patch_masks(masks, (2, 2))  # object 2: an empty slot
    assert inside[0, 0].tolist() == [True, True, False, False]
    assert inside[0, 1].tolist() == [False, False, False, True]
    assert not inside[0, 2].any()
    assert object_patch_masks(masks, (2, 2), min_cover=0.5)[0, 0].tolist() == [True, False, False, False]


def test_pointing_and_mass_on_hand_built_maps() -> None:
    inside = torch.tensor([[[True, True, False, False], [False, False, False, True]]])  # (1, 2, 4)
    valid = torch.tensor([[True, True]])
    pointing_in = torch.tensor([[[0.1, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    assert pointing_and_mass(pointing_in, inside, valid) == {
        "pointing_game": 1.0, "mass_in_mask": 1.0, "chance": pytest.approx(0.375), "words": 2,
    }  # fmt: skip
    pointing_out = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]]])
    scores = pointing_and_mass(pointing_out, inside, valid)
    assert scores["pointing_game"] == 0.0 and scores["mass_in_mask"] == 0.0
    half = pointing_and_mass(torch.tensor([[[0.2, 0.3, 0.5, 0.0]]]), inside[:, :1], valid[:, :1])
    assert half["pointing_game"] == 0.0 and half["mass_in_mask"] == pytest.approx(0.5)


def _oracle_encoding(scenes, toward_object: bool) -> PairEncoding:
    """Patches one-hot in D = P; each colour/shape token the indicator of its object's patches (or of the rest)."""
    grid = (8, 8)
    inside = object_patch_masks(scenes.masks, grid).float()  # (N, K, P)
    layout = token_layout(TOKENIZER, scenes.captions)
    n, t = layout.ids.shape
    patches = torch.eye(64).expand(n, 64, 64)
    tokens = torch.zeros(n, t, 64)
    for targets in scene_word_positions(scenes).values():
        named = (layout.word_index[:, None, :] == targets[..., None]) & (targets[..., None] >= 0)  # (N, K, T)
        target = inside if toward_object else 1 - inside
        tokens += torch.einsum("nkt,nkp->ntp", named.float(), target)
    return PairEncoding(
        image_features=torch.zeros(n, 4), text_features=torch.zeros(n, 4), patch_features=patches, grid_size=grid,
        token_features=tokens, tokens=layout, logit_scale=1.0, logit_bias=None,
    )  # fmt: skip


@pytest.mark.parametrize(("toward_object", "expected"), [(True, 1.0), (False, 0.0)])
def test_maps_that_point_inside_score_one_and_outside_zero(toward_object: bool, expected: float) -> None:
    scenes = generate_scenes(12, seed=3)
    scores = scene_grounding_score(_oracle_encoding(scenes, toward_object), scenes, kinds=["sparc", "softmax"])
    for kind in ("sparc", "softmax"):
        for name in ("colour", "shape"):
            assert scores[kind][name]["pointing_game"] == expected
            assert scores[kind][name]["words"] == int(scenes.present.sum())
    assert scores["sparc"]["colour"]["mass_in_mask"] == pytest.approx(expected, abs=1e-6)


def test_words_cut_by_the_context_length_are_not_scored() -> None:
    scenes = generate_scenes(12, seed=3)
    encoding = _oracle_encoding(scenes, toward_object=True)
    short = token_layout(open_clip.get_tokenizer("ViT-B-32", context_length=10), scenes.captions)
    truncated = replace(encoding, tokens=short, token_features=encoding.token_features[:, :10])
    scores = scene_grounding_score(truncated, scenes, kinds=["sparc"])["sparc"]
    assert 0 < scores["colour"]["words"] < int(scenes.present.sum())  # first objects only
    assert scores["colour"]["pointing_game"] == 1.0


def test_select_scenes_keeps_ground_truth_in_order() -> None:
    scenes = generate_scenes(5, seed=1)
    picked = select_scenes(scenes, [3, 1])
    assert picked.captions == [scenes.captions[3], scenes.captions[1]]
    assert (picked.masks[0] == scenes.masks[3]).all() and (picked.colour[1] == scenes.colour[1]).all()


def test_any_vit_model_gets_a_score_and_a_resnet_is_refused(tiny_vit_dir: Path, tiny_resnet_dir: Path) -> None:
    scenes = generate_scenes(6, seed=2, image_size=32)
    scores = score_scenes(load_model(str(tiny_vit_dir), device="cpu"), scenes)
    assert set(scores) == {"sparc", "no-sparsity", "softmax", "cosine"}
    for kind in scores.values():
        for name in ("colour", "shape"):
            assert 0 <= kind[name]["pointing_game"] <= 1 and 0 <= kind[name]["mass_in_mask"] <= 1
    with pytest.raises(ValueError, match="no projectable patch tokens"):
        score_scenes(load_model(str(tiny_resnet_dir), device="cpu"), scenes)


def test_pointing_by_naming_order_groups_words_by_their_place_among_the_captions_words() -> None:
    from vlviz.grounding.maps import pointing_by_naming_order

    inside = torch.eye(3, dtype=torch.bool).expand(2, 3, 3)  # object k covers patch k
    # scene 0 names objects in the order 2, 0 (object 1 unscored); scene 1 names 0, 1, 2
    target = torch.tensor([[5, -1, 1], [1, 3, 6]])
    valid = target >= 0
    maps = torch.zeros(2, 3, 3)
    maps[0, 2, 2] = maps[0, 0, 1] = 1.0  # scene 0: first-named (object 2) hits, second-named (object 0) misses
    maps[1, 0, 0] = maps[1, 1, 0] = maps[1, 2, 2] = 1.0  # scene 1: first and third hit, second misses
    assert pointing_by_naming_order(maps, inside, valid, target) == [1.0, 0.0, 1.0]
    only_first = pointing_by_naming_order(maps[:1], inside[:1], valid[:1], target[:1])
    assert only_first[:2] == [1.0, 0.0] and np.isnan(only_first[2])
