"""Baselines of the grounding score: object-level chance and accuracy, and the untrained model of its architecture."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch

from vlviz.cli.main import main
from vlviz.data.inputs import PairSet
from vlviz.data.samples import bundled_scenes
from vlviz.data.scenes import SceneBatch, generate_scenes
from vlviz.grounding.maps import (
    bundled_scene_score,
    object_level_scores,
    peak_stability,
    scene_grounding_score,
    score_scenes,
    select_scenes,
    shared_untrained_model,
    untrained_model,
)
from vlviz.models.encoding import PairEncoding, VLModel
from vlviz.models.loading import OFFLINE_SPEC, load_model, model_config
from vlviz.models.tokens import token_layout
from vlviz.viz.tables import grounding_score_markdown

# A 2 x 2 patch grid. Scene 0: object 0 on patch 0, object 1 on patches 1 and 3. Scene 1: one object on
# patch 1, slot 1 empty.
INSIDE = torch.tensor(
    [
        [[True, False, False, False], [False, True, False, True]],
        [[False, True, False, False], [False, False, False, False]],
    ]
)  # (N=2, K=2, P=4)
VALID = torch.tensor([[True, True], [True, False]])


def _peaks(*patches: int) -> torch.Tensor:
    """Maps (2, 2, 4) whose word (n, k) peaks at patches[2 * n + k]."""
    maps = torch.full((4, 4), 0.1)
    maps[torch.arange(4), torch.tensor(patches)] = 0.7
    return maps.reshape(2, 2, 4)


def test_object_level_scores_by_hand() -> None:
    # Scene 0: word 0 peaks on its own object, word 1 on object 0 (not its own); scene 1: word 0 on the background.
    scores = object_level_scores(_peaks(0, 0, 2, 3), INSIDE, VALID)
    assert scores["on_object"] == 2
    assert scores["object_accuracy"] == pytest.approx(1 / 2)
    assert scores["object_chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 1) / 3)  # 2, 2 and 1 objects in view


def test_object_level_scores_count_only_valid_words_and_overlaps_as_the_named_object() -> None:
    overlapping = INSIDE.clone()
    overlapping[0, 0, 1] = True  # patch 1 lies in both objects of scene 0
    scores = object_level_scores(_peaks(1, 1, 1, 1), overlapping, VALID)  # scene 1's word 1 is not valid
    assert scores["on_object"] == 3 and scores["object_accuracy"] == 1.0


def test_no_word_on_an_object_has_no_object_accuracy() -> None:
    scores = object_level_scores(_peaks(2, 2, 3, 3), INSIDE, VALID)
    assert scores["on_object"] == 0 and math.isnan(scores["object_accuracy"])
    assert scores["object_chance"] == pytest.approx(2 / 3)


def test_peak_stability_by_hand() -> None:
    own, swapped = _peaks(0, 1, 2, 3), _peaks(0, 2, 2, 1)  # words (0, 0) and (1, 0) keep their peaks
    assert peak_stability(own, swapped, VALID) == pytest.approx(2 / 3)  # of the 3 valid words
    assert math.isnan(peak_stability(own, swapped, torch.zeros_like(VALID)))


def test_a_map_that_ignores_the_image_is_perfectly_stable() -> None:
    """Patches all alike in every scene but tokens differing: each word peaks where it always does."""
    scenes = generate_scenes(8, seed=1)
    torch.manual_seed(0)
    encoding = _random_encoding(scenes)
    same_image = replace(encoding, patch_features=encoding.patch_features[:1].expand(8, -1, -1).clone())
    figures = scene_grounding_score(same_image, scenes, kinds=["sparc"])["sparc"]
    assert figures["colour"]["peak_stability"] == 1.0 and figures["shape"]["peak_stability"] == 1.0
    moving = scene_grounding_score(encoding, scenes, kinds=["sparc"])["sparc"]  # random images: peaks move
    assert moving["colour"]["peak_stability"] < 0.5


def _random_encoding(scenes: SceneBatch) -> PairEncoding:
    """Random patch and token features on an 8 x 8 grid for `scenes`' captions."""
    layout = token_layout(open_clip.get_tokenizer("ViT-B-32", context_length=32), scenes.captions)
    n, t = layout.ids.shape
    return PairEncoding(
        image_features=torch.zeros(n, 4), text_features=torch.zeros(n, 4), patch_features=torch.randn(n, 64, 8),
        grid_size=(8, 8), token_features=torch.randn(n, t, 8), tokens=layout, logit_scale=1.0, logit_bias=None,
    )  # fmt: skip


def test_object_figures_agree_with_the_pointing_game_on_random_maps() -> None:
    """A hit is a word whose peak lies on its own object, so pointing * words = object accuracy * words on objects."""
    scenes = generate_scenes(16, seed=4)
    torch.manual_seed(0)
    encoding = _random_encoding(scenes)
    for figures in scene_grounding_score(encoding, scenes, kinds=["sparc", "cosine"]).values():
        for s in figures.values():
            assert 0 <= s["object_accuracy"] <= 1 and 0 < s["object_chance"] <= 1
            assert 0 <= s["on_object"] <= s["words"] == int(scenes.present.sum())
            assert s["pointing_game"] * s["words"] == pytest.approx(s["object_accuracy"] * s["on_object"])
            assert s["object_chance"] >= 1 / scenes.present.shape[1]


@pytest.mark.parametrize("folder", ["tiny_vit_dir", "tiny_siglip_dir"])
def test_the_untrained_model_is_the_same_architecture_freshly_seeded(
    folder: str, request: pytest.FixtureRequest
) -> None:
    """The fixtures are built as `type(cfg)(**cfg)` after torch.manual_seed(0): seed 0 gives back their weights."""
    model = load_model(str(request.getfixturevalue(folder)), device="cpu")
    state = torch.get_rng_state()
    fresh = untrained_model(model)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    assert type(fresh.model) is type(model.model) and fresh.model_cfg == model.model_cfg
    assert fresh.tokenizer is model.tokenizer and fresh.preprocess is model.preprocess
    reference = model.model.state_dict()
    assert all(torch.equal(tensor, reference[name]) for name, tensor in fresh.model.state_dict().items())
    other = untrained_model(model, seed=1).model.state_dict()
    assert not torch.equal(other["visual.conv1.weight"], reference["visual.conv1.weight"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_untrained_model_keeps_open_clips_mixed_precision(precision: str, tiny_vit_dir: Path) -> None:
    """As on an accelerator: open_clip's half weights with fp32 layer norms, rebuilt the same way."""
    name = f"local-dir:{tiny_vit_dir}"
    loaded, _, preprocess = open_clip.create_model_and_transforms(name, precision=precision)
    model = VLModel(name, loaded, preprocess, open_clip.get_tokenizer(name), torch.device("cpu"), model_config(name))
    fresh = untrained_model(model).model
    assert [type(m) for m in fresh.modules()] == [type(m) for m in loaded.modules()]
    reference = loaded.state_dict()
    assert {k: v.dtype for k, v in fresh.state_dict().items()} == {k: v.dtype for k, v in reference.items()}


def test_the_shipped_models_baseline_has_its_shapes_and_dtypes_but_not_its_weights() -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    trained, fresh = model.model.state_dict(), untrained_model(model).model.state_dict()
    assert fresh.keys() == trained.keys()
    assert all(fresh[k].shape == trained[k].shape and fresh[k].dtype == trained[k].dtype for k in trained)
    assert not torch.equal(fresh["visual.conv1.weight"], trained["visual.conv1.weight"])
    assert fresh["visual.conv1.weight"].device == model.device


def test_the_shared_untrained_model_is_built_once_per_architecture_and_bounded(
    tiny_vit_dir: Path, tiny_resnet_dir: Path
) -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    shared = shared_untrained_model(model)
    assert shared_untrained_model(model) is shared
    fresh = untrained_model(model).model.state_dict()
    assert all(torch.equal(tensor, fresh[name]) for name, tensor in shared.model.state_dict().items())
    for folder in (tiny_vit_dir, tiny_resnet_dir):  # two more architectures push the first out
        shared_untrained_model(load_model(str(folder), device="cpu"))
    assert shared_untrained_model(model) is not shared


def test_the_bundled_score_has_the_untrained_baseline_on_the_same_scenes_cached() -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    scenes, _ = bundled_scenes()
    rows = [5, 0, 17]
    images = scenes.pil_images()
    pairs = PairSet([images[i] for i in rows], [scenes.captions[i] for i in rows], [f"scene {i}" for i in rows])
    score = bundled_scene_score(model, pairs)
    assert score is not None and score.scenes == 3
    direct = score_scenes(untrained_model(model), select_scenes(scenes, rows), kinds=["sparc"])["sparc"]
    for name in ("colour", "shape"):
        blank = direct[name].pop("blank_peak_share")  # the eval command's diagnostic, not the tab's
        assert score.untrained[name] == pytest.approx(direct[name], nan_ok=True) and 0 < blank <= 1
        assert score.untrained[name]["words"] == score.scores[name]["words"] > 0
    start = time.perf_counter()
    again = bundled_scene_score(model, pairs, "cosine")  # another kind: the cached encoding, no new model
    assert time.perf_counter() - start < 1.0 and again is not None
    assert bundled_scene_score(model, PairSet(images[:1], ["another caption"], ["x"])) is None


def test_the_markdown_table_shows_both_models_and_both_chances() -> None:
    figures = {"pointing_game": 0.2, "mass_in_mask": 0.1, "chance": 0.05, "words": 10, "object_chance": 0.5,
               "object_accuracy": float("nan"), "on_object": 0}  # fmt: skip
    text = grounding_score_markdown({"colour": figures}, {"colour": figures | {"pointing_game": 0.4}}, "SPARC", 3, 0.25)
    assert "| colour | this model | 0.200 |" in text and "| colour | untrained | 0.400 |" in text
    assert "uniform chance" in text and "object chance" in text and "| n/a | 0.500 | 0 of 10 |" in text


def test_eval_grounding_prints_the_baselines(tiny_vit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-grounding", "--model", str(tiny_vit_dir), "--n", "4", "--kind", "sparc"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["untrained_seed"] == 0 and set(result["untrained"]) == {"sparc"}
    assert result["untrained"] == result["scores"]  # the tiny model is itself its architecture at seed 0
    for figures in (result["scores"]["sparc"]["colour"], result["untrained"]["sparc"]["shape"]):
        assert {"pointing_game", "chance", "object_chance", "object_accuracy", "on_object"} <= set(figures)
    table = captured.err.splitlines()
    assert "uniform chance" in table[0] and "object chance" in table[0]
    assert [line.split()[:3] for line in table[1:]] == [
        ["sparc", "colour", "evaluated"], ["sparc", "colour", "untrained"],
        ["sparc", "shape", "evaluated"], ["sparc", "shape", "untrained"],
        ["sparc", "colour", "evaluated"], ["sparc", "colour", "untrained"],  # pointing by naming order
    ]  # fmt: skip
    assert "pointing by naming order" in table[-1]
    assert {"pointing_named_1", "pointing_named_2", "pointing_named_3"} <= set(result["scores"]["sparc"]["colour"])


def test_maps_by_kind_scores_each_kind_as_the_bundled_score_and_skips_what_a_model_cannot_draw() -> None:
    import copy

    from vlviz.data.inputs import pairs_from_uploads
    from vlviz.data.samples import sample_files
    from vlviz.grounding.maps import maps_by_kind
    from vlviz.models.towers import TokenReadout, set_token_readout

    model = load_model(OFFLINE_SPEC, device="cpu")
    pairs = pairs_from_uploads(*sample_files("scenes"))
    maps, pointing = maps_by_kind(model, pairs, 0, ["sparc", "maskclip"])
    assert list(maps) == list(pointing) == ["sparc", "maskclip"]
    for kind in maps:
        assert pointing[kind] == pytest.approx(
            bundled_scene_score(model, pairs, kind).scores["colour"]["pointing_game"]
        )
    early = copy.copy(model)
    early.model = copy.deepcopy(model.model)
    set_token_readout(early.model, TokenReadout(0, 0))
    maps, pointing = maps_by_kind(
        early, PairSet(pairs.images[:2], pairs.captions[:2], ["a", "b"]), 1, ["sparc", "maskclip"]
    )
    assert list(maps) == list(pointing) == ["sparc"]  # no block to re-read
