"""The procedural scenes: determinism, captions that match the pixels, and masks."""

import numpy as np
import pytest

from vlviz.data.scenes import COLOURS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, generate_scenes


def test_same_seed_same_scenes_other_seed_other_scenes() -> None:
    a, b, c = generate_scenes(16, seed=3), generate_scenes(16, seed=3), generate_scenes(16, seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert a.captions != c.captions


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
