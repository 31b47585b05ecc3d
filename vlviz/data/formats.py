"""Image-caption pairs from a data source on disk, whatever its format: the one entry point is `read_pairs`.

Users keep their pairs in the formats their tools write: webdataset tar shards, parquet (as Hugging
Face datasets write), COCO captions JSON, Hugging Face imagefolder folders, or the folders, zips and
caption tables the app's uploads accept (`vlviz.data.inputs`, reused here, not duplicated). Each
format has one reader; all of them feed one collector that applies the bounds of an upload (MAX_PAIRS
pairs, MAX_IMAGE_PIXELS per image, a pixel budget per call) and decodes every image with
`load_image`, so the pixels and the messages are the same whichever way pairs arrive. Tar shards and
parquet files are streamed (members and row batches one at a time, never unpacked to disk), and every
problem is an `InputError` naming the file, sample, row or columns involved.

`stream_pairs` hands the same sources over one pair at a time with the images still encoded, for
sets too large to hold (`vlviz.embedding.store` embeds a million pairs from it in bounded memory).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlviz.data import inputs
from vlviz.data.inputs import (
    CAPTION_COLUMNS,
    IMAGE_EXTENSIONS,
    ByteBudget,
    InputError,
    PairSet,
    _check_caption,
    _clip,
    _find_column,
    _list_names,
    _match_table,
    _natural_key,
    _plural,
    _read_text,
    header_size,
    load_caption_table,
    load_image,
    load_pairs_folder,
    pairs_from_uploads,
)

MAX_SHARDS = 1000
"""Most files one brace pattern may expand to: a typo like {0..99999} must not open a hundred thousand files."""
MAX_IMAGE_BYTES = 64 * 2**20
"""Largest encoded image read into memory from a tar shard or a parquet cell."""
MAX_CAPTION_BYTES = 2**20
"""Largest .txt or .json member of a tar shard read for a caption."""
MAX_ANNOTATION_BYTES = 256 * 2**20
"""Largest COCO captions JSON we parse (COCO 2017 train captions is about 90 MB)."""
MAX_TAR_MEMBER_BYTES = MAX_IMAGE_BYTES
"""Largest tar member of any kind: a member vlviz skips must still be decompressed to reach the next one."""
MAX_TAR_BYTES = 2 * 2**30
"""Most member bytes, read or skipped, that one `read_pairs` call decompresses from its tar shards (CPU time)."""
MAX_TAR_MEMBERS = 100_000
"""Most tar members one `read_pairs` call walks (headers of empty members compress to almost nothing)."""
PARQUET_BATCH_ROWS = 64
"""Most rows read from a parquet file at a time: a batch of encoded images stays a few MB."""
PARQUET_BATCH_BYTES = 256 * 2**20
"""Most uncompressed bytes a parquet batch may hold, from the row group's sizes: fewer rows a batch when cells are big."""
MAX_PARQUET_CHUNK_BYTES = 2**30
"""Largest uncompressed column chunk (one column of one row group) read: one cell can be as large as its chunk."""

TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIX = ".parquet"
IMAGEFOLDER_METADATA: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")
IMAGE_COLUMNS: tuple[str, ...] = (
    "image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "image_path", "path", "file", "file_name", "filename",
)  # fmt: skip
"""Accepted names of a parquet file's image column, earlier ones first (matched like inputs.FILE_COLUMNS)."""
FILE_NAME_COLUMNS: tuple[str, ...] = ("file_name",)
"""The column of an imagefolder's metadata that names each image, as Hugging Face datasets require."""
MAX_SOURCE_FIELDS = 16
"""Most numeric fields of a source row kept with each pair (`RawPair.fields`): colour columns of the Dataset tab."""
NUMBER_CELL_BYTES = 1024
"""Most bytes a parquet number cell may take uncompressed: its 8 bytes and its share of a small chunk's page headers."""
_FIELD_NAME = re.compile(r"^[\w .:()-]{1,64}$")
"""A field name kept: a short label (no markup, no path); other names are left out."""
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")

SOURCES_HELP = (
    "a folder of images with captions.csv/json or with metadata.jsonl/csv, a .zip, a caption table (.csv/.json), "
    "a COCO captions .json, a .parquet file, or webdataset .tar shards (a pattern such as shards/{000..009}.tar)"
)
_OPTIONS: dict[str, frozenset[str]] = {
    "webdataset": frozenset({"caption_column"}),
    "parquet": frozenset({"image_column", "caption_column", "images_dir"}),
    "coco": frozenset({"images_dir", "all_captions"}),
    "imagefolder": frozenset({"caption_column"}),
    "folder": frozenset(),
    "zip": frozenset(),
    "table": frozenset(),
}
"""The options of `read_pairs` each format uses; any other option given is refused rather than silently ignored."""
STREAMED_FORMATS = ("webdataset", "parquet", "coco", "imagefolder")
"""Formats whose readers yield pairs one at a time (`_format_pairs`); the others are read by `vlviz.data.inputs`."""
_DESCRIPTIONS = {
    "webdataset": "webdataset tar shards",
    "parquet": "a parquet source",
    "coco": "a COCO captions file",
    "imagefolder": "an imagefolder (metadata.jsonl/csv)",
    "folder": "a folder of images with a caption table",
    "zip": "a zip of images",
    "table": "a caption table",
}
_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


# ------------------------------------------------------------------------------------ the collector


@dataclass
class _Pairs:
    """Pairs gathered one at a time under the bounds of an upload, so a stream is refused as soon as it oversteps.

    The pair count is checked before each image is decoded, and the pixel and byte budgets from each
    image's header, so nothing past a bound is ever decoded.
    """

    source: str
    limit: int
    budget: int
    memory: ByteBudget | None = None  # the bytes the decoded images may take (`inputs.decoded_bytes`); None: no bound
    pixels: int = 0
    images: list[Image.Image] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def expect(self, count: int) -> None:
        """Refuse up front when a source says how many pairs it holds and that is too many."""
        if len(self.captions) + count > self.limit:
            raise InputError(
                f"{self.source} holds {len(self.captions) + count} pairs, but at most {self.limit} can be compared "
                "at once; use a smaller part of it."
            )

    def decode(self, image: bytes | str | os.PathLike[str], label: str) -> Image.Image:
        """Decode one image (a file path or its bytes) after checking the pair count and the pixel budget."""
        if len(self.captions) >= self.limit:
            raise InputError(
                f"{self.source} holds more than {self.limit} pairs, but at most {self.limit} can be compared at "
                "once; use a smaller part of it."
            )
        width, height = header_size(io.BytesIO(image) if isinstance(image, bytes) else os.fspath(image))
        self.pixels += width * height
        if self.memory is not None:
            self.memory.take(inputs.decoded_bytes(width, height), f"The images of {self.source} up to {label}")
        if self.pixels > self.budget:
            raise InputError(
                f"The images of {self.source} up to {label} hold {self.pixels / 1e6:,.0f} megapixels together, more "
                f"than the {self.budget / 1e6:,.0f} megapixels one request may decode. Use fewer images, or resize "
                f"large photos first (to {inputs.MAX_SIDE} pixels on the longer side: they are downscaled to that anyway)."
            )
        return load_image(image, label, notices=self.notices)

    def collect(self, pairs: Iterator[RawPair], what: str) -> PairSet:
        """Decode and keep every pair of a stream; `what` says what an empty source lacks.

        An image that follows itself (a COCO image with several captions) is decoded once.
        """
        held: tuple[bytes | Path, Image.Image] | None = None
        for pair in pairs:
            if held is None or held[0] is not pair.image:
                held = (pair.image, self.decode(pair.image, pair.label))
            self.images.append(held[1])
            self.captions.append(pair.caption)
            self.names.append(pair.name)
        if not self.images:
            raise InputError(f"{self.source} holds no image-caption pairs; {what}.")
        return PairSet(self.images, self.captions, self.names, self.notices)


@dataclass(frozen=True)
class RawPair:
    """One pair as its source holds it, the image still encoded: what the readers yield, one at a time."""

    image: bytes | Path  # the encoded image, or the file holding it
    caption: str  # stripped, non-empty and within MAX_CAPTION_CHARS
    name: str  # the image's name as views show it (a file name, never a server path)
    label: str  # where the pair comes from, for messages
    location: tuple[int, int, int, int] | None = None
    """(file number in the source, byte offset, size, CRC-32) of the image in an uncompressed tar shard: where
    `read_located_images` reads it again without streaming the shards before it; None elsewhere."""
    fields: tuple[tuple[str, float], ...] = ()
    """The source row's numeric fields (`numeric_fields`): a sample's .json, a parquet or metadata row, a COCO image."""


def numeric_fields(record: Mapping[Any, Any], numbers_in_text: bool = False) -> tuple[tuple[str, float], ...]:
    """The numeric (and boolean, as 0 or 1) fields of a source row, as (name, value), at most MAX_SOURCE_FIELDS.

    What a dataset says of each pair besides its image and caption (LAION's `similarity` or `aesthetic`, a
    width, a label id) is what people colour a map of it by. Text, lists and nulls are left out, as are names
    that are not short labels; a value that is not finite is NaN. `numbers_in_text`: a CSV's cells are text, so a
    cell that reads as a number counts as one.
    """
    found: list[tuple[str, float]] = []
    for name, value in record.items():
        if len(found) == MAX_SOURCE_FIELDS:
            break
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            continue
        if numbers_in_text and isinstance(value, str) and _NUMBER.match(value):
            value = float(value)
        if isinstance(value, bool | int | float):
            number = float(value)
            found.append((name, number if math.isfinite(number) else math.nan))
    return tuple(found)


def _pair(
    image: bytes | Path,
    caption: str,
    name: str,
    label: str,
    caption_label: str | None = None,
    location: tuple[int, int, int, int] | None = None,
    fields: tuple[tuple[str, float], ...] = (),
) -> RawPair:
    """A RawPair whose caption is checked (non-empty, not too long); `caption_label` names it (default: `label`)."""
    caption, where = caption.strip(), caption_label or label
    if not caption:
        raise InputError(f"The caption of {where} is empty; write one.")
    _check_caption(caption, f"The caption of {where}")
    return RawPair(image, caption, name, label, location, fields)


@dataclass
class PairStream:
    """A source's pairs one at a time, never all held: `pairs` is read once; `notices` fill in as it is read."""

    source: str  # the path or pattern as given
    pairs: Iterator[RawPair]
    notices: list[str]


def _first_caption(value: Any) -> str | None:
    """A caption cell as a string: a list of captions (as many datasets store them) gives its first one."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _pick_column(
    columns: list[str], chosen: str | None, accepted: tuple[str, ...], what: str, where: str, option: bool = True
) -> str:
    """The column to read: the one the user chose, else the first accepted name; the message names those found."""
    index = _find_column(columns, (chosen,) if chosen else accepted)
    if index is None:
        wanted = f'no column "{chosen}"' if chosen else f"no {what} column ({'/'.join(accepted)})"
        hint = f" Name the {what} column with the {what} column option (--{what}-column on the command line)."
        raise InputError(
            f"{where} has {wanted}; its columns are {_list_names(columns, limit=12) or 'none'}.{hint if option else ''}"
        )
    return columns[index]


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{path.name} could not be read ({exc.strerror or exc}).") from exc
    if len(data) > limit:
        raise InputError(f"{path.name} is larger than {limit // 2**20} MB, more than a {what} may be.")
    return data


# ------------------------------------------------------------------------------------------ shards


def expand_braces(pattern: str, limit: int = MAX_SHARDS) -> list[str]:
    """Expand webdataset-style brace patterns: `shards/{000..009}.tar` gives ten names, `{a,b}.tar` two.

    Ranges keep the zero padding of their bounds and may count down; several groups expand to every
    combination, left to right. A group that is neither a range nor a list stays as written.

    Raises:
        InputError: The pattern expands to more than `limit` names.
    """
    parts = _BRACES.split(pattern)  # text, group, text, group, ..., text
    choices: list[list[str]] = [[parts[0]]]
    total = 1
    for group, text in zip(parts[1::2], parts[2::2]):
        found = _RANGE.match(group)
        count = abs(int(found[2]) - int(found[1])) + 1 if found else len(group.split(",")) if "," in group else 1
        total *= count
        if total > limit:
            raise InputError(f"{pattern} expands to more than {limit} files; read fewer shards at once.")
        if found:
            first, last = int(found[1]), int(found[2])
            padded = any(len(bound.lstrip("-")) > 1 and bound.lstrip("-")[0] == "0" for bound in found.groups())
            width = max(len(found[1]), len(found[2])) if padded else 0
            step = 1 if last >= first else -1
            choices.append([str(i).zfill(width) for i in range(first, last + step, step)])
        else:
            choices.append(group.split(",") if "," in group else ["{" + group + "}"])
        choices.append([text])
    return ["".join(combination) for combination in itertools.product(*choices)]


def _split_key(name: str) -> tuple[str, str] | None:
    """webdataset's rule: a member's key is its path up to the first dot of its base name, the rest its extension.

    Names whose base name starts with a dot or has none (folders, ._ files of macOS) belong to no sample.
    """
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not stem or not dot:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


@dataclass
class _TarBudget:
    """What the tar shards of one call may cost: members walked and bytes decompressed, read or skipped.

    Checked from each member's header before its data is touched, so a small .tar.gz holding a huge
    member (which must be decompressed even to be skipped) is refused before it costs any CPU.
    """

    max_bytes: int | None  # None: no total (streaming a dataset, `stream_pairs`)
    max_members: int | None
    bytes: int = 0
    members: int = 0

    def admit(self, member: tarfile.TarInfo, shard: str) -> None:
        if member.size > MAX_TAR_MEMBER_BYTES:
            raise InputError(
                f"{shard}: {member.name} is {member.size / 2**20:,.1f} MB, more than the "
                f"{MAX_TAR_MEMBER_BYTES // 2**20} MB a member of a shard may be (vlviz reads images, .txt and "
                ".json members); leave it out of the shard."
            )
        self.bytes, self.members = self.bytes + member.size, self.members + 1
        if self.max_bytes is not None and self.bytes > self.max_bytes:
            raise InputError(
                f"The shards up to {shard} hold more than {self.max_bytes // 2**20:,} MB of members; read fewer "
                "shards at once."
            )
        if self.max_members is not None and self.members > self.max_members:
            raise InputError(
                f"The shards up to {shard} hold more than {self.max_members:,} members; read fewer shards at once."
            )


def _samples(
    archive: tarfile.TarFile, shard: str, budget: _TarBudget
) -> Iterator[tuple[str, dict[str, tuple[str, bytes]], dict[str, int]]]:
    """(key, {extension: (member name, bytes)}, {extension: data offset}) for each run of members sharing a key,
    in the tar's order (the offsets count from the start of the uncompressed stream).

    Only image, .txt and .json members are read, one at a time, each under its size bound; every
    member, read or skipped, counts against `budget` first.
    """
    key: str | None = None
    files: dict[str, tuple[str, bytes]] = {}
    offsets: dict[str, int] = {}
    for member in archive:
        budget.admit(member, shard)
        split = _split_key(member.name) if member.isfile() else None
        if split is None:
            continue
        if split[0] != key:
            if key is not None:
                yield key, files, offsets
            key, files, offsets = split[0], {}, {}
        extension = split[1]
        is_image = "." + extension in IMAGE_EXTENSIONS
        if extension in files or not (is_image or extension in ("txt", "json")):
            continue
        limit = MAX_IMAGE_BYTES if is_image else MAX_CAPTION_BYTES
        if member.size > limit:
            raise InputError(
                f"{shard}: {member.name} is {member.size / 2**20:.1f} MB, more than the {limit // 2**20} MB allowed "
                f"for {'an image' if is_image else 'a caption file'}."
            )
        stream = archive.extractfile(member)
        files[extension] = (member.name, stream.read() if stream is not None else b"")
        offsets[extension] = member.offset_data
    if key is not None:
        yield key, files, offsets


def _sample_record(files: dict[str, tuple[str, bytes]], shard: str) -> dict[Any, Any] | str:
    """A sample's .json member as an object, or why it is not one."""
    name, data = files["json"]
    try:
        record = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return f"{shard}: {name} is not valid JSON ({exc})."
    if not isinstance(record, dict):
        return f"{shard}: {name} holds a JSON {type(record).__name__}, not an object with a caption field."
    return record


def _shard_caption(
    key: str, image_name: str, files: dict[str, tuple[str, bytes]], shard: str, caption_column: str | None
) -> tuple[str, tuple[tuple[str, float], ...]]:
    """The caption of one sample (its .txt member, else a field of its .json member) and the numeric fields of
    its .json (as LAION's shards keep their similarity and size there; none when the .json is unreadable and the
    caption comes from the .txt)."""
    record = _sample_record(files, shard) if "json" in files else None
    fields = numeric_fields(record) if isinstance(record, dict) else ()
    if "txt" in files:
        try:
            return files["txt"][1].decode("utf-8-sig"), fields
        except UnicodeDecodeError as exc:
            raise InputError(f"{shard}: {files['txt'][0]} is not UTF-8 text.") from exc
    if record is None:
        field_name = caption_column or "caption"
        raise InputError(
            f"{shard}: sample {key} has an image ({image_name}) but no caption: add {key}.txt, or {key}.json "
            f'with a "{field_name}" field. The files of one sample must follow each other in the tar.'
        )
    if isinstance(record, str):
        raise InputError(record)
    name = files["json"][0]
    column = _pick_column([str(k) for k in record], caption_column, CAPTION_COLUMNS, "caption", f"{shard}: {name}")
    caption = _first_caption(record[column])
    if caption is None:
        raise InputError(f'{shard}: the "{column}" field of {name} is not a string.')
    return caption, fields


def _webdataset_pairs(
    shards: list[Path], caption_column: str | None, notices: list[str], budget: _TarBudget
) -> Iterator[RawPair]:
    """Pairs from webdataset tar shards, streamed member by member: {key}.jpg/png/... with {key}.txt or {key}.json."""
    without_image: list[str] = []
    for number, shard in enumerate(shards):
        try:
            plain = is_plain_tar(shard)
            with tarfile.open(shard, mode="r|*") as archive:
                for key, files, offsets in _samples(archive, shard.name, budget):
                    found = next((e for e in files if "." + e in IMAGE_EXTENSIONS), None)
                    if found is None:
                        without_image.append(f"{shard.name}: {key}")
                        continue
                    (name, data), label = files[found], f"{shard.name}: {files[found][0]}"
                    caption, fields = _shard_caption(key, name, files, shard.name, caption_column)
                    location = (number, offsets[found], len(data), zlib.crc32(data)) if plain else None
                    yield _pair(data, caption, name, label, location=location, fields=fields)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise InputError(f"{shard.name} is not a readable tar archive ({reason}); write the shard again.") from exc
    if without_image:
        notices.append(
            f"Skipped {_plural(len(without_image), 'sample')} without an image: {_list_names(without_image)}"
        )


def is_plain_tar(path: Path) -> bool:
    """Whether a shard is an uncompressed tar (no gzip, bzip2, xz or zstd magic): its members can be read at their
    offsets. Unreadable files say False here; the streaming reader reports them."""
    try:
        with path.open("rb") as file:
            head = file.read(6)
    except OSError:
        return False
    return not head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd"))


def _tar_header_name(header: bytes) -> tuple[str, int]:
    """A ustar header's member name (with its prefix field) and size; ("", -1) when it is not one."""
    if len(header) < 512 or header[257:262] != b"ustar":
        return "", -1
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    try:
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return "", -1
    return (f"{prefix}/{name}" if prefix else name), size


def read_located_images(
    source: str, locations: Sequence[tuple[int, int, int, int]], names: Sequence[str]
) -> list[bytes]:
    """The encoded images at `locations` (`RawPair.location`) of a webdataset source, each read at its offset.

    Each member's own tar header, just before its data, must still name it (`names`, a long name by its first
    100 characters) with the same size, and the bytes must have the same CRC-32, so a shard rewritten since is
    noticed rather than misread.

    Raises:
        InputError: A location outside the source, or a shard that changed since the locations were taken.
    """
    shards = _expand(source, patterns=True)
    images: list[bytes] = []
    handles: dict[int, Any] = {}
    try:
        for (number, offset, size, crc), expected in zip(locations, names):
            if not 0 <= number < len(shards) or offset < 512 or not 0 <= size <= MAX_IMAGE_BYTES:
                raise InputError(f"{expected} is not where the embedding folder says it is in the source shards.")
            if number not in handles:
                handles[number] = shards[number].open("rb")
            file = handles[number]
            file.seek(offset - 512)
            header, data = file.read(512), file.read(size)
            name, stored = _tar_header_name(header)
            cut = len(name.encode()) >= 99 and expected.startswith(name.rstrip("\ufffd"))  # a long name, cut at 100
            if stored != size or len(data) != size or not (name == expected or cut) or zlib.crc32(data) != crc:
                raise InputError(
                    f"{shards[number].name} no longer holds {expected} where it did: the source changed since it was "
                    "embedded. Embed it again into a new folder."
                )
            images.append(data)
    except OSError as exc:
        raise InputError(f"The source shards could not be read ({exc.strerror or exc}).") from exc
    finally:
        for handle in handles.values():
            handle.close()
    return images


# ----------------------------------------------------------------------------------------- parquet


def _parquet_image_kind(column: str, kind: Any, where: str) -> str:
    """How a parquet column holds images: "bytes", "path", or "struct" ({bytes, path}, as Hugging Face writes)."""
    import pyarrow as pa

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return "bytes"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "path"
    if pa.types.is_struct(kind) and {"bytes", "path"} & {kind.field(i).name for i in range(kind.num_fields)}:
        return "struct"
    raise InputError(
        f'{where}: column "{column}" holds {kind}, not images: give a column of image bytes, of file paths, '
        "or of {bytes, path} structs (as Hugging Face datasets write)."
    )


def _parquet_image(
    value: Any, kind: str, base: Path, where: str, allow_paths: bool
) -> tuple[bytes | Path, str | None] | None:
    """The image of one cell, as bytes or a file path, with a file name for it when the cell has one."""
    data, path = (value.get("bytes"), value.get("path")) if kind == "struct" and value else (None, None)
    if kind == "bytes":
        data = value
    elif kind == "path":
        path = value
    if data:
        if len(data) > MAX_IMAGE_BYTES:
            raise InputError(
                f"{where}: the image is {len(data) / 2**20:.1f} MB, more than the {MAX_IMAGE_BYTES // 2**20} MB allowed."
            )
        return data, os.path.basename(path) if path else None
    if not path:
        return None
    if not allow_paths:
        raise InputError(
            f"{where} names an image file ({path}) instead of holding it; give a parquet file with the image bytes."
        )
    if re.match(r"^[a-z][a-z0-9+.-]*://", path, re.IGNORECASE):
        raise InputError(
            f"{where}: the image is a URL ({path}); vlviz reads local files only, so download the images first."
        )
    return base / path, os.path.basename(path)


def _parquet_batch_rows(parquet: Any, group: int, columns: dict[str, int], where: str) -> int:
    """Rows per batch for one row group, from the uncompressed sizes of its chunks, before any cell is read.

    `columns` maps each column read to the most bytes one of its cells may hold. A chunk larger than
    its rows' cells may be together is refused (a few KB of parquet can declare a 400 MB caption); a
    dictionary-encoded chunk can repeat one large value in every row, so rows a batch are as few as
    the largest chunk needs for a batch to stay within PARQUET_BATCH_BYTES, whatever its encoding.
    """
    row_group = parquet.metadata.row_group(group)
    sizes = dict.fromkeys(columns, 0)
    for index in range(row_group.num_columns):
        chunk = row_group.column(index)
        top = chunk.path_in_schema.split(".", 1)[0]
        if top in sizes:
            sizes[top] += chunk.total_uncompressed_size
    for column, size in sizes.items():
        if size > min(MAX_PARQUET_CHUNK_BYTES, max(row_group.num_rows, 1) * columns[column]):
            raise InputError(
                f'{where}: row group {group} of column "{column}" holds {size / 2**20:,.1f} MB uncompressed, more '
                f"than its {row_group.num_rows} rows may (at most {columns[column] // 2**20} MB a cell, "
                f"{MAX_PARQUET_CHUNK_BYTES // 2**20} MB a row group); write the file with smaller row groups."
            )
    return max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES // max(1, *sizes.values())))


def _parquet_cells(
    parquet: Any, columns: list[str], cell_bytes: dict[str, int], where: str
) -> Iterator[tuple[Any, ...]]:
    """The cells of `columns` (image, caption, then any numeric ones) of every row as Python values, one row at a
    time, each row group read in batches no larger than `_parquet_batch_rows` allows."""
    for group in range(parquet.metadata.num_row_groups):
        rows = _parquet_batch_rows(parquet, group, cell_bytes, where)
        for batch in parquet.iter_batches(batch_size=rows, row_groups=[group], columns=columns):
            for index in range(batch.num_rows):
                yield tuple(column[index].as_py() for column in batch.columns)


def _parquet_numeric_columns(schema: Any, taken: tuple[str, ...]) -> list[str]:
    """A parquet file's numeric and boolean columns besides `taken`, at most MAX_SOURCE_FIELDS (`numeric_fields`)."""
    import pyarrow as pa

    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    names = [field.name for field in schema if field.name not in taken and any(test(field.type) for test in numeric)]
    return [name for name in names if _FIELD_NAME.match(name)][:MAX_SOURCE_FIELDS]


def _parquet_pairs(
    files: list[Path],
    image_column: str | None,
    caption_column: str | None,
    images_dir: Path | None,
    allow_paths: bool,
    expect: Callable[[int], None],
) -> Iterator[RawPair]:
    """Pairs from parquet files, read in row batches: an image column (bytes, path or struct) and a caption column.

    Each row group's sizes are checked before it is read, and a batch is turned into Python values one row at
    a time, so memory stays within PARQUET_BATCH_BYTES whatever the file declares or compresses.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path.name} is not a readable parquet file ({exc}).") from exc
        schema = parquet.schema_arrow
        image_col = _pick_column(schema.names, image_column, IMAGE_COLUMNS, "image", path.name)
        caption_col = _pick_column(schema.names, caption_column, CAPTION_COLUMNS, "caption", path.name)
        kind = _parquet_image_kind(image_col, schema.field(image_col).type, path.name)
        numbers = _parquet_numeric_columns(schema, (image_col, caption_col))
        expect(parquet.metadata.num_rows)
        base = images_dir or path.parent
        cell_bytes = {image_col: MAX_IMAGE_BYTES, caption_col: MAX_CAPTION_BYTES}
        cell_bytes |= dict.fromkeys(numbers, NUMBER_CELL_BYTES)
        row = 0
        try:
            for value, caption_value, *number_values in _parquet_cells(
                parquet, [image_col, caption_col, *numbers], cell_bytes, path.name
            ):
                where = f"{path.name} row {row}"
                image = _parquet_image(value, kind, base, where, allow_paths)
                caption = _first_caption(caption_value)
                if image is None:
                    raise InputError(f'{where} has no image in its "{image_col}" column; fill it in or drop the row.')
                if caption is None:
                    raise InputError(
                        f'{where} has no caption: its "{caption_col}" is {_clip(repr(caption_value))}; '
                        "fill it in or drop the row."
                    )
                label = f"{where} ({image[1]})" if image[1] else where
                fields = numeric_fields(dict(zip(numbers, number_values)))
                yield _pair(image[0], caption, image[1] or where, label, fields=fields)
                row += 1
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path.name} could not be read past row {row} ({exc}); write the file again.") from exc


# -------------------------------------------------------------------------------------------- COCO


def _is_coco(data: Any) -> bool:
    return isinstance(data, dict) and "images" in data and "annotations" in data


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _coco_pairs(
    data: dict[str, Any], name: str, images_dir: Path, all_captions: bool, expect: Callable[[int], None]
) -> Iterator[RawPair]:
    """Pairs from COCO captions: `images` ({id, file_name}) and `annotations` ({image_id, caption}), in image order."""
    if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        raise InputError(f'{name}: "images" and "annotations" must both be lists, as in COCO captions files.')
    files: dict[Any, str] = {}
    fields: dict[Any, tuple[tuple[str, float], ...]] = {}
    for number, image in enumerate(data["images"], start=1):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or not _is_id(image.get("id")):
            raise InputError(f"{name}: image {number} is not an object with an id and a file_name.")
        if image["id"] in files:
            raise InputError(f"{name}: two images have the id {image['id']}; ids must be unique.")
        files[image["id"]] = image["file_name"]
        fields[image["id"]] = numeric_fields({k: v for k, v in image.items() if k != "id"})  # its size, licence
    captions: dict[Any, list[str]] = {}
    for number, annotation in enumerate(data["annotations"], start=1):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("caption"), str):
            raise InputError(f"{name}: annotation {number} is not an object with an image_id and a caption.")
        image_id = annotation.get("image_id")
        if not _is_id(image_id) or image_id not in files:
            raise InputError(f"{name}: annotation {number} is for image_id {image_id!r}, which no image has.")
        captions.setdefault(image_id, []).append(annotation["caption"])
    uncaptioned = [file for image_id, file in files.items() if image_id not in captions]
    if uncaptioned:
        raise InputError(
            f"{name}: {_plural(len(uncaptioned), 'image')} {'has' if len(uncaptioned) == 1 else 'have'} no caption: "
            f"{_list_names(uncaptioned)}. Add an annotation for each, or remove them from images."
        )
    expect(sum(len(c) if all_captions else 1 for c in captions.values()))
    for image_id, file in files.items():
        image = images_dir / file  # one object for all its captions: decoded once
        chosen = captions[image_id] if all_captions else captions[image_id][:1]
        label = f"{name}: {file}"
        for number, caption in enumerate(chosen, start=1):
            name = file if number == 1 else f"{file} ({number})"
            yield _pair(image, caption, name, label, f"{label} (caption {number})", fields=fields[image_id])


# ------------------------------------------------------------------------------------- imagefolder


def _metadata_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of an imagefolder's metadata.jsonl (one JSON object a line) or metadata.csv."""
    text = _read_text(str(path), path.name)
    if path.suffix == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text))
            rows: list[dict[str, Any]] = list(reader)
        except csv.Error as exc:
            raise InputError(f"{path.name} is not a valid CSV file ({exc}).") from exc
        return list(reader.fieldnames or []), rows
    rows, columns = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"{path.name}: line {number} is not valid JSON ({exc}).") from exc
        if not isinstance(row, dict):
            raise InputError(f"{path.name}: line {number} is not a JSON object.")
        rows.append(row)
        columns.update(dict.fromkeys(str(k) for k in row))
    return list(columns), rows


def _imagefolder_metadata(folder: Path) -> Path:
    """The metadata file of an imagefolder: metadata.jsonl or metadata.csv, not both."""
    found = [folder / name for name in IMAGEFOLDER_METADATA if (folder / name).is_file()]
    if len(found) > 1:
        raise InputError(f"{folder.name} holds both {' and '.join(m.name for m in found)}; keep one.")
    return found[0]


def _imagefolder_pairs(
    folder: Path, metadata: Path, caption_column: str | None, notices: list[str], expect: Callable[[int], None]
) -> Iterator[RawPair]:
    """Pairs from a Hugging Face imagefolder: images beside metadata.jsonl/csv naming each by file_name."""
    columns, rows = _metadata_rows(metadata)
    where = f"{folder.name}/{metadata.name}"
    file_col = _pick_column(columns, None, FILE_NAME_COLUMNS, "file name", where, option=False)
    caption_col = _pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", where)
    expect(len(rows))
    listed = set()
    for number, row in enumerate(rows, start=1):
        file, caption = row.get(file_col), _first_caption(row.get(caption_col))
        if not isinstance(file, str) or not file.strip():
            raise InputError(f"{where}: row {number} has no {file_col}; name its image.")
        if caption is None:
            raise InputError(f"{where}: row {number} ({file}) has no caption in its {caption_col} column.")
        listed.add(os.path.normpath(file))
        label = f"{folder.name}/{file}"
        fields = numeric_fields(row, numbers_in_text=metadata.suffix == ".csv")
        yield _pair(folder / file, caption, file, label, fields=fields)
    unlisted = sorted(
        (e.name for e in folder.iterdir() if e.suffix.lower() in IMAGE_EXTENSIONS and e.name not in listed),
        key=_natural_key,
    )
    if unlisted:
        notices.append(f"{where} does not list {_plural(len(unlisted), 'image')}, so skipped: {_list_names(unlisted)}")


# ------------------------------------------------------------------------------------ the entry point


def _expand(source: str, patterns: bool) -> list[Path]:
    """The files a source names: itself, or (where `patterns`) the files of its brace pattern (each must exist)."""
    if not patterns or os.path.exists(source) or not _BRACES.search(source):
        return [Path(source)]
    paths = [Path(p) for p in expand_braces(source)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{_list_names(missing)} (from {source}) {'does' if len(missing) == 1 else 'do'} not exist.")
    return paths


def _file_format(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "webdataset"
    return {PARQUET_SUFFIX: "parquet", ".zip": "zip", ".csv": "table", ".json": "json"}.get(path.suffix.lower())


def _detect(files: list[Path], text: str) -> tuple[str, Any]:
    """The format of a source's files (a key of _OPTIONS), and a COCO file's parsed JSON (read once)."""
    path = files[0]
    if path.is_dir():
        kind = "imagefolder" if any((path / name).is_file() for name in IMAGEFOLDER_METADATA) else "folder"
    elif path.is_file():
        kinds = {_file_format(p) for p in files}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is None:
            raise InputError(f"{path.name if len(files) == 1 else text}: vlviz reads {SOURCES_HELP}.")
    else:
        raise InputError(f"{text} does not exist: give {SOURCES_HELP}.")
    if len(files) > 1 and kind not in ("webdataset", "parquet"):
        raise InputError(f"{text} names several files: a pattern may name .tar shards or .parquet files only.")
    if kind != "json":
        return kind, None
    raw = _read_limited(path, MAX_ANNOTATION_BYTES, "COCO captions file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(
            f"{path.name} is not valid JSON ({exc}); a COCO captions file or a caption table was expected."
        ) from exc
    return ("coco", data) if _is_coco(data) else ("table", None)


def _check_options(kind: str, label: str, given: dict[str, Any]) -> None:
    unused = sorted(name.replace("_", " ") for name, value in given.items() if value and name not in _OPTIONS[kind])
    if unused:
        raise InputError(
            f"{label} is {_DESCRIPTIONS[kind]}; the {' and '.join(unused)} option"
            f"{'s do' if len(unused) > 1 else ' does'} not apply to it."
        )


@dataclass(frozen=True)
class _Options:
    """The format options of a source (see `read_pairs`)."""

    image_column: str | None
    caption_column: str | None
    images_dir: Path | None
    all_captions: bool


def _format_pairs(
    kind: str,
    files: list[Path],
    coco: Any,
    options: _Options,
    allow_paths: bool,
    expect: Callable[[int], None],
    notices: list[str],
    tar_budget: _TarBudget,
) -> tuple[Iterator[RawPair], str]:
    """The pair stream of a streamed format, and what the source lacks when it yields no pair.

    `expect(count)` hears the pair count of a source that states it up front (parquet, COCO, imagefolder).
    """
    path = files[0]
    if kind == "webdataset":
        what = "its samples need an image ({key}.jpg, .png, .webp, ...) and {key}.txt or {key}.json"
        return _webdataset_pairs(files, options.caption_column, notices, tar_budget), what
    if kind == "parquet":
        stream = _parquet_pairs(
            files, options.image_column, options.caption_column, options.images_dir, allow_paths, expect
        )
        return stream, "it has no rows"
    if kind == "coco":
        stream = _coco_pairs(coco, path.name, options.images_dir or path.parent, options.all_captions, expect)
        return stream, 'its "images" list is empty'
    metadata = _imagefolder_metadata(path)
    return _imagefolder_pairs(path, metadata, options.caption_column, notices, expect), f"{metadata.name} has no rows"


def read_pairs(
    source: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    all_captions: bool = False,
    max_pairs: int | None = None,
    max_request_pixels: int | None = None,
    memory: ByteBudget | None = None,
    allow_paths: bool = True,
    patterns: bool = True,
) -> PairSet:
    """Image-caption pairs from a data source on disk, its format detected from the path.

    Detection: a brace pattern or a .tar/.tar.gz/.tgz file is webdataset shards; a .parquet file (or a
    pattern of them) is parquet; a .json file holding `images` and `annotations` is COCO captions, any
    other .json or a .csv a caption table beside its images; a .zip is a zip of images (with a caption
    table inside); a folder holding metadata.jsonl or metadata.csv is a Hugging Face imagefolder, any
    other folder images with captions.csv/json. Pairs keep the source's order.

    Args:
        source: A path, or a brace pattern such as `shards/{000..009}.tar`.
        image_column: Parquet: the image column (default: the first of IMAGE_COLUMNS found).
        caption_column: Parquet, imagefolder: the caption column; webdataset: the caption field of
            {key}.json (default: the first of inputs.CAPTION_COLUMNS found; a list gives its first).
        images_dir: COCO: the folder of the images (default: the JSON's folder); parquet: the folder
            that path columns are relative to (default: the parquet file's folder).
        all_captions: COCO: every caption of an image is a pair of its own (default: its first caption).
        max_pairs: Most pairs accepted; None means MAX_PAIRS.
        max_request_pixels: Most pixels, summed over all images, decoded; None means MAX_REQUEST_PIXELS.
        memory: The bytes the decoded images may take (`inputs.decoded_bytes`), taken from each header
            before decoding; None means no bound.
        allow_paths: False refuses sources that name image files on disk rather than holding them
            (folders, tables, COCO, imagefolder, parquet path columns): for files a user uploaded.
        patterns: False reads `source` as one file name, braces included: brace patterns are for
            people at the command line, never for a name a client sent (`{..,..}` would leave its folder).

    Raises:
        InputError: The source is missing, of no known format, or bad in any way `read_pairs` or
            `pairs_from_uploads` reports; an option that does not apply to the format was given.
    """
    text = os.fspath(source)
    files = _expand(text, patterns)
    path, name = files[0], files[0].name or text
    kind, coco = _detect(files, text)
    _check_options(kind, name, {"image_column": image_column, "caption_column": caption_column,
                                "images_dir": images_dir, "all_captions": all_captions})  # fmt: skip
    if not allow_paths and kind in ("folder", "table", "coco", "imagefolder"):
        raise InputError(
            f"{name} is {_DESCRIPTIONS[kind]}, which names image files on disk; give a .zip, a .tar or a .parquet "
            "with the images in it."
        )
    limit = inputs.MAX_PAIRS if max_pairs is None else max_pairs
    budget = inputs.MAX_REQUEST_PIXELS if max_request_pixels is None else max_request_pixels
    pairs = _Pairs(name if len(files) == 1 else text, limit, budget, memory)
    if kind in STREAMED_FORMATS:
        options = _Options(image_column, caption_column, Path(images_dir) if images_dir else None, all_captions)
        stream, what = _format_pairs(
            kind,
            files,
            coco,
            options,
            allow_paths,
            pairs.expect,
            pairs.notices,
            _TarBudget(MAX_TAR_BYTES, MAX_TAR_MEMBERS),
        )
        return pairs.collect(stream, what)
    bounds = {"max_pairs": limit, "max_request_pixels": budget, "memory": memory}
    if kind == "folder":
        return load_pairs_folder(path, **bounds)
    if kind == "zip":
        return pairs_from_uploads([str(path)], **bounds)
    # a caption table: the images it names, beside it
    images = [str(path.parent / file) for file in load_caption_table(str(path), name)]
    return pairs_from_uploads(images, caption_table_path=str(path), **bounds)


def stream_pairs(
    source: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    all_captions: bool = False,
) -> PairStream:
    """The pairs of a source on disk one at a time, images undecoded, in `read_pairs`' order, without its bounds.

    For sets too large to hold: webdataset shards, parquet, COCO captions, imagefolders, folders of
    images with a caption table and caption tables are streamed (a folder's or table's captions are
    matched to the images up front, as `read_pairs` does; no image is opened). A zip is refused: it
    is an upload format, read whole. Options and detection are `read_pairs`'.

    Raises:
        InputError: As `read_pairs`, when the stream is made or (bad rows, missing files) while it is read.
    """
    text = os.fspath(source)
    files = _expand(text, patterns=True)
    path, name = files[0], files[0].name or text
    kind, coco = _detect(files, text)
    _check_options(kind, name, {"image_column": image_column, "caption_column": caption_column,
                                "images_dir": images_dir, "all_captions": all_captions})  # fmt: skip
    notices: list[str] = []
    if kind in STREAMED_FORMATS:
        options = _Options(image_column, caption_column, Path(images_dir) if images_dir else None, all_captions)
        unbounded = _TarBudget(None, None)  # a million pairs: each member still bounded
        stream, _ = _format_pairs(kind, files, coco, options, True, lambda count: None, notices, unbounded)
    elif kind == "folder":
        stream = _listed_pairs(*inputs.folder_contents(path))
    elif kind == "table":
        stream = _listed_pairs([str(path.parent / file) for file in load_caption_table(str(path), name)], str(path))
    else:
        raise InputError(
            f"{name} is a zip, which vlviz reads whole, as an upload; unpack it into a folder (images with "
            "captions.csv) or write webdataset .tar shards to stream it."
        )
    return PairStream(text, stream, notices)


def _listed_pairs(images: list[str], table: str) -> Iterator[RawPair]:
    """Image files with the captions a caption table gives them, matched by base name as uploads are."""
    label = os.path.basename(table)
    names = [os.path.basename(image) for image in images]
    captions = _match_table(names, load_caption_table(table, label), label)
    for image, name, caption in zip(images, names, captions):
        yield _pair(Path(image), caption, name, name, f"{name} in {label}")


def pairs_from_dataset_uploads(
    files: list[str], captions_text: str | None = None, memory: ByteBudget | None = None
) -> PairSet | None:
    """Uploaded webdataset shards or parquet files as pairs; None when the uploads are images, zips or tables.

    All of them are read as one source, within one budget of pairs, pixels, decoded bytes and tar
    members, as one upload of images is. Uploaded files may only hold their images (no parquet column
    of paths: a client must not make the server open files it names), and a name is never a brace
    pattern: each is opened as the one file it names.
    """
    datasets = [file for file in files if file.lower().endswith((*TAR_SUFFIXES, PARQUET_SUFFIX))]
    if not datasets:
        return None
    if len(datasets) < len(files):
        raise InputError(
            "Upload either dataset files (.tar shards, .parquet) or images with their captions, not both: "
            f"{len(datasets)} of the {len(files)} files are dataset files."
        )
    label = os.path.basename(datasets[0]) if len(datasets) == 1 else f"the {len(datasets)} dataset files"
    pairs = _Pairs(label, inputs.MAX_PAIRS, inputs.MAX_REQUEST_PIXELS, memory)
    tar_budget, options = _TarBudget(MAX_TAR_BYTES, MAX_TAR_MEMBERS), _Options(None, None, None, False)

    def stream(path: Path) -> Iterator[RawPair]:
        return _format_pairs(_file_format(path) or "", [path], None, options, False, pairs.expect, pairs.notices,
                             tar_budget)[0]  # fmt: skip

    streams = (stream(path) for path in map(Path, datasets))  # in upload order, one file at a time
    result = pairs.collect(itertools.chain.from_iterable(streams), "they need images with captions")
    if captions_text and captions_text.strip():
        result.notices.append("The captions box was not used: the dataset files carry their own captions.")
    return result
