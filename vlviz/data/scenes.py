"""Procedural "scenes": images of coloured shapes with captions that name them.

The offline model is trained on scenes, the live trainer streams them, and their object masks are
the ground truth for grounding checks. Everything is generated deterministically from a seed and
rendered batched on a coordinate grid (no per-scene Python loop): a scene holds one to three
objects, each in its own cell of a 3 x 3 grid.

How captions are worded is a `CaptionStyle`. The default, `TEMPLATE`, lists the objects in reading
order as "a {size} {colour} {shape} {position}" joined "A, B and C", so one image has exactly one
caption; but then every word is identified by its position in the caption alone, and a model can
tie word positions to image places without reading the words. `VARIED` breaks that (random object
order, several sentence forms, synonyms, relative positions); the single-factor presets of
`CAPTION_STYLES` change one factor each, so that each factor's effect can be measured alone. The
caption's choices come from random streams of their own, one per factor: the pixels and masks of a
seed are the same in every style, and a style that differs in one factor differs only there.
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

# Words a caption may use instead of SHAPES and SIZES, the canonical word first; only words that
# describe the rendered pixels (a filled circle is a disc, not a ring). Colours keep one word each.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "block"),
    "triangle": ("triangle",),
    "cross": ("cross",),
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Every caption fits the offline model's context (32 tokens, less start and end) uncut. Each caption
# word is one BPE token and so is each punctuation mark (tests check both with the real tokenizer).
MAX_CAPTION_TOKENS = 30
_PUNCTUATION = (",", ";")
# One object's words; the first is the template's. Attribute orders and sentence forms vary.
_PHRASES: tuple[tuple[str, ...], ...] = (
    ("a", "{size}", "{colour}", "{shape}"),
    ("a", "{colour}", "{size}", "{shape}"),
    ("a", "{size}", "{shape}", "in", "{colour}"),
    ("a", "{colour}", "{shape}", "that", "is", "{size}"),
    ("a", "{shape}", "that", "is", "{size}", "and", "{colour}"),
)
_LEADS: tuple[tuple[str, ...], ...] = ((), ("there", "is"), ("we", "see"))
# (between objects, before the last one); the first is the template's "A, B and C".
_LISTS: tuple[tuple[str, str], ...] = ((",", "and"), ("and", "and"), (",", ","), (",", "plus"), (";", ";"))
# Clauses true of every scene that name no object, colour or shape in it.
DISTRACTORS: tuple[str, ...] = ("on a dark background", "in a simple drawing", "on a plain backdrop")
_ABSOLUTE, _RELATIVE, _NO_POSITION = 0, 1, 2
_POSITION_KINDS = {"absolute": _ABSOLUTE, "relative": _RELATIVE, "none": _NO_POSITION}
_CAPTION_STREAM = 1  # the captions' random streams: SeedSequence([seed, 1]), apart from the pixels' seed


@dataclass(frozen=True)
class CaptionStyle:
    """How scene captions are worded: one field per factor, so that each factor can be switched alone.

    order: "reading" (the template's) or "random": the order objects are named in.
    phrasing: "template" ("a {size} {colour} {shape}", "A, B and C") or "varied": per object one of
        several phrase forms and attribute orders ("a {colour} {shape} that is {size}"), per caption a
        lead ("there is", "we see" or none) and a list form ("A and B and C", "A; B; C", ...).
    synonyms: shape and size words drawn from SHAPE_SYNONYMS and SIZE_SYNONYMS.
    positions: "absolute" ("at the top left"), "relative" to another object of the scene ("left of
        the blue square"; absolute when the scene has one object), "none", or "mixed" (one of the three
        per object).
    distractors: a clause from DISTRACTORS before or after the objects.

    A caption longer than MAX_CAPTION_TOKENS is shortened, one step at a time, until it fits: lead
    dropped, then long phrase forms replaced by the template's (last named object first), then
    relative positions made absolute, then the distractor dropped. Only varied phrasing, or relative
    positions with a distractor, can be that long.
    """

    order: str = "reading"
    phrasing: str = "template"
    synonyms: bool = False
    positions: str = "absolute"
    distractors: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("order", ("reading", "random")),
            ("phrasing", ("template", "varied")),
            ("positions", (*_POSITION_KINDS, "mixed")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Unknown caption {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}.")


TEMPLATE = CaptionStyle()
VARIED = CaptionStyle(order="random", phrasing="varied", synonyms=True, positions="mixed")
# Preset names for the command line and the trainer: the template, everything varied, and each
# factor alone on top of the template.
CAPTION_STYLES: dict[str, CaptionStyle] = {
    "template": TEMPLATE,
    "varied": VARIED,
    "random-order": CaptionStyle(order="random"),
    "varied-phrasing": CaptionStyle(phrasing="varied"),
    "synonyms": CaptionStyle(synonyms=True),
    "relative-positions": CaptionStyle(positions="relative"),
    "mixed-positions": CaptionStyle(positions="mixed"),
    "no-positions": CaptionStyle(positions="none"),
    "distractors": CaptionStyle(distractors=True),
}


def caption_style(style: str | CaptionStyle) -> CaptionStyle:
    """A preset of CAPTION_STYLES by name, or `style` itself."""
    if isinstance(style, CaptionStyle):
        return style
    if style not in CAPTION_STYLES:
        raise ValueError(f"Unknown caption style {style!r}; choose one of {', '.join(CAPTION_STYLES)}.")
    return CAPTION_STYLES[style]


@dataclass(frozen=True)
class SceneBatch:
    """N scenes: pixels, captions, and per-object ground truth.

    Object slots are padded to MAX_OBJECTS; `present` says which slots hold an object. Attribute
    arrays hold indices into COLOURS, SHAPES, SIZES and POSITIONS. `colour_word` and `shape_word`
    are the indices, among the caption's words as `vlviz.models.tokens` splits them (punctuation is not a
    word), of the words that name each object's colour and shape; -1 for empty slots.
    """

    images: np.ndarray  # (N, S, S, 3) uint8
    captions: list[str]
    masks: np.ndarray  # (N, MAX_OBJECTS, S, S) bool, the pixels of each object
    present: np.ndarray  # (N, MAX_OBJECTS) bool
    colour: np.ndarray  # (N, MAX_OBJECTS) int
    shape: np.ndarray  # (N, MAX_OBJECTS) int
    size: np.ndarray  # (N, MAX_OBJECTS) int
    cell: np.ndarray  # (N, MAX_OBJECTS) int
    colour_word: np.ndarray  # (N, MAX_OBJECTS) int
    shape_word: np.ndarray  # (N, MAX_OBJECTS) int

    def __len__(self) -> int:
        return len(self.captions)

    def pil_images(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]


@dataclass
class _Plan:
    """One scene's caption choices; `_shorten` simplifies them in place until the caption fits."""

    slots: list[int]  # the present slots, in the order the caption names them
    names: dict[int, dict[str, str]]  # slot -> the words filling "{size}", "{colour}", "{shape}"
    phrase: dict[int, int]  # slot -> index into _PHRASES
    place: dict[int, list[str]]  # slot -> its position words
    relative: set[int]  # slots whose position is relative to another object
    absolute: dict[int, list[str]]  # slot -> its absolute position words, for shortening
    lead: tuple[str, ...]
    listing: tuple[str, str]
    distractor: tuple[str, ...]
    front: bool  # the distractor before the objects, else after


def _compose(plan: _Plan) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """The caption's tokens (words and punctuation marks) and each slot's colour and shape token index."""
    tokens = [*plan.distractor] if plan.front else []
    tokens += plan.lead
    colour_at, shape_at = {}, {}
    for j, k in enumerate(plan.slots):
        if j:
            tokens.append(plan.listing[1] if j == len(plan.slots) - 1 else plan.listing[0])
        for word in _PHRASES[plan.phrase[k]]:
            if word == "{colour}":
                colour_at[k] = len(tokens)
            elif word == "{shape}":
                shape_at[k] = len(tokens)
            tokens.append(plan.names[k].get(word, word))
        tokens += plan.place[k]
    if not plan.front:
        tokens += plan.distractor
    return tokens, colour_at, shape_at


def _shorten(plan: _Plan) -> bool:
    """Simplify one choice of `plan` (in CaptionStyle's order); False when nothing is left to simplify."""
    if plan.lead:
        plan.lead = ()
        return True
    short = len(_PHRASES[0])
    for k in reversed(plan.slots):
        if len(_PHRASES[plan.phrase[k]]) > short:
            plan.phrase[k] = 0
            return True
    for k in reversed(plan.slots):
        if k in plan.relative:
            plan.relative.discard(k)
            plan.place[k] = plan.absolute[k]
            return True
    if plan.distractor:
        plan.distractor = ()
        return True
    return False


def _relative_place(cell: np.ndarray, k: int, ref: int, names: dict[str, str], u: float) -> list[str]:
    """Words placing slot k relative to slot ref ("left of the blue square"): a true relation, picked by u."""
    dr, dc = cell[k] // 3 - cell[ref] // 3, cell[k] % 3 - cell[ref] % 3
    relations = [
        words
        for words, holds in (
            (["left", "of"], dc < 0),
            (["right", "of"], dc > 0),
            (["above"], dr < 0),
            (["below"], dr > 0),
        )
        if holds
    ]
    return [*relations[int(u * len(relations))], "the", names["{colour}"], names["{shape}"]]


def _captions(
    style: CaptionStyle, seed: int, present: np.ndarray, colour: np.ndarray, shape: np.ndarray, size: np.ndarray,
    cell: np.ndarray,
) -> tuple[list[str], np.ndarray, np.ndarray]:  # fmt: skip
    """Captions of the scenes in `style`, with each object's colour and shape word index (-1 for empty slots).

    Each factor draws from its own stream, and draws whether the style uses it or not, so that
    styles differing in one factor make the same choices for all the others.
    """
    n, k_max = present.shape
    order_rng, phrasing_rng, synonym_rng, position_rng, distractor_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, _CAPTION_STREAM]).spawn(5)
    )
    count = present.sum(axis=1)
    keys = np.where(present, order_rng.random((n, k_max)), np.inf)
    reading = np.broadcast_to(np.arange(k_max), (n, k_max))  # present slots come first, in reading order
    order = np.argsort(keys, axis=1, kind="stable") if style.order == "random" else reading
    varied = style.phrasing == "varied"
    lead = phrasing_rng.integers(len(_LEADS), size=n) * varied
    phrase = phrasing_rng.integers(len(_PHRASES), size=(n, k_max)) * varied
    listing = phrasing_rng.integers(len(_LISTS), size=n) * varied
    shape_words = [SHAPE_SYNONYMS[s] for s in SHAPES]
    size_words = [SIZE_SYNONYMS[s] for s in SIZES]
    shape_pick = synonym_rng.random((n, k_max)) * np.array([len(w) for w in shape_words])[shape]
    size_pick = synonym_rng.random((n, k_max)) * np.array([len(w) for w in size_words])[size]
    shape_pick, size_pick = (pick.astype(int) * style.synonyms for pick in (shape_pick, size_pick))
    drawn_kind = position_rng.integers(len(_POSITION_KINDS), size=(n, k_max))
    kind = drawn_kind if style.positions == "mixed" else np.full((n, k_max), _POSITION_KINDS[style.positions])
    kind = np.where((kind == _RELATIVE) & (count[:, None] < 2), _ABSOLUTE, kind)  # no other object to refer to
    referent_u, relation_u = position_rng.random((n, k_max)), position_rng.random((n, k_max))
    distractor = distractor_rng.integers(len(DISTRACTORS), size=n)
    front = distractor_rng.random(n) < 0.5

    colour_names = list(COLOURS)
    captions: list[str] = []
    colour_word = np.full((n, k_max), -1, dtype=np.int64)
    shape_word = np.full((n, k_max), -1, dtype=np.int64)
    for i in range(n):  # caption strings only; the draws above are batched
        slots = [int(k) for k in order[i, : count[i]]]
        names = {
            k: {
                "{size}": size_words[size[i, k]][size_pick[i, k]],
                "{colour}": colour_names[colour[i, k]],
                "{shape}": shape_words[shape[i, k]][shape_pick[i, k]],
            }
            for k in slots
        }
        absolute = {k: POSITIONS[cell[i, k]].split() for k in slots}
        place = {k: [] if kind[i, k] == _NO_POSITION else absolute[k] for k in slots}
        relative = {k for k in slots if kind[i, k] == _RELATIVE}
        for k in relative:
            others = [j for j in range(count[i]) if j != k]
            ref = others[int(referent_u[i, k] * len(others))]
            place[k] = _relative_place(cell[i], k, ref, names[ref], relation_u[i, k])
        plan = _Plan(
            slots, names, {k: int(phrase[i, k]) for k in slots}, place, relative, absolute, _LEADS[lead[i]],
            _LISTS[listing[i]], tuple(DISTRACTORS[distractor[i]].split()) if style.distractors else (), front[i],
        )  # fmt: skip
        tokens, colour_at, shape_at = _compose(plan)
        while len(tokens) > MAX_CAPTION_TOKENS and _shorten(plan):
            tokens, colour_at, shape_at = _compose(plan)
        word = np.cumsum([token not in _PUNCTUATION for token in tokens]) - 1  # token index -> word index
        for k in slots:
            colour_word[i, k], shape_word[i, k] = word[colour_at[k]], word[shape_at[k]]
        captions.append("".join(t if t in _PUNCTUATION or j == 0 else " " + t for j, t in enumerate(tokens)))
    return captions, colour_word, shape_word


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


def blank_scene(image_size: int = 64, seed: int = 0) -> np.ndarray:
    """A scene with no object (S, S, 3) uint8: the background and its noise, as `generate_scenes` paints them.

    Where a colour word peaks on it says what a map holds beside the image: a map that reads the pixels has no
    place to prefer, one tied to positions peaks on the same patch for every caption.
    """
    rng = np.random.default_rng(seed)
    return np.clip(BACKGROUND + rng.normal(0, 5, size=(image_size, image_size, 3)), 0, 255).astype(np.uint8)


def generate_scenes(
    n: int, seed: int = 0, image_size: int = 64, captions: str | CaptionStyle = "template"
) -> SceneBatch:
    """Render `n` scenes deterministically from `seed`, captioned in the style `captions` (see CAPTION_STYLES).

    The pixels, masks and attributes depend on `seed` only, never on the caption style.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
    style = caption_style(captions)
    rng = np.random.default_rng(seed)
    count = rng.integers(1, MAX_OBJECTS + 1, size=n)
    present = np.arange(MAX_OBJECTS)[None] < count[:, None]  # (N, K)
    # Distinct cells per scene, kept in reading order so that the template's caption order is canonical.
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

    texts, colour_word, shape_word = _captions(style, seed, present, colour, shape, size, cell)
    return SceneBatch(images, texts, masks, present, colour, shape, size, cell, colour_word, shape_word)
