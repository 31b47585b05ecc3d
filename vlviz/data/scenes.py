"""Procedural "scenes": images of coloured shapes with captions that name them.

The offline model is trained on scenes, the live trainer streams them, and their object masks are
the ground truth for grounding checks. Everything is generated deterministically from a seed and
rendered batched on a coordinate grid (no per-scene Python loop): a scene holds one to three
objects, each in its own cell of a 3 x 3 grid, listed in the caption in reading order, so one image
has exactly one caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 170, 70),
    "blue": (50, 90, 225),
    "yellow": (235, 210, 50),
    "purple": (150, 70, 200),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
# Cells of the 3 x 3 grid in reading order, with the phrase a caption uses for each.
POSITIONS: tuple[str, ...] = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the center",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
MAX_OBJECTS = 3
BACKGROUND = 40
# Object radius as a fraction of the image side, per size.
_RADIUS = {"small": 0.085, "large": 0.145}


@dataclass(frozen=True)
class SceneBatch:
    """N scenes: pixels, captions, and per-object ground truth.

    Object slots are padded to MAX_OBJECTS; `present` says which slots hold an object. Attribute
    arrays hold indices into COLOURS, SHAPES, SIZES and POSITIONS.
    """

    images: np.ndarray  # (N, S, S, 3) uint8
    captions: list[str]
    masks: np.ndarray  # (N, MAX_OBJECTS, S, S) bool, the pixels of each object
    present: np.ndarray  # (N, MAX_OBJECTS) bool
    colour: np.ndarray  # (N, MAX_OBJECTS) int
    shape: np.ndarray  # (N, MAX_OBJECTS) int
    size: np.ndarray  # (N, MAX_OBJECTS) int
    cell: np.ndarray  # (N, MAX_OBJECTS) int

    def __len__(self) -> int:
        return len(self.captions)

    def pil_images(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]


def _caption(colours: list[str], shapes: list[str], sizes: list[str], cells: list[int]) -> str:
    parts = [f"a {sz} {c} {sh} {POSITIONS[p]}" for c, sh, sz, p in zip(colours, shapes, sizes, cells)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _shape_masks(yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Masks of every shape kind for N objects on the pixel grid: (len(SHAPES), N, S, S) bool."""
    dy = yy[None] - cy[:, None, None]  # (N, S, S)
    dx = xx[None] - cx[:, None, None]
    r = r[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    # Upward triangle: apex at the top, base at the bottom, width growing linearly downwards.
    triangle = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.62)
    arm = 0.33 * r
    cross = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    return np.stack([circle, square, triangle, cross])


def generate_scenes(n: int, seed: int = 0, image_size: int = 64) -> SceneBatch:
    """Render `n` scenes deterministically from `seed`."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
    rng = np.random.default_rng(seed)
    count = rng.integers(1, MAX_OBJECTS + 1, size=n)
    present = np.arange(MAX_OBJECTS)[None] < count[:, None]  # (N, K)
    # Distinct cells per scene, kept in reading order so that the caption order is canonical.
    cell = np.sort(np.argsort(rng.random((n, 9)), axis=1)[:, :MAX_OBJECTS], axis=1)
    # Present slots first: order the chosen cells of present objects before the padded ones.
    chosen = np.where(present, cell, 99)
    order = np.argsort(chosen, axis=1, kind="stable")
    cell = np.take_along_axis(cell, order, axis=1)
    colour = rng.integers(0, len(COLOURS), size=(n, MAX_OBJECTS))
    shape = rng.integers(0, len(SHAPES), size=(n, MAX_OBJECTS))
    size = rng.integers(0, len(SIZES), size=(n, MAX_OBJECTS))

    side = float(image_size)
    cell_side = side / 3
    radius = np.array([_RADIUS[s] for s in SIZES], dtype=np.float32)[size] * side  # (N, K)
    slack = np.maximum(cell_side / 2 - radius - 1.0, 0.0)
    jitter = rng.uniform(-1, 1, size=(n, MAX_OBJECTS, 2)) * slack[..., None] * 0.8
    cy = (cell // 3 + 0.5) * cell_side + jitter[..., 0]
    cx = (cell % 3 + 0.5) * cell_side + jitter[..., 1]

    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    palette = np.array(list(COLOURS.values()), dtype=np.float64)  # (C, 3)
    tint = rng.uniform(-18, 18, size=(n, MAX_OBJECTS, 3))
    images = BACKGROUND + rng.normal(0, 5, size=(n, image_size, image_size, 3))
    masks = np.zeros((n, MAX_OBJECTS, image_size, image_size), dtype=bool)
    for k in range(MAX_OBJECTS):  # a loop over object slots (3), never over scenes
        kinds = _shape_masks(yy, xx, cy[:, k], cx[:, k], radius[:, k])  # (len(SHAPES), N, S, S)
        mask = np.take_along_axis(kinds, shape[None, :, k, None, None], axis=0)[0] & present[:, k, None, None]
        masks[:, k] = mask
        fill = palette[colour[:, k]] + tint[:, k]  # (N, 3)
        images = np.where(mask[..., None], fill[:, None, None, :], images)
    images = np.clip(images, 0, 255).astype(np.uint8)

    colour_names, size_names = list(COLOURS), list(SIZES)
    captions = [
        _caption(
            [colour_names[c] for c in colour[i, : count[i]]],
            [SHAPES[s] for s in shape[i, : count[i]]],
            [size_names[s] for s in size[i, : count[i]]],
            list(cell[i, : count[i]]),
        )
        for i in range(n)  # caption strings only; the tensors above are batched
    ]
    return SceneBatch(images, captions, masks, present, colour, shape, size, cell)
