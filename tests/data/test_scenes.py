"""The procedural scenes: determinism, captions that match the pixels, and masks."""

import numpy as np
import pytest

from vlviz.data.scenes import COLOURS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, generate_scenes

# Captions of the generator before caption styles existed: the template style must keep them, so that
# the shipped model's results and the bundled sample scenes reproduce.
TEMPLATE_CAPTIONS = {
    0: [
        "a large green triangle at the top left, a small white triangle at the top and a large yellow cross at the "
        "bottom left",
        "a large white triangle at the top left and a small purple square at the top right",
        "a large blue square at the top left and a small white square at the top",
    ],
    7: [
        "a small white circle at the top, a large blue circle at the top right and a large yellow cross in the center",
        "a large green triangle at the top left and a small blue cross at the top",
        "a small green triangle at the top, a large white square on the left and a large red square in the center",
    ],
    2024: [
        "a large green triangle on the left",
        "a small purple cross at the top, a small blue square on the left and a small white square at the bottom right",
        "a small green square at the top left",
    ],
}


def test_same_seed_same_scenes_other_seed_other_scenes() -> None:
    a, b, c = generate_scenes(16, seed=3), generate_scenes(16, seed=3), generate_scenes(16, seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert a.captions != c.captions


@pytest.mark.parametrize("seed", sorted(TEMPLATE_CAPTIONS))
def test_the_template_style_is_the_default_and_keeps_the_old_captions(seed: int) -> None:
    assert generate_scenes(3, seed=seed).captions == TEMPLATE_CAPTIONS[seed]
    assert generate_scenes(3, seed=seed, captions="template").captions == TEMPLATE_CAPTIONS[seed]


def test_captions_name_every_object_in_reading_order() -> None:
    scenes = generate_scenes(64, seed=1)
    colours = list(COLOURS)
    for i, caption in enumerate(scenes.captions):
        objects = [
            f"a {SIZES[scenes.size[i, k]]} {colours[scenes.colour[i, k]]} {SHAPES[scenes.shape[i, k]]} "
            f"{POSITIONS[scenes.cell[i, k]]}"
            for k in range(MAX_OBJECTS)
            if scenes.present[i, k]
        ]
        positions = [caption.index(o) for o in objects]
        assert positions == sorted(positions) and caption.count(" a ") + 1 == len(objects)
        cells = scenes.cell[i][scenes.present[i]]
        assert list(cells) == sorted(cells) and len(set(cells)) == len(cells)


def test_masks_cover_their_object_in_its_colour_and_nothing_else() -> None:
    scenes = generate_scenes(32, seed=2)
    palette = np.array(list(COLOURS.values()))
    assert not scenes.masks[~scenes.present].any()
    assert scenes.masks[scenes.present].reshape(int(scenes.present.sum()), -1).sum(axis=1).min() > 10
    assert (scenes.masks.sum(axis=1) <= 1).all()  # objects never overlap
    i, k = np.argwhere(scenes.present)[0]
    pixels = scenes.images[i][scenes.masks[i, k]].astype(float)
    assert np.abs(pixels.mean(axis=0) - palette[scenes.colour[i, k]]).max() < 20
    background = scenes.images[i][~scenes.masks[i].any(axis=0)].astype(float)
    assert background.mean() < 60


def test_one_to_three_objects_and_argument_checks() -> None:
    counts = generate_scenes(200, seed=0).present.sum(axis=1)
    assert set(counts.tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="n must be at least 1"):
        generate_scenes(0)
    with pytest.raises(ValueError, match="image_size must be at least 24"):
        generate_scenes(4, image_size=8)
