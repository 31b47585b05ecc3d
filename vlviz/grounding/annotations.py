"""The grounding score on the user's own annotated images (`vlviz.data.annotations`: COCO instances or masks).

An image's objects are its categories; each category's name is the word grounded, and all of the image's
objects of that category are its target. The caption a word is read in is, by default, one per object:
`QUERY_TEMPLATE` with the category's name ("a photo of a dog."), CLIP's own prompt, so that each word is
read alone. Given a caption table instead, each image is read with its own caption, and each category at
the first place the caption names it (a category it does not name is not scored). A name of several words
or BPE pieces is one word: its map is the mean of its tokens' maps.

The masks go through the model's own preprocessing (its resize and centre crop) as the image does, then
onto the patch grid (`object_patch_masks`); an object the crop cuts away is not scored. The figures are
the scenes' (`word_hits`): pointing game, mass in mask, uniform chance, object accuracy and object chance,
per map kind, over every object and per category, beside the untrained model's. Images are read, scored
and dropped a batch at a time, so memory does not grow with the number of images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlviz.data.annotations import Annotations, Files, load_annotated_image, read_coco_instances, read_mask_folder
from vlviz.data.inputs import InputError, load_caption_table
from vlviz.grounding.maps import (
    MIN_COVER,
    MODEL_KINDS,
    model_scene_maps,
    object_patch_masks,
    shared_untrained_model,
    word_figures,
    word_hits,
)
from vlviz.grounding.sparc import GROUNDING_MAPS, grounding_maps
from vlviz.models.encoding import ENCODE_BATCH, VLModel
from vlviz.models.tokens import token_layout

QUERY_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class _Batch:
    """Captions to encode, each with its image and the objects of that image (K slots, padded)."""

    images: list[Image.Image]  # (Q,) the image of each caption
    captions: list[str]  # (Q,)
    inside: torch.Tensor  # (Q, K, P) bool: each object's patches
    spans: torch.Tensor  # (Q, K, T) float: the weights of the tokens naming each object (their mean), or 0
    valid: torch.Tensor  # (Q, K) bool: the objects scored in this caption
    category: torch.Tensor  # (Q, K) long: index into Annotations.categories; -1 for padding


def input_masks(model: VLModel, masks: np.ndarray) -> torch.Tensor:
    """Masks (K, H, W) uint8 at the image's size -> (K, S, S) float in [0, 1], where the model sees its image.

    They go through the model's own preprocessing, three at a time as the channels of one picture, so
    that any resize mode and crop open_clip configures moves them as it moves the image's pixels.
    """
    k = len(masks)
    padded = np.concatenate([masks, np.zeros((-k % 3, *masks.shape[1:]), dtype=np.uint8)])
    seen = [
        model.input_image(Image.fromarray(np.ascontiguousarray(padded[i : i + 3].transpose(1, 2, 0))))
        for i in range(0, len(padded), 3)
    ]
    return torch.from_numpy(np.concatenate(seen, axis=-1).transpose(2, 0, 1)[:k].copy()).float() / 255


class _Queries:
    """Which tokens of a caption name a category: the first run of its name's words (compared in lower case)."""

    def __init__(self, model: VLModel, template: str, categories: list[str]) -> None:
        if template.count("{}") != 1:
            raise ValueError(f"The caption template {template!r} must hold one {{}}, where the category name goes.")
        self.tokenizer, self.template, self.categories = model.tokenizer, template, categories
        self.start = len(self.words(template.split("{}")[0]))  # a name is looked up after the template's own words
        self._names: dict[str, list[str]] = {}

    def words(self, text: str) -> list[str]:
        return [word.lower() for word in token_layout(self.tokenizer, [text]).words[0]]

    def name(self, category: str) -> list[str]:
        if category not in self._names:
            self._names[category] = self.words(category)
        return self._names[category]

    def tokens(self, words: list[str], word_index: torch.Tensor, category: str, start: int) -> torch.Tensor | None:
        """(T,) bool: the tokens of the first run of `category`'s words at or after word `start`; None if none."""
        name = self.name(category)
        lowered = [word.lower() for word in words]
        for i in range(start, len(lowered) - len(name) + 1):  # a caption's few dozen words
            if name and lowered[i : i + len(name)] == name:
                return (word_index >= i) & (word_index < i + len(name))
        return None


@dataclass(frozen=True)
class _Read:
    """One annotated image, read: its pixels, its objects' patches and categories, and the captions it is read with."""

    picture: Image.Image
    inside: torch.Tensor  # (K, P) bool
    categories: list[int]  # (K,) indices into Annotations.categories
    captions: list[tuple[str, list[int]]]  # each caption and the objects it names


def _batches(
    model: VLModel, annotations: Annotations, min_cover: float, queries: _Queries, captions: dict[str, str] | None,
    counts: dict[str, int],
) -> Iterator[_Batch]:  # fmt: skip
    """The annotated images, a batch of about ENCODE_BATCH captions at a time; `counts` tallies the objects."""
    index = {name: i for i, name in enumerate(annotations.categories)}
    pending: list[_Read] = []
    for position, entry in enumerate(annotations.images):
        picture, categories, masks = load_annotated_image(entry)
        inside = object_patch_masks(input_masks(model, masks)[None], model.grid_size, min_cover)[0]
        if captions is None:  # one caption an object, naming it
            read = [(queries.template.replace("{}", name), [k]) for k, name in enumerate(categories)]
        else:
            read = [(captions[os.path.basename(entry.name)], list(range(len(categories))))]
        pending.append(_Read(picture, inside, [index[name] for name in categories], read))
        if sum(len(image.captions) for image in pending) >= ENCODE_BATCH or position == len(annotations.images) - 1:
            yield _batch(pending, queries, captions is None, counts)
            pending = []


def _batch(pending: list[_Read], queries: _Queries, templated: bool, counts: dict[str, int]) -> _Batch:
    """Pad the pending images' objects to one K and find the tokens that name each object in each caption."""
    captions = [caption for image in pending for caption, _ in image.captions]
    layout = token_layout(queries.tokenizer, captions)
    q, k = len(captions), max(len(image.categories) for image in pending)
    inside = torch.zeros(q, k, pending[0].inside.shape[-1], dtype=torch.bool)
    spans, category = torch.zeros(q, k, layout.ids.shape[1]), torch.full((q, k), -1, dtype=torch.long)
    images, row = [], 0
    for image in pending:  # images and their captions: reading, not patches
        named = torch.zeros(len(image.categories), dtype=torch.bool)
        for _, slots in image.captions:
            images.append(image.picture)
            inside[row, : len(image.categories)] = image.inside
            category[row, : len(image.categories)] = torch.tensor(image.categories)
            for slot in slots:
                found = queries.tokens(
                    layout.words[row], layout.word_index[row], queries.categories[image.categories[slot]],
                    queries.start if templated else 0,
                )  # fmt: skip
                if found is not None:
                    spans[row, slot] = found.float() / found.sum()
                    named[slot] = True
            row += 1
        counts["objects"] += len(named)
        counts["not_named"] += int((~named).sum())
        counts["outside_crop"] += int((named & ~image.inside.any(dim=-1)).sum())
    valid = (spans.sum(-1) > 0) & inside.any(dim=-1)
    return _Batch(images, captions, inside, spans, valid, category)


def _token_maps(model: VLModel, batch: _Batch, kinds: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each kind's maps (Q, T, P) of the batch's captions on their images, on the CPU."""
    encoding = model.encode_pairs(batch.images, batch.captions)
    if encoding.token_features is None or encoding.patch_features is None:
        raise ValueError(f"No grounding maps for {model.name}: {encoding.patches_unavailable}.")
    tokens, patches = encoding.token_features.float(), encoding.patch_features.float()
    for kind in kinds:
        if kind in MODEL_KINDS:
            yield kind, model_scene_maps(model, batch.images, batch.captions, kind, swapped=False)[0].cpu()
        else:
            yield kind, grounding_maps(tokens, patches, kind).cpu()


def _figures(parts: list[dict[str, torch.Tensor]], category: torch.Tensor, names: list[str]) -> dict:
    """`word_figures` over every scored object and over each category's."""
    merged = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return {
        "all": word_figures(merged, torch.ones_like(category, dtype=torch.bool)),
        "categories": {name: word_figures(merged, category == i) for i, name in enumerate(names)},
    }


def score_annotations(
    model: VLModel,
    annotations: Annotations,
    kinds: list[str] | None = None,
    *,
    untrained: VLModel | None = None,
    min_cover: float = MIN_COVER,
    template: str = QUERY_TEMPLATE,
    captions: dict[str, str] | None = None,
) -> dict:
    """The grounding score of `model` (and of `untrained`, when given) on annotated images, as a plain dict.

    {"images", "objects", "not_named", "outside_crop", "scores": {kind: {"all": figures, "categories":
    {name: figures}}}, "untrained": the same}, each figures dict `word_figures`'s. `kinds`: of GROUNDING_MAPS
    and MODEL_KINDS (default: GROUNDING_MAPS). `captions` ({image file name: caption}) replaces the
    template. Raises ValueError for a model without patch tokens, an unknown kind or a bad template, and
    InputError for an image without a caption or one that cannot be read.
    """
    if model.patches_unavailable:
        raise ValueError(f"No grounding maps for {model.name}: {model.patches_unavailable}.")
    kinds = list(GROUNDING_MAPS) if kinds is None else list(kinds)
    unknown = [kind for kind in kinds if kind not in GROUNDING_MAPS and kind not in MODEL_KINDS]
    if unknown:
        raise ValueError(f"Unknown map kinds {unknown}; choose from {[*GROUNDING_MAPS, *MODEL_KINDS]}.")
    if not annotations.images:
        raise InputError("No image has an annotated object: nothing to score.")
    if captions is not None:
        missing = [image.name for image in annotations.images if os.path.basename(image.name) not in captions]
        if missing:
            raise InputError(
                f"{len(missing)} annotated images have no caption in the caption table, e.g. {missing[0]}."
            )
    queries = _Queries(model, template, annotations.categories)
    scorers = {"scores": model} | ({"untrained": untrained} if untrained is not None else {})
    hits: dict[str, dict[str, list[dict[str, torch.Tensor]]]] = {
        label: {kind: [] for kind in kinds} for label in scorers
    }
    categories, counts = [], {"objects": 0, "not_named": 0, "outside_crop": 0}
    for batch in _batches(model, annotations, min_cover, queries, captions, counts):
        categories.append(batch.category[batch.valid])
        for label, scorer in scorers.items():
            for kind, maps in _token_maps(scorer, batch, kinds):
                per_word = word_hits(batch.spans @ maps, batch.inside)  # (Q, K, P) maps of each object's name
                hits[label][kind].append({key: value[batch.valid] for key, value in per_word.items()})
    category = torch.cat(categories)
    result: dict = {"images": len(annotations.images), **counts}
    for label in scorers:
        result[label] = {kind: _figures(parts, category, annotations.categories) for kind, parts in hits[label].items()}
    return result


def annotation_grounding(
    model: VLModel,
    annotations: str | os.PathLike[str],
    images: Files,
    kinds: list[str] | None = None,
    *,
    masks: str | os.PathLike[str] | Mapping[str, str] | None = None,
    caption_table: str | os.PathLike[str] | None = None,
    template: str = QUERY_TEMPLATE,
    min_cover: float = MIN_COVER,
    max_images: int | None = None,
    baseline: bool = True,
    max_pixels: int | None = None,
) -> dict:
    """Read annotations with their images and score `model` on them, beside its untrained twin: for a UI or a script.

    `annotations`: a COCO instances JSON, or, with `masks` (a mask folder), its labels table. `images`: a
    folder, or image files matched by base name (uploads). Returns `score_annotations`'s dict with the
    format ("coco" or "masks"), the reading's notices, the query and min_cover. `max_pixels`: most pixels the
    annotated images may hold together (from their headers, before any is decoded; None: no bound, as for a
    script). Raises InputError for bad annotations or images, with a message for the user.
    """
    if masks is not None:
        read = read_mask_folder(masks, annotations, images, max_images)
    else:
        read = read_coco_instances(annotations, images, max_images)
    pixels = sum(width * height for width, height in (image.size for image in read.images))
    if max_pixels is not None and pixels > max_pixels:
        raise InputError(
            f"The annotated images ({len(read.images):,}) hold {pixels / 1e6:,.0f} megapixels together, more than the "
            f"{max_pixels / 1e6:,.0f} one request may decode: score fewer or smaller images."
        )
    captions = None
    if caption_table is not None:
        captions = load_caption_table(caption_table, os.path.basename(os.fspath(caption_table)))
    untrained = shared_untrained_model(model) if baseline else None
    scores = score_annotations(
        model, read, kinds, untrained=untrained, min_cover=min_cover, template=template, captions=captions
    )
    query = "captions" if captions is not None else template
    return {"format": read.source, "query": query, "min_cover": min_cover, "notices": read.notices, **scores}
