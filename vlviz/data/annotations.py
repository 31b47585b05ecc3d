"""Object annotations of the user's own images, the ground truth of the grounding score on them.

Two formats, each read with the images it annotates:

- COCO instances JSON (`read_coco_instances`): `images` (id, file_name, width, height), `categories`
  (id, name) and `annotations` (id, image_id, category_id, segmentation), the segmentation polygons
  ([[x1, y1, x2, y2, ...], ...] in pixels) or RLE ({"size": [height, width], "counts": [...] or "..."},
  uncompressed or compressed). Crowd annotations (iscrowd) count like the others: they mark where the
  category is.
- A folder of masks (`read_mask_folder`): one image per object (a pixel that is not black is in the
  object), at its image's size, and a labels table: CSV with a header naming a `mask` and a `category`
  column and optionally an `image` column, or JSON, {"dog_0.png": "dog", ...} or
  [{"mask": ..., "category": ..., "image": ...}, ...]. Mask paths are relative to the folder; without
  an image, a mask `<image stem>_<k>.png` belongs to the image whose name is `<image stem>` plus an
  image extension.

The word of an object is its category's name. All the objects of one category in an image are one
target: a word may point at any of them. Every file is untrusted: its size, the counts of images and
annotations, polygon vertices and lengths, RLE runs and image pixels are bounded before anything is
parsed, rasterised or decoded, and every problem raises an `InputError` naming the file, image or
annotation. The reading checks everything but the pixels; `load_annotated_image` then decodes one image
and its masks at a time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
from PIL import ExifTags, Image, UnidentifiedImageError

from vlviz.data.inputs import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    MAX_TABLE_BYTES,
    MAX_ZIP_BYTES,
    InputError,
    load_image,
    zip_members,
)

MAX_ANNOTATION_BYTES = 256 * 2**20
"""Largest COCO JSON read (instances_val2017.json is 25 MB); Python holds a parsed JSON in about ten times its size."""
MAX_LISTED_IMAGES = 200_000
"""Most images a COCO file may list (train2017 lists 118,287)."""
MAX_ANNOTATIONS = 1_000_000
"""Most annotations (COCO) or masks (a labels table) one file may hold."""
MAX_POLYGON_VERTICES = 10_000
"""Most polygon vertices one annotation may have (COCO's largest have a few hundred)."""
MAX_PERIMETER_SIDES = 100
"""Longest polygon outline of one annotation, in multiples of its image's width + height: pycocotools
rasterises an outline at five steps a pixel, so its length bounds the memory it takes."""
MAX_RLE_RUNS = 1_000_000
"""Most runs one RLE may hold (a COCO crowd region has a few thousand)."""
MAX_CATEGORY_CHARS = 100
"""Longest category name: a name is a word or a few."""
Files = str | os.PathLike[str] | Sequence[str] | Mapping[str, str]
"""Where files are: a folder, files matched by base name, or {name as annotations give it: local path}."""
_ORIENTATION = ExifTags.Base.Orientation
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height: `load_image` shows the photo turned


@dataclass(frozen=True)
class ObjectAnnotation:
    """One annotated object, checked: its category and its mask as a compressed RLE (pycocotools')."""

    label: str  # how messages name it: "annotation 42", "mask dog_0.png"
    category: str
    rle: dict  # {"size": [height, width], "counts": bytes}, the annotated image's size


@dataclass(frozen=True)
class AnnotatedImage:
    """An image with at least one annotated object; its pixels and masks are decoded only when scored."""

    label: str  # how messages name it: "image 397133 (000000397133.jpg)"
    name: str  # its file name, the key of a caption table
    path: str
    size: tuple[int, int]  # (width, height) the annotations are drawn at: the image as a viewer shows it
    objects: tuple[ObjectAnnotation, ...]


@dataclass(frozen=True)
class Annotations:
    """The annotated images of a file, in the file's order, and every category name they use."""

    images: list[AnnotatedImage]
    categories: list[str]  # in the file's order
    source: str  # "coco" or "masks"
    notices: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ helpers


def _read_bounded(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """A file's bytes, refused unread when it is larger than `limit`."""
    name = os.path.basename(os.fspath(path))
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise InputError(f"{name} is {size:,} bytes, more than the {limit:,} bytes {what} may take.")
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise InputError(f"{name} does not exist ({os.fspath(path)}).") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{os.fspath(path)} is a folder, not {what}.") from exc
    except OSError as exc:
        raise InputError(f"{name} could not be read ({exc.strerror or exc}).") from exc


def _relative_path(root: str, name: str, what: str) -> str:
    """`name` joined to `root`, refused when it would leave `root` (an absolute path, `..`)."""
    parts = Path(name.replace("\\", "/")).parts
    if not parts or Path(name).is_absolute() or ".." in parts or name.startswith(("/", "\\")):
        raise InputError(f"{what} names the file {name!r}, which is not a path inside {root}.")
    return os.path.join(root, *parts)


class _ImageFinder:
    """Where an annotated image's file is: in a folder, by its relative path, or among given files, by base name
    (a mapping gives each file's name apart from its path: `unpack_uploads`)."""

    def __init__(self, images: Files, where: str = "the images given") -> None:
        self.folder: str | None = None
        self.files: dict[str, list[str]] = {}
        if isinstance(images, (str, os.PathLike)):
            self.folder = self.where = os.fspath(images)
            if not os.path.isdir(self.folder):
                raise InputError(f"The images folder {self.folder} does not exist.")
        else:
            self.where = where
            named = images.items() if isinstance(images, Mapping) else ((path, path) for path in images)
            for name, path in named:
                self.files.setdefault(os.path.basename(name.replace("\\", "/")), []).append(path)
        self._stems: dict[str, list[str]] | None = None

    def path(self, name: str, what: str) -> str:
        """The file of the image called `name`; `what` names whose image it is in messages."""
        if self.folder is not None:
            path = _relative_path(self.folder, name, what)
            if not os.path.isfile(path):
                raise InputError(f"{what}: {name} is not in {self.where}.")
            return path
        found = self.files.get(os.path.basename(name.replace("\\", "/")), [])
        if len(found) != 1:
            raise InputError(
                f"{what}: {name} is {'not among' if not found else f'{len(found)} files of'} {self.where}."
            )
        return found[0]

    def by_stem(self, stem: str, what: str) -> str:
        """The one image whose name is `stem` plus an image extension."""
        if self._stems is None:
            names = os.listdir(self.folder) if self.folder is not None else list(self.files)
            self._stems = {}
            for name in sorted(names):  # indexed once, not once a mask
                base, extension = os.path.splitext(name)
                if extension.lower() in IMAGE_EXTENSIONS:
                    self._stems.setdefault(base, []).append(name)
        found = self._stems.get(stem, [])
        if len(found) != 1:
            raise InputError(
                f"{what} belongs to the image {stem}.*, but {self.where} holds "
                f"{'no image' if not found else f'{len(found)} images'} of that name; give the labels an image column."
            )
        return self.path(found[0], what)


def _oriented_size(path: str, label: str) -> tuple[int, int]:
    """(width, height) of an image as `load_image` shows it (EXIF-turned), from its header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            turned = im.getexif().get(_ORIENTATION) in _TRANSPOSED
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{label} is not a readable image ({type(exc).__name__}).") from exc
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{label} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels allowed."
        )
    return (height, width) if turned else (width, height)


def _category_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} has no name: the name is the word that is grounded.")
    name = value.strip()
    if len(name) > MAX_CATEGORY_CHARS:
        raise InputError(f"{what} has a name of {len(name)} characters; at most {MAX_CATEGORY_CHARS}.")
    return name


# ------------------------------------------------------------------------------------------- masks


def _compressed_counts(text: str, what: str) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string, decoded as pycocotools' `rleFrString` does.

    pycocotools decodes a string without checking that its runs fit the mask, and writes past the mask
    when they do not; decoding it here first lets `_rle` check them.
    """
    if len(text) > 8 * MAX_RLE_RUNS:
        raise InputError(f"{what} has an RLE string of {len(text):,} characters, more than {8 * MAX_RLE_RUNS:,}.")
    codes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) - 48
    if not codes.size or codes.min() < 0 or codes.max() > 63 or codes[-1] & 0x20:
        raise InputError(f"{what} has an RLE string that is not COCO's compressed format.")
    last = (codes & 0x20) == 0  # each run's value ends at a character without the continuation bit
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    shift = 5 * (np.arange(codes.size) - np.repeat(starts, np.diff(np.append(starts, codes.size))))
    if shift.max() > 30:
        raise InputError(f"{what} has an RLE run too long for any image.")
    values = np.add.reduceat((codes & 0x1F) << shift, starts)
    ends = np.flatnonzero(last)
    values -= ((codes[ends] & 0x10) != 0) << (shift[ends] + 5)  # a set sign bit in the last character
    counts = values.copy()  # runs from the fourth on are stored as differences with the run two before
    counts[1::2] = np.cumsum(values[1::2])
    counts[2::2] = np.cumsum(values[2::2])
    return counts


def _rle(segmentation: object, width: int, height: int, what: str) -> dict:
    """A COCO segmentation (polygons, RLE with a counts list or string) as a checked compressed RLE."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width]:
            raise InputError(f"{what} has an RLE of size {size}, not its image's [height, width] [{height}, {width}].")
        if isinstance(counts, str):
            runs = _compressed_counts(counts, what)
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
        elif isinstance(counts, list):
            if len(counts) > MAX_RLE_RUNS:
                raise InputError(f"{what} has an RLE of {len(counts):,} runs, more than {MAX_RLE_RUNS:,}.")
            runs = np.asarray(counts)
            if runs.ndim != 1 or (runs.size and runs.dtype.kind not in "iu"):
                raise InputError(f"{what} has RLE counts that are not a list of whole numbers.")
            rle = None  # compressed once the runs are checked
        else:
            raise InputError(f"{what} has an RLE without counts (a list of run lengths or COCO's string).")
        if runs.size and runs.min() < 0:
            raise InputError(f"{what} has an RLE with a negative run.")
        if int(runs.sum()) != width * height:
            raise InputError(
                f"{what} has RLE runs that cover {int(runs.sum()):,} pixels, not its image's {width * height:,}."
            )
        return rle or coco_mask.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)
    if not isinstance(segmentation, list) or not segmentation:
        raise InputError(f"{what} has no segmentation (polygons or an RLE).")
    if len(segmentation) > MAX_POLYGON_VERTICES // 3:
        raise InputError(f"{what} has {len(segmentation):,} polygons, more than {MAX_POLYGON_VERTICES // 3:,}.")
    polygons, vertices, outline = [], 0, 0.0
    for polygon in segmentation:  # a few polygons, each checked as one array
        try:
            points = np.asarray(polygon, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what} has a polygon that is not a list of numbers.") from exc
        if points.ndim != 1 or points.size % 2 or points.size < 6:
            raise InputError(f"{what} has a polygon that is not a list x1, y1, x2, y2, ... of at least 3 points.")
        vertices += points.size // 2
        if vertices > MAX_POLYGON_VERTICES:
            raise InputError(f"{what} has polygons of more than {MAX_POLYGON_VERTICES:,} vertices.")
        xy = points.reshape(-1, 2)
        if not np.isfinite(xy).all() or (xy < -1).any() or (xy > np.array([width, height]) + 1).any():
            raise InputError(f"{what} has a polygon point outside its {width}x{height} image.")
        outline += float(np.abs(xy - np.roll(xy, 1, axis=0)).max(axis=1).sum())
        polygons.append(points.tolist())
    if outline > MAX_PERIMETER_SIDES * (width + height):
        raise InputError(
            f"{what} has a polygon outline {outline:,.0f} pixels long, more than {MAX_PERIMETER_SIDES} times its "
            "image's width + height."
        )
    return coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))


def _checked(label: str, category: str, rle: dict) -> ObjectAnnotation:
    if not int(coco_mask.area(rle)):
        raise InputError(f"{label} has an empty mask: no pixel is in the object.")
    return ObjectAnnotation(label, category, rle)


# -------------------------------------------------------------------------------------------- COCO


def _whole(entry: dict, key: str, what: str, positive: bool = False) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or (positive and value < 1):
        raise InputError(f"{what} has no {'positive ' if positive else ''}whole-number {key!r}.")
    return value


def _entries(data: dict, key: str, limit: int, name: str) -> list[dict]:
    entries = data.get(key)
    if not isinstance(entries, list):
        hint = " (a captions file? give an instances file)" if key != "images" and "images" in data else ""
        raise InputError(f"{name} has no {key!r} list: it is not a COCO instances file{hint}.")
    if len(entries) > limit:
        raise InputError(f"{name} lists {len(entries):,} {key}, more than {limit:,}.")
    bad = next((i for i, entry in enumerate(entries) if not isinstance(entry, dict)), None)
    if bad is not None:
        raise InputError(f"{name}: {key} entry {bad + 1} is not an object.")
    return entries


def read_coco_instances(path: str | os.PathLike[str], images: Files, max_images: int | None = None) -> Annotations:
    """The annotated images of a COCO instances file, found in `images` (a folder, or files matched by base name).

    Images without annotations name nothing and are left out (a notice says how many); `max_images`
    keeps the first that many annotated images, in the file's order. Raises InputError for a file
    that is too large or not COCO instances, duplicate or unknown ids, a missing or unreadable image,
    an image or RLE of another size, an empty mask, too many or too long polygons.
    """
    name = os.path.basename(os.fspath(path))
    raw = _read_bounded(path, MAX_ANNOTATION_BYTES, "a COCO instances file")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{name} is not a JSON file ({type(exc).__name__}): give a COCO instances .json.") from exc
    if not isinstance(data, dict):
        raise InputError(f"{name} holds a JSON {type(data).__name__}, not a COCO instances object.")
    listed = _entries(data, "images", MAX_LISTED_IMAGES, name)
    found = _entries(data, "annotations", MAX_ANNOTATIONS, name)
    kinds = _entries(data, "categories", MAX_ANNOTATIONS, name)
    categories: dict[int, str] = {}
    for entry in kinds:
        key = _whole(entry, "id", f"{name}: a category")
        if key in categories:
            raise InputError(f"{name}: category id {key} appears twice.")
        categories[key] = _category_name(entry.get("name"), f"{name}: category {key}")
    named = list(categories.values())
    if len(set(named)) != len(named):
        raise InputError(f"{name}: two categories share a name, so their word could not tell them apart.")
    by_id: dict[int, dict] = {}
    for entry in listed:
        key = _whole(entry, "id", f"{name}: an image")
        if key in by_id:
            raise InputError(f"{name}: image id {key} appears twice.")
        by_id[key] = entry
    objects: dict[int, list[tuple[str, int, object]]] = {}
    for number, entry in enumerate(found, start=1):
        label = f"{name}: annotation {entry.get('id', f'number {number}')}"
        image_id, category_id = _whole(entry, "image_id", label), _whole(entry, "category_id", label)
        if image_id not in by_id:
            raise InputError(f"{label} is of image {image_id}, which the file does not list.")
        if category_id not in categories:
            raise InputError(f"{label} has category {category_id}, which the file does not list.")
        objects.setdefault(image_id, []).append((label, category_id, entry.get("segmentation")))
    order = [key for key in by_id if key in objects]  # the file's order of images
    notices = []
    if len(order) < len(by_id):
        notices.append(f"{len(by_id) - len(order):,} of the {len(by_id):,} images have no annotations: not scored")
    if max_images is not None and len(order) > max_images:
        notices.append(f"scored the first {max_images:,} of {len(order):,} annotated images")
        order = order[:max_images]
    finder = _ImageFinder(images)
    read = []
    for key in order:  # one image at a time, its annotations checked against its size
        entry = by_id[key]
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise InputError(f"{name}: image {key} has no file_name.")
        label = f"{name}: image {key} ({file_name})"
        width, height = _whole(entry, "width", label, True), _whole(entry, "height", label, True)
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(f"{label} is {width}x{height}, more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels.")
        image_path = finder.path(file_name, label)
        seen = _oriented_size(image_path, label)
        if seen != (width, height):
            raise InputError(f"{label} is {seen[0]}x{seen[1]} as shown, but the annotations say {width}x{height}.")
        checked = tuple(
            _checked(what, categories[category], _rle(segmentation, width, height, what))
            for what, category, segmentation in objects[key]
        )
        read.append(AnnotatedImage(label, file_name, image_path, (width, height), checked))
    used = {obj.category for image in read for obj in image.objects}
    return Annotations(read, [n for n in categories.values() if n in used], "coco", notices)


# ------------------------------------------------------------------------------------- mask folder

_LABEL_HELP = (
    'a CSV with a header row naming a mask and a category column (and optionally an image column), or JSON: {"dog_0.png": '
    '"dog", ...} or [{"mask": "dog_0.png", "category": "dog", "image": "dog.jpg"}, ...]'
)


def _cell(row: list[str], column: int | None) -> str | None:
    """A CSV row's cell, stripped; None past a short row's end or without the column."""
    return None if column is None or column >= len(row) else row[column].strip()


def _label_rows(path: str | os.PathLike[str]) -> list[tuple[str, object, str | None]]:
    """(mask, category, image or None) of each row of a labels table."""
    name = os.path.basename(os.fspath(path))
    try:
        text = _read_bounded(path, MAX_TABLE_BYTES, "a labels table").decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text: give {_LABEL_HELP}.") from exc
    if os.path.splitext(name)[1].lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"{name} is not valid JSON ({exc}): give {_LABEL_HELP}.") from exc
        if isinstance(data, dict):
            data = [{"mask": mask, "category": category} for mask, category in data.items()]
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise InputError(f"{name} is not a labels table: give {_LABEL_HELP}.")
        rows = [(item.get("mask"), item.get("category"), item.get("image")) for item in data]
    else:
        try:
            table = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
        except csv.Error as exc:
            raise InputError(f"{name} is not a valid CSV file ({exc}): give {_LABEL_HELP}.") from exc
        header = [cell.strip().lower() for cell in table[0]] if table else []
        if "mask" not in header or "category" not in header:
            raise InputError(f"{name} has no header row naming a mask and a category column: give {_LABEL_HELP}.")
        mask, category = header.index("mask"), header.index("category")
        image = header.index("image") if "image" in header else None
        rows = [(_cell(row, mask), _cell(row, category), _cell(row, image)) for row in table[1:]]
    if len(rows) > MAX_ANNOTATIONS:
        raise InputError(f"{name} lists {len(rows):,} masks, more than {MAX_ANNOTATIONS:,}.")
    for number, (mask, _, image) in enumerate(rows, start=1):
        if not isinstance(mask, str) or not mask or not (image is None or isinstance(image, str)):
            raise InputError(f"{name}: row {number} has no mask file name: give {_LABEL_HELP}.")
    return rows


def _mask_rle(path: str, label: str) -> dict:
    """A mask image (a pixel that is not black is in the object) as a compressed RLE, its size checked first."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            inside = np.asarray(im.convert("L")) > 0 if width * height <= MAX_IMAGE_PIXELS else None
    except FileNotFoundError as exc:
        raise InputError(f"{label} does not exist.") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{label} is not a readable image ({type(exc).__name__}): masks are PNG images.") from exc
    if inside is None:
        raise InputError(f"{label} is {width}x{height} pixels, more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels.")
    return coco_mask.encode(np.asfortranarray(inside.astype(np.uint8)))


def read_mask_folder(
    masks: str | os.PathLike[str] | Mapping[str, str],
    labels: str | os.PathLike[str],
    images: Files,
    max_images: int | None = None,
) -> Annotations:
    """The annotated images of a folder of masks and its labels table (see the module's doc), images found in
    `images` (a folder, or files matched by base name), in the order their first mask is listed. `masks` may
    be {mask name: local path} instead of a folder (uploads): a labels row's mask is then matched by base name.

    Raises InputError for a labels table that is not one, a mask or image that is missing, unreadable,
    too large, empty or of another size than its image.
    """
    name = os.path.basename(os.fspath(labels))
    if isinstance(masks, Mapping):
        given, folder = _ImageFinder(masks, "the masks given"), ""
    else:
        given, folder = None, os.fspath(masks)
        if not os.path.isdir(folder):
            raise InputError(f"The masks folder {folder} does not exist.")
    finder = _ImageFinder(images)
    per_image: dict[str, list[tuple[str, str, str]]] = {}
    categories: dict[str, None] = {}
    for number, (mask, category, image) in enumerate(_label_rows(labels), start=1):
        label = f"{name}: mask {mask}"
        category = _category_name(category, f"{name}: row {number}")
        if image:
            image_path = finder.path(image, label)
        else:
            stem, _, k = os.path.splitext(os.path.basename(mask))[0].rpartition("_")
            if not stem or not k.isdigit():
                raise InputError(f"{label} is not named <image stem>_<k>.png: give the labels an image column.")
            image_path = finder.by_stem(stem, label)
        mask_path = given.path(mask, label) if given is not None else _relative_path(folder, mask, label)
        per_image.setdefault(image_path, []).append((label, category, mask_path))
        categories.setdefault(category)
    order = list(per_image)
    notices = []
    if max_images is not None and len(order) > max_images:
        notices.append(f"scored the first {max_images:,} of {len(order):,} annotated images")
        order = order[:max_images]
    read = []
    for image_path in order:  # one image at a time, each mask checked against it
        file_name = os.path.basename(image_path)
        label = f"the image {file_name}"
        size = _oriented_size(image_path, label)
        objects = []
        for what, category, mask_path in per_image[image_path]:
            rle = _mask_rle(mask_path, what)
            height, width = rle["size"]
            if (width, height) != size:
                raise InputError(f"{what} is {width}x{height}, but {label} is {size[0]}x{size[1]} as shown.")
            objects.append(_checked(what, category, rle))
        read.append(AnnotatedImage(label, file_name, image_path, size, tuple(objects)))
    used = {obj.category for image in read for obj in image.objects}
    return Annotations(read, [c for c in categories if c in used], "masks", notices)


# ---------------------------------------------------------------------------------------- decoding


def load_annotated_image(image: AnnotatedImage) -> tuple[Image.Image, list[str], np.ndarray]:
    """The image as `load_image` gives it, its categories (in first-annotated order) and each category's mask.

    Masks (K, height, width) uint8 are at the loaded image's size: 255 inside, 0 outside, and between
    them where `load_image` downscaled the image (each pixel's share in the object, box-filtered).
    """
    picture = load_image(image.path, image.label)
    by_category: dict[str, list[dict]] = {}
    for obj in image.objects:
        by_category.setdefault(obj.category, []).append(obj.rle)
    masks = []
    for rles in by_category.values():  # one category's full-size mask at a time
        mask = coco_mask.decode(coco_mask.merge(rles)) * np.uint8(255)
        if picture.size != image.size:
            mask = np.asarray(Image.fromarray(mask).resize(picture.size, Image.Resampling.BOX))
        masks.append(mask)
    return picture, list(by_category), np.stack(masks)


# ----------------------------------------------------------------------------------------- uploads


def unpack_uploads(paths: Sequence[str], folder: str | os.PathLike[str]) -> dict[str, str]:
    """Uploaded images (or masks), zips unpacked: {name, a zip member's path inside its zip: local file}.

    A server's readers need files (`read_coco_instances`, `read_mask_folder` take this mapping). A zip is
    checked as `vlviz.data.inputs` checks one (members, uncompressed bytes of all zips together, unsafe
    names) before anything is unpacked, and its image members are written into `folder` under names made
    here, never the zip's: no path is built from what a client sent. Folders, dotfiles and members that are
    not images are left out. Raises InputError for a zip that is not one or breaks a bound.
    """
    found: dict[str, str] = {}
    unpacked = written = 0
    os.makedirs(folder, exist_ok=True)
    for path in paths:
        base = os.path.basename(path)
        if os.path.splitext(base)[1].lower() != ".zip":
            found[base] = path
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                images = [
                    m for m in zip_members(archive) if os.path.splitext(m.filename)[1].lower() in IMAGE_EXTENSIONS
                ]
                unpacked += sum(m.file_size for m in images)
                if unpacked > MAX_ZIP_BYTES:
                    raise InputError(
                        f"{base} unpacks to more than {MAX_ZIP_BYTES // 2**20} MB with the zips before it."
                    )
                for member in images:  # at most MAX_ZIP_MEMBERS, of at most MAX_ZIP_BYTES together
                    target, written = os.path.join(folder, f"{written:06d}"), written + 1
                    with archive.open(member) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)  # zipfile yields no more than the size the zip declares
                    found[member.filename] = target
        except InputError:
            raise
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, ValueError, OSError) as exc:
            # the class only: an OSError's text would name this server's folders
            raise InputError(f"{base} could not be unpacked ({type(exc).__name__}); create the zip again.") from exc
    return found
