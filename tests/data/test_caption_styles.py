"""Caption styles of the scenes: each names the same objects truthfully, records where its colour and shape
words are, changes only its own factor, and (varied) no longer lets word position alone identify a word."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from vlviz.data.scenes import (
    CAPTION_STYLES,
    COLOURS,
    DISTRACTORS,
    MAX_CAPTION_TOKENS,
    POSITIONS,
    SHAPE_SYNONYMS,
    SHAPES,
    SIZE_SYNONYMS,
    SIZES,
    VARIED,
    CaptionStyle,
    SceneBatch,
    generate_scenes,
)
from vlviz.data.sources import HELD_OUT_SEED, SceneSource
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.tokens import token_layout

COLOUR_NAMES = list(COLOURS)
FACTORS = [name for name in CAPTION_STYLES if name not in ("template", "varied")]


@pytest.fixture(scope="module")
def tokenizer():
    """The offline model's own tokenizer (context 32): the words grounding is scored on."""
    return load_model(OFFLINE_SPEC, device="cpu").tokenizer


def _scenes(style: str | CaptionStyle, n: int = 300, seed: int = 5) -> SceneBatch:
    return generate_scenes(n, seed=seed, image_size=24, captions=style)


def _phrase(scenes: SceneBatch, i: int, k: int) -> str:
    """Object k of scene i as the template names it, without its position."""
    return f"a {SIZES[scenes.size[i, k]]} {COLOUR_NAMES[scenes.colour[i, k]]} {SHAPES[scenes.shape[i, k]]}"


@pytest.mark.parametrize("style", list(CAPTION_STYLES))
def test_every_style_is_deterministic_per_seed(style: str) -> None:
    a, b, c = _scenes(style, 40), _scenes(style, 40), _scenes(style, 40, seed=6)
    assert a.captions == b.captions and np.array_equal(a.colour_word, b.colour_word)
    assert a.captions != c.captions


@pytest.mark.parametrize("style", list(CAPTION_STYLES))
def test_the_style_changes_the_captions_only(style: str) -> None:
    template, styled = _scenes("template", 60), _scenes(style, 60)
    for name in ("images", "masks", "present", "colour", "shape", "size", "cell"):
        assert np.array_equal(getattr(template, name), getattr(styled, name)), name


@pytest.mark.parametrize("style", list(CAPTION_STYLES))
def test_recorded_words_name_each_objects_colour_and_shape_uncut(style: str, tokenizer) -> None:
    """Checked on the words the real tokenizer reads; no caption is cut by the offline model's context."""
    scenes = _scenes(style, 400)
    layout = token_layout(tokenizer, scenes.captions)
    assert int(layout.word_mask.sum(dim=1).max()) <= MAX_CAPTION_TOKENS
    for i, words in enumerate(layout.words):  # strings, scene by scene
        assert words == re.findall(r"[a-z]+", scenes.captions[i])  # every word kept, punctuation not a word
        for k in range(scenes.present.shape[1]):
            if not scenes.present[i, k]:
                assert scenes.colour_word[i, k] == -1 and scenes.shape_word[i, k] == -1
                continue
            assert words[scenes.colour_word[i, k]] == COLOUR_NAMES[scenes.colour[i, k]]
            assert words[scenes.shape_word[i, k]] in SHAPE_SYNONYMS[SHAPES[scenes.shape[i, k]]]


def test_random_order_names_the_template_phrases_in_another_order() -> None:
    template, shuffled = _scenes("template"), _scenes("random-order")
    reordered = 0
    for old, new in zip(template.captions, shuffled.captions):
        old_parts, new_parts = re.split(r", | and ", old), re.split(r", | and ", new)
        assert sorted(old_parts) == sorted(new_parts) and new.count(",") == old.count(",")
        reordered += old_parts != new_parts
    assert reordered > len(template) / 4


def test_synonyms_change_only_size_and_shape_words_and_keep_their_meaning() -> None:
    template, synonyms = _scenes("template"), _scenes("synonyms")
    meaning = {w: s for s, words in {**SHAPE_SYNONYMS, **SIZE_SYNONYMS}.items() for w in words}
    changed = 0
    for old, new in zip(template.captions, synonyms.captions):
        old_words, new_words = old.split(" "), new.split(" ")
        assert len(old_words) == len(new_words)
        for a, b in zip(old_words, new_words):
            if a != b:
                assert meaning[b] == a
                changed += 1
    assert changed > len(template) / 2
    assert np.array_equal(template.colour_word, synonyms.colour_word)


def test_no_positions_drops_exactly_the_position_words() -> None:
    template, bare = _scenes("template"), _scenes("no-positions")
    for i, caption in enumerate(template.captions):
        for k in np.flatnonzero(template.present[i]):
            phrase = _phrase(template, i, k)
            caption = caption.replace(f"{phrase} {POSITIONS[template.cell[i, k]]}", phrase, 1)
        assert bare.captions[i] == caption


@pytest.mark.parametrize("style", ["relative-positions", "mixed-positions"])
def test_relative_positions_are_true_of_the_cells(style: str) -> None:
    """Each object keeps its template phrase; its position is absolute, absent, or true relative to another object."""
    template, styled = _scenes("template"), _scenes(style)
    kinds: set[str] = set()
    for i, caption in enumerate(styled.captions):
        parts = re.split(r", | and ", caption)
        present = np.flatnonzero(template.present[i])
        assert len(parts) == len(present) and caption.count(",") == template.captions[i].count(",")
        for k, part in zip(present, parts):
            phrase = _phrase(template, i, k)
            assert part.startswith(phrase)
            place = part.removeprefix(phrase).strip()
            if place in ("", POSITIONS[template.cell[i, k]]):
                kinds.add("absent" if not place else "absolute")
                continue
            kinds.add("relative")
            relation, colour, shape = re.fullmatch(r"(left of|right of|above|below) the (\w+) (\w+)", place).groups()
            row, col = divmod(int(template.cell[i, k]), 3)
            truths = []
            for j in present:
                if j != k and (COLOUR_NAMES[template.colour[i, j]], SHAPES[template.shape[i, j]]) == (colour, shape):
                    other_row, other_col = divmod(int(template.cell[i, j]), 3)
                    truths.append(
                        {"left of": col < other_col, "right of": col > other_col, "above": row < other_row,
                         "below": row > other_row}[relation]
                    )  # fmt: skip
            assert any(truths), (caption, part)
    assert "relative" in kinds and (kinds == {"absolute", "absent", "relative"}) == (style == "mixed-positions")


def test_varied_phrasing_keeps_objects_order_and_positions() -> None:
    template, phrased = _scenes("template"), _scenes("varied-phrasing")
    assert any(a != b for a, b in zip(template.captions, phrased.captions))
    for i, caption in enumerate(phrased.captions):
        words = re.findall(r"[a-z]+", caption)
        present = np.flatnonzero(template.present[i])
        assert np.all(np.diff(phrased.colour_word[i, present]) > 0)  # reading order kept
        for k in present:
            assert words[phrased.shape_word[i, k]] == SHAPES[template.shape[i, k]]  # no synonyms
        cursor = 0
        for k in present:  # absolute positions, in reading order
            cursor = caption.index(POSITIONS[template.cell[i, k]], cursor)


def test_distractors_add_one_clause_before_or_after() -> None:
    template, distracted = _scenes("template"), _scenes("distractors")
    ends = set()
    for old, new in zip(template.captions, distracted.captions):
        found = [(d, new.startswith(d)) for d in DISTRACTORS if new in (f"{d} {old}", f"{old} {d}")]
        assert len(found) == 1
        ends.add(found[0][1])
    assert ends == {True, False}
    words = {w for d in DISTRACTORS for w in d.split()}
    assert not words & {*COLOURS, *SHAPES, *(w for s in SHAPE_SYNONYMS.values() for w in s)}


def test_each_factor_preset_is_the_template_with_one_field_changed() -> None:
    template = CAPTION_STYLES["template"]
    for name in FACTORS:
        style = CAPTION_STYLES[name]
        assert sum(getattr(style, f) != getattr(template, f) for f in vars(template)) == 1, name


def test_switching_one_factor_of_varied_leaves_the_others_choices_alone() -> None:
    """Each factor draws from its own stream: varied without synonyms differs from varied only in its words."""
    varied, plain_words = _scenes(VARIED), _scenes(replace(VARIED, synonyms=False))
    meaning = {w: s for s, words in {**SHAPE_SYNONYMS, **SIZE_SYNONYMS}.items() for w in words}
    for a, b in zip(varied.captions, plain_words.captions):
        assert [meaning.get(w, w) for w in re.findall(r"\w+|[,;]", a)] == re.findall(r"\w+|[,;]", b)


def test_in_varied_captions_a_words_position_does_not_identify_its_object() -> None:
    """The template fixes the colour word's index given the scene's cells; varied captions do not.

    The template also always names the reading-order-first object first; varied captions name it first
    about as often as a random pick among the scene's objects would.
    """
    for style, determined in (("template", True), ("varied", False)):
        scenes = _scenes(style, 4000, seed=1)
        indices: dict[tuple, set[int]] = defaultdict(set)
        first_is_reading_first, objects = [], []
        for i in range(len(scenes)):
            present = np.flatnonzero(scenes.present[i])
            cells = tuple(scenes.cell[i, present])
            for k in present:
                indices[(cells, int(scenes.cell[i, k]))].add(int(scenes.colour_word[i, k]))
            if len(present) > 1:
                first_is_reading_first.append(int(np.argmin(scenes.colour_word[i, present])) == 0)
                objects.append(len(present))
        spread = np.array([len(values) for values in indices.values()])
        share_first = np.mean(first_is_reading_first)
        if determined:
            assert spread.max() == 1 and share_first == 1
        else:
            assert np.median(spread) >= 3 and share_first < np.mean(1 / np.array(objects)) + 0.05


def test_the_scene_source_trains_and_holds_out_in_its_style() -> None:
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    template, varied = SceneSource(24, mean, std, held_out=8), SceneSource(24, mean, std, held_out=8, captions="varied")
    assert varied.held_out.captions == generate_scenes(8, seed=HELD_OUT_SEED, image_size=24, captions=VARIED).captions
    assert varied.held_out.scenes.captions == varied.held_out.captions
    assert torch.equal(varied.held_out.pixels, template.held_out.pixels)
    pixels, captions = varied.batch(step=2, batch_size=4, seed=1)
    assert captions == generate_scenes(4, seed=1_000_003 + 2, image_size=24, captions=VARIED).captions
    assert torch.equal(pixels, template.batch(step=2, batch_size=4, seed=1)[0])


def test_unknown_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="Unknown caption style 'fancy'"):
        generate_scenes(2, captions="fancy")
    with pytest.raises(ValueError, match="Unknown caption order 'sorted'"):
        CaptionStyle(order="sorted")
    with pytest.raises(ValueError, match="Unknown caption positions 'far'"):
        CaptionStyle(positions="far")
