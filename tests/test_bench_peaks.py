"""The peak diagnostic's pieces: the tower lens, the value-path intervention, peak places and the painting test."""

from __future__ import annotations

import pytest
import torch

from bench.peaks import OCCLUDED, PLACES, diagnose, evidence_figures, patch_lens, peak_place, place_shares
from vlviz.data.scenes import generate_scenes
from vlviz.models.encoding import image_embeddings
from vlviz.models.loading import OFFLINE_SPEC, load_model


def test_the_lens_ends_where_sparcs_maps_read_the_tower() -> None:
    model = load_model(OFFLINE_SPEC, device="cpu").model
    pixels = torch.randn(3, 3, 64, 64)
    readings = patch_lens(model.visual, pixels)
    blocks = len(model.visual.transformer.resblocks)
    assert list(readings) == [f"after block {i + 1}" for i in range(blocks)] + ["last block, value path"]
    _, patches = image_embeddings(model, pixels)
    torch.testing.assert_close(readings[f"after block {blocks}"], patches)


def test_the_value_path_is_the_last_block_attending_to_itself_only() -> None:
    visual = load_model(OFFLINE_SPEC, device="cpu").model.visual
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        x = visual._embeds(pixels)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        tokens = x.shape[1]
        only_itself = torch.full((tokens, tokens), float("-inf")).fill_diagonal_(0.0)
        x = visual.transformer.resblocks[-1](x, attn_mask=only_itself)
        expected = visual.ln_post(x[:, 1:]) @ visual.proj
    torch.testing.assert_close(patch_lens(visual, pixels)["last block, value path"], expected)


def test_peak_places_on_a_three_by_three_grid() -> None:
    # Object 0 covers patch 0 and a little of patch 1; object 1 covers patch 8 (opposite corners).
    inside = torch.zeros(4, 2, 9, dtype=torch.bool)
    inside[:, 0, 0] = inside[:, 1, 8] = True
    touched = inside.clone()
    touched[:, 0, 1] = True
    word_map = torch.zeros(4, 2, 9)
    for row, peak in enumerate([8, 1, 3, 5]):  # word 0's peak in each copy of the scene
        word_map[row, 0, peak] = 1.0
    word_map[:, 1, 8] = 1.0  # word 1 always peaks on its own object
    place = peak_place(word_map, inside, touched, (3, 3))
    # word 0 peaking on patch 8 is on the other object, on 1 on its edge, on 3 next to it; patch 5 is background
    assert place[:, 0].tolist() == [1, 2, 3, 4] and place[:, 1].tolist() == [0, 0, 0, 0]
    shares = place_shares(place[:, :1], torch.ones(4, 1, dtype=torch.bool))
    assert shares == dict(zip(PLACES, [0.0, 0.25, 0.25, 0.25, 0.25]))


def test_the_painting_test_compares_a_words_own_object_with_the_others() -> None:
    # Two scenes of three objects; drops[n, painted, word].
    drops = torch.zeros(2, 3, 3)
    drops[0, 0, 0], drops[0, 1, 0], drops[0, 2, 0] = 1.0, 0.2, 0.2  # scene 0, word 0: its own object matters most
    drops[1, 0, 0], drops[1, 1, 0] = 0.1, 0.5  # scene 1, word 0: another object matters more
    present = torch.tensor([[True, True, True], [True, True, False]])
    valid = torch.tensor([[True, False, False], [True, False, False]])
    place = torch.tensor([[4, 0, 0], [4, 0, 0]])  # both words peak on background
    figures = evidence_figures(drops, place, present, valid)
    assert figures["own object matters most, background"] == 0.5 and figures["words, background"] == 2
    assert figures["words, named object"] == 0 and figures["own object matters most, named object"] != 0.5  # NaN


def test_a_scene_with_one_object_has_nothing_to_compare() -> None:
    drops = torch.ones(1, 3, 3)
    figures = evidence_figures(drops, torch.zeros(1, 3, dtype=torch.long), torch.tensor([[True, False, False]]),
                               torch.tensor([[True, False, False]]))  # fmt: skip
    assert figures["words, named object"] == 0


def test_diagnose_reads_every_block_and_the_occlusion_map() -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    results = diagnose(model, generate_scenes(4, seed=5, image_size=64, captions="varied"))
    blocks = [f"after block {i + 1}" for i in range(len(model.model.visual.transformer.resblocks))]
    assert list(results) == [*blocks, "last block, value path", OCCLUDED]
    for reading, words in results.items():
        for figures in words.values():
            assert sum(figures[place] for place in PLACES) == pytest.approx(1.0)
            assert ("own object matters most, background" in figures) == (reading == blocks[-1])
