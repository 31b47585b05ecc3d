"""Turn user uploads (images, a zip of images, caption text or a caption table) into image-caption pairs.

Everything a user hands the app passes through here, so this module is defensive: every problem is
reported as an `InputError` whose message names the file, line or counts involved and says what to
do, and untrusted data is never unpickled, never extracted to disk and never decoded without a size
guard. It has no Gradio dependency so that the command line and tests can use it too.

Caption rules, in short:

* Free text: one caption per line, in upload order. Blank lines are dropped, so a stray empty line
  at the end (or between captions) never shifts the pairing.
* A caption table (CSV or JSON) matches captions to images by base file name instead. It can be
  uploaded separately, uploaded among the images, or put inside a zip of images.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import json
import os
import re
import sys
import threading
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 64_000_000
"""Largest image (width x height, before downscaling) we agree to decode: a decompression-bomb guard."""
MAX_SIDE = 1024
"""Images whose longer side exceeds this are downscaled to it, keeping the aspect ratio."""
MAX_CAPTION_CHARS = 1000
"""Longest accepted caption; CLIP tokenizers truncate far earlier, so longer text is almost surely a mistake."""
MAX_PAIRS = 10_000
"""Most image-caption pairs in one set: the pixel budget bounds memory; views page or sample beyond a few hundred."""
MAX_ZIP_MEMBERS = 10_000
"""Most entries (of any kind) a zip may list before we refuse to look inside it."""
MAX_ZIP_BYTES = 512 * 1024 * 1024
"""Most uncompressed bytes we read out of all zips of one upload together (a zip-bomb guard)."""
MAX_TABLE_BYTES = 16 * 1024 * 1024
"""Largest caption table we read (MAX_PAIRS captions of MAX_CAPTION_CHARS need well under 1 MB)."""
MAX_REQUEST_PIXELS = 2_000_000_000
PIXEL_BYTES = 4
"""Bytes a decoded pixel takes: Pillow keeps an RGB pixel in 32 bits (its fourth byte unused)."""
"""Most pixels (summed over image headers) one upload may make us decode; bounds the decoding time per request."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp"}
    | {".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"}
)
"""Extensions treated as images inside zips and folders (loose uploads are tried whatever their name)."""
TABLE_EXTENSIONS: frozenset[str] = frozenset({".csv", ".json"})
FILE_COLUMNS: tuple[str, ...] = (
    "file", "filename", "file_name", "image", "image_file", "image_name", "image_path", "img", "path", "filepath", "url",
)  # fmt: skip
"""Accepted names of the file-name column or key in a caption table, earlier ones first.

Matched ignoring case, spaces, underscores and dashes, so "Image Path" and "image-path" count too.
"""
CAPTION_COLUMNS: tuple[str, ...] = (
    "caption", "captions", "text", "title", "description", "alt", "alt_text", "sentence", "prompt",
)  # fmt: skip
"""Accepted names of the caption column or key in a caption table, matched like FILE_COLUMNS."""
PREFERRED_TABLE_NAMES: tuple[str, ...] = ("captions.csv", "captions.json")

# warnings.catch_warnings swaps the process-wide filter list and is not thread-safe; Gradio runs handlers
# in threads, so our own decodes take turns. Decoding one (size-capped) image is quick.
_WARNINGS_LOCK = threading.Lock()


class InputError(ValueError):
    """A problem with user input, with a message meant to be shown to the user as is."""


@dataclass
class PairSet:
    """Images with their captions, in pairing order, plus notes worth showing the user."""

    images: list[Image.Image]
    captions: list[str]
    names: list[str]
    notices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


# ----------------------------------------------------------------------------------------- helpers


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    """'1 image', '3 images': messages read naturally for every count."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def _list_names(names: Iterable[str], limit: int = 5) -> str:
    """A short, readable list of names, so one message never floods the UI."""
    names = list(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


def _base_name(path: str) -> str:
    """Base name of a path written with either / or \\ (tables written on Windows use the latter)."""
    return re.split(r"[\\/]", path.strip())[-1]


def _natural_key(name: str) -> list[int | str]:
    """Sort key that puts img2 before img10, as file browsers do."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _display_name(source: str | os.PathLike[str] | bytes, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, bytes):
        return "the uploaded image"
    return os.path.basename(os.fspath(source)) or os.fspath(source)


def _check_caption(caption: str, where: str) -> None:
    if len(caption) > MAX_CAPTION_CHARS:
        raise InputError(
            f"{where} is {len(caption)} characters long; captions may be at most {MAX_CAPTION_CHARS} "
            "characters. Shorten it (CLIP models only read the first few dozen words anyway)."
        )


# ------------------------------------------------------------------------------------------ images


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without losing the picture.

    Transparent pixels become white (what a viewer shows on a light page), and high bit-depth
    greyscale is rescaled rather than clipped: Pillow's own I;16 -> L conversion clips everything
    above 255 to white.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _grey_to_rgb(np.asarray(im), im.mode)
    if im.mode == "P" and "transparency" not in im.info:
        return im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # RGB (copy), L, 1, CMYK, YCbCr, RGBX, ...


def _grey_to_rgb(values: np.ndarray, mode: str) -> Image.Image:
    """Scale high bit-depth greyscale to 8 bit.

    Integer data that fits in 16 bits is scaled by its type's range (0 -> 0, 65535 -> 255), as image
    viewers do, so a dark 16-bit photo stays dark. Data with no natural range (32-bit integers outside
    0..65535, floats outside 0..1) is stretched from its minimum to its maximum. NaN and inf become black.
    """
    data = values.astype(np.float32)  # float32 halves the peak memory of a MAX_IMAGE_PIXELS image
    finite = np.isfinite(data)
    data[~finite] = 0.0
    lo, hi = (float(data[finite].min()), float(data[finite].max())) if finite.any() else (0.0, 0.0)
    if mode != "F" and lo >= 0 and hi <= 65535:
        scaled = data * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = data * 255.0
    elif hi > lo:
        scaled = (data - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(data)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size that fits in a max_side square with the same aspect ratio (never below 1 pixel)."""
    scale = max_side / max(width, height)
    return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))  # half up, unlike round()


def _decode(source: str | os.PathLike[str] | bytes, label: str, notices: list[str] | None) -> Image.Image:
    """Decode, orient, convert and downscale one image; raises anything Pillow raises."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    with Image.open(fp) as im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(
                f"{label} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), more than the "
                f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels allowed. Resize it before uploading."
            )
        if im.format in ("JPEG", "MPO") and max(width, height) > MAX_SIDE:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: much faster and lighter than a full decode,
            # and never below the size we downscale to afterwards.
            im.draft(None, _fit_size(width, height, MAX_SIDE))
        oriented = ImageOps.exif_transpose(im)  # loads the pixels; a new image, independent of the file
    if oriented.size[0] != oriented.size[1] and oriented.size == im.size[::-1]:
        width, height = height, width  # report the original size the way the user sees the photo
    rgb = _to_rgb(oriented)
    if max(rgb.size) > MAX_SIDE:
        target = _fit_size(*rgb.size, MAX_SIDE)
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if notices is not None:
            notices.append(f"{label} was {width}x{height}, downscaled to {target[0]}x{target[1]}")
    rgb.load()
    return rgb


def load_image(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    *,
    notices: list[str] | None = None,
) -> Image.Image:
    """Load an uploaded image as a plain RGB picture, as the user sees it in a photo viewer.

    The EXIF orientation is applied, transparency is composited on white, CMYK / 1-bit / 16-bit /
    float images are converted properly, and images larger than MAX_SIDE are downscaled. The pixels
    are fully read, so no file handle stays open.

    Args:
        source: A file path, or the file's bytes.
        name: Name to use in messages; defaults to the file's base name.
        notices: If given, human-readable notes (such as a downscale) are appended to it.

    Raises:
        InputError: The file is missing, not an image, truncated or corrupt, or larger than
            MAX_IMAGE_PIXELS.
    """
    label = _display_name(source, name)
    try:
        # Pillow's own decompression-bomb guard warns (and past twice its limit, raises); the warning
        # becomes an error here only, so Pillow's global settings and other callers are left alone.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(source, label, notices)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{label} is too large to open safely ({exc}). Resize it to at most "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels before uploading."
        ) from exc
    except FileNotFoundError as exc:
        raise InputError(f"{label} could not be found; upload it again.") from exc
    except MemoryError as exc:
        raise InputError(f"{label} needs too much memory to decode; upload a smaller image.") from exc
    except Exception as exc:  # Pillow raises many types for bad files: OSError, SyntaxError, struct.error...
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a known image format"  # Pillow's message would show the server-side temp path
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror  # e.g. "Permission denied", without the path
        else:
            reason = str(exc) or type(exc).__name__
        raise InputError(
            f"{label} is not a readable image ({reason}). Upload a JPEG, PNG, WebP, GIF, BMP or TIFF file."
        ) from exc


# ---------------------------------------------------------------------------------------- captions


def parse_caption_lines(text: str) -> list[str]:
    """Split free text into captions: one per line, stripped, with blank lines dropped.

    Blank lines are dropped (not kept as empty captions) because a trailing newline or a spacer line
    is almost always an accident, and keeping it would shift every later caption to the wrong image.

    Raises:
        InputError: A caption is longer than MAX_CAPTION_CHARS (the message gives its line number).
    """
    captions = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        caption = line.strip()
        if caption:
            _check_caption(caption, f"The caption on line {number}")
            captions.append(caption)
    return captions


def _read_text(source: str | os.PathLike[str] | bytes, name: str) -> str:
    too_big = InputError(f"{name} is larger than {MAX_TABLE_BYTES // 2**20} MB; is it really a caption table?")
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(os.fspath(source), "rb") as file:
                data = file.read(MAX_TABLE_BYTES + 1)
        except OSError as exc:
            raise InputError(f"{name} could not be read ({exc.strerror or exc}); upload it again.") from exc
    if len(data) > MAX_TABLE_BYTES:
        raise too_big
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text; save it as UTF-8 (CSV UTF-8 in Excel).") from exc


def _column_key(label: str) -> str:
    """A column name reduced to what identifies it: "Image Path", "image_path" and "image-path" are the same."""
    return re.sub(r"[\s_-]+", "", label).lower()


def _find_column(labels: list[str], accepted: tuple[str, ...]) -> int | None:
    """Index of the first label that is an accepted name, trying the accepted names in order."""
    keys = [_column_key(label) for label in labels]
    return next((keys.index(k) for k in map(_column_key, accepted) if k in keys), None)


def _clip(text: str, width: int = 40) -> str:
    """`text` cut short for a message, so one huge cell or name never floods the UI."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _quote_row(row: list[str]) -> str:
    return _list_names(_clip(cell) for cell in row)


def _table_format_help(name: str) -> str:
    return (
        f"{name} should be a CSV file with a header row naming a file column ({'/'.join(FILE_COLUMNS)}) and "
        f"a caption column ({'/'.join(CAPTION_COLUMNS)}), or two columns file,caption without a header; "
        'or a JSON file holding either {"cat.jpg": "a cat", ...} or [{"file": "cat.jpg", "caption": "a cat"}, ...].'
    )


def _add_entry(table: dict[str, str], file: str, caption: str, name: str, where: str) -> None:
    key = _base_name(file)
    caption = caption.strip()
    if not key:
        if not caption:
            return  # a wholly empty row or item: nothing to pair
        raise InputError(f"{name} {where} has a caption but no file name; fill in the file name.")
    _check_caption(caption, f"The caption for {key} in {name} ({where})")
    if key in table and table[key] != caption:
        raise InputError(f"{name} gives {key} two different captions; keep one of them.")
    table[key] = caption


def _parse_csv(text: str, name: str) -> dict[str, str]:
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise InputError(f"{name} is not a valid CSV file ({exc}). {_table_format_help(name)}") from exc
    if not rows:
        raise InputError(f"{name} is empty. {_table_format_help(name)}")
    file_col, caption_col = _find_column(rows[0], FILE_COLUMNS), _find_column(rows[0], CAPTION_COLUMNS)
    # A headerless table starts with a data row, whose first cell names an image.
    data_first = _extension(_base_name(rows[0][0])) in IMAGE_EXTENSIONS
    if file_col is not None and caption_col is not None:
        body, start = rows[1:], 2
    elif not data_first and (file_col is not None or caption_col is not None):
        raise InputError(
            f"{name} has a header row ({_quote_row(rows[0])}) but lacks a "
            f"{'caption' if caption_col is None else 'file'} column. {_table_format_help(name)}"
        )
    elif not data_first:
        raise InputError(
            f"{name} starts with a row ({_quote_row(rows[0])}) that is neither a header naming a file column "
            "and a caption column nor a file,caption row (its first cell is not an image file name). "
            f"Add a header row such as file,caption. {_table_format_help(name)}"
        )
    else:
        file_col, caption_col, body, start = 0, 1, rows, 1
        wide = next((i for i, row in enumerate(rows) if len(row) != 2), None)
        if wide is not None:
            raise InputError(
                f"{name} has no header row, and its row {wide + 1} has {len(rows[wide])} columns instead of "
                f"2 (file,caption). Quote captions that contain commas. {_table_format_help(name)}"
            )
    table: dict[str, str] = {}
    for offset, row in enumerate(body):
        row = row + [""] * (max(file_col, caption_col) + 1 - len(row))  # short rows leave cells empty
        _add_entry(table, row[file_col], row[caption_col], name, f"row {start + offset}")
    return table


def _parse_json(text: str, name: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{name} is not valid JSON ({exc}). {_table_format_help(name)}") from exc
    table: dict[str, str] = {}
    if isinstance(data, dict):
        for file, caption in data.items():
            if not isinstance(caption, str):
                raise InputError(f"{name}: the caption for {file} is not a string. {_table_format_help(name)}")
            _add_entry(table, file, caption, name, f'entry "{file}"')
        return table
    if isinstance(data, list):
        for number, item in enumerate(data, start=1):
            labels = [str(k) for k in item] if isinstance(item, dict) else []
            values = list(item.values()) if isinstance(item, dict) else []
            file_col, caption_col = _find_column(labels, FILE_COLUMNS), _find_column(labels, CAPTION_COLUMNS)
            file = None if file_col is None else values[file_col]
            caption = None if caption_col is None else values[caption_col]
            if not isinstance(file, str) or not isinstance(caption, str):
                raise InputError(
                    f"{name}: item {number} is not an object with a file name and a caption. {_table_format_help(name)}"
                )
            _add_entry(table, file, caption, name, f"item {number}")
        return table
    raise InputError(f"{name} holds a JSON {type(data).__name__}. {_table_format_help(name)}")


def load_caption_table(source: str | os.PathLike[str] | bytes, name: str) -> dict[str, str]:
    """Read a CSV or JSON caption table into {base file name: caption}.

    The format follows the extension of `name` (.csv or .json); for other names it is sniffed from
    the content. Keys are base names (folders, with / or \\, are dropped) because uploads lose their
    folders. Captions are stripped; an empty caption is kept so the caller can name its image.

    Args:
        source: A file path, or the file's bytes.
        name: The file's name, used to pick the format and in messages.

    Raises:
        InputError: The file is not UTF-8, not valid CSV/JSON, or not shaped like a caption table;
            a file name appears twice with different captions; a caption is too long.
    """
    text = _read_text(source, name)
    extension = _extension(name)
    if extension == ".json" or (extension != ".csv" and text.lstrip()[:1] in ("{", "[")):
        return _parse_json(text, name)
    return _parse_csv(text, name)


# ------------------------------------------------------------------------------------------ pairing


@dataclass
class _Item:
    """One image still to load: where its bytes are and what to call it."""

    name: str  # base name, matched against a caption table
    label: str  # name in messages, e.g. "photos.zip: cats/cat.jpg"
    path: str | None = None  # a loose upload ...
    archive: zipfile.ZipFile | None = None  # ... or a zip member, read only when needed
    member: zipfile.ZipInfo | None = None

    def read(self) -> str | bytes:
        if self.archive is not None and self.member is not None:
            return _read_member(self.archive, self.member)
        return self.path or ""


def _zip_label(archive: zipfile.ZipFile) -> str:
    return os.path.basename(str(archive.filename or "the zip"))


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """A member's bytes, in memory; zipfile never yields more than the size the zip declares."""
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, ValueError) as exc:
        # BadZipFile: bad CRC or header; RuntimeError: encrypted; NotImplementedError: unknown compression.
        reason = "it is password-protected" if member.flag_bits & 0x1 else str(exc)
        raise InputError(f"{member.filename} in {_zip_label(archive)} could not be unpacked ({reason}).") from exc


def _unsafe_zip_name(name: str) -> bool:
    """Whether unpacking `name` could write outside the target folder (zip slip): a .. part, or a root or drive."""
    parts = name.replace("\\", "/").split("/")
    return ".." in parts or name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None


def _zip_skippable(member: zipfile.ZipInfo) -> bool:
    """Folders, macOS resource forks (__MACOSX/) and dotfiles (.DS_Store) hold no images or captions."""
    parts = [p for p in member.filename.replace("\\", "/").split("/") if p not in ("", ".")]  # ./a.png is a.png
    return member.is_dir() or not parts or "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def zip_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The zip's members that can hold a file (`_zip_skippable` ones left out), after the checks every unpacking
    needs: at most MAX_ZIP_MEMBERS entries, and none whose name points outside the folder it unpacks into.

    Raises:
        InputError: Too many entries, or an unsafe name.
    """
    zip_name = _zip_label(archive)
    members = archive.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise InputError(
            f"{zip_name} lists {len(members)} entries, more than the {MAX_ZIP_MEMBERS} allowed; "
            f"put at most {MAX_PAIRS} images in it."
        )
    # Checked before anything is skipped: a ../ entry must not vanish silently as if it were a dotfile.
    unsafe = [_clip(m.filename, 80) for m in members if _unsafe_zip_name(m.filename)]
    if unsafe:
        raise InputError(
            f"{zip_name} has entries with unsafe names ({_list_names(unsafe)}): a name with a .. part or one "
            "that starts at the root or at a drive (/, \\, C:) points outside the folder the zip unpacks into. "
            "Create the zip again from a folder of images."
        )
    return [m for m in members if not _zip_skippable(m)]


def _scan_zip(archive: zipfile.ZipFile, notices: list[str]) -> tuple[list[zipfile.ZipInfo], zipfile.ZipInfo | None]:
    """The zip's image members, in name order, and its caption table member if it has one."""
    zip_name = _zip_label(archive)
    kept = zip_members(archive)
    images = sorted(
        (m for m in kept if _extension(m.filename) in IMAGE_EXTENSIONS), key=lambda m: _natural_key(m.filename)
    )
    tables = [m for m in kept if _extension(m.filename) in TABLE_EXTENSIONS]
    preferred = [m for m in tables if _base_name(m.filename).lower() in PREFERRED_TABLE_NAMES]
    if len(preferred) > 1 or (not preferred and len(tables) > 1):
        raise InputError(
            f"{zip_name} holds several caption tables ({_list_names(m.filename for m in preferred or tables)}); "
            "keep one, named captions.csv or captions.json."
        )
    table = (preferred or tables or [None])[0]
    used = {id(m) for m in images} | {id(table)}
    others = [m.filename for m in kept if id(m) not in used]
    if others:
        notices.append(f"{zip_name}: skipped {_list_names(others)} (neither an image nor a caption table)")
    if not images:
        raise InputError(f"{zip_name} contains no images; put JPEG or PNG files in it.")
    return images, table


def _megapixels(pixels: int) -> str:
    """Megapixels for a message: whole numbers when large, three digits when small."""
    value = pixels / 1e6
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def header_size(fp: str | IO[bytes]) -> tuple[int, int]:
    """(width, height) from an image's header only (nothing is decoded); (0, 0) when the header is unreadable.

    An unreadable file is left for `load_image` to report with its usual message.
    """
    try:
        # Pillow warns about (and past twice its limit, refuses) huge headers; load_image reports those.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                return im.size
    except Exception:  # anything unreadable: the decode that follows names the problem
        return 0, 0


def decoded_bytes(width: int, height: int) -> int:
    """The bytes an image of this size holds once `load_image` has decoded it: RGB, downscaled to MAX_SIDE,
    PIXEL_BYTES a pixel.

    Known from the header alone, so a memory budget is checked before any pixel is decoded.
    """
    if width <= 0 or height <= 0:
        return 0
    if max(width, height) > MAX_SIDE:
        width, height = _fit_size(width, height, MAX_SIDE)
    return PIXEL_BYTES * width * height


def _header_size(item: _Item) -> tuple[int, int]:
    """(width, height) from the item's image header, reading only the start of a zip member."""
    try:
        with contextlib.ExitStack() as stack:
            if item.archive is not None and item.member is not None:
                return header_size(stack.enter_context(item.archive.open(item.member)))  # a stream
            return header_size(item.path or "")
    except Exception:  # a member that cannot be opened: the decode that follows names the problem
        return 0, 0


def decoded_bytes_of(image: bytes | str | os.PathLike[str]) -> int:
    """`decoded_bytes` of an encoded image or image file, read from its header (0 when unreadable: its decode
    reports it)."""
    return decoded_bytes(*header_size(io.BytesIO(image) if isinstance(image, bytes) else os.fspath(image)))


def megabytes(size: int) -> str:
    """Bytes as MB for a message: "4,096 MB", "2.5 MB"."""
    return f"{size / 2**20:,.0f} MB" if size >= 10 * 2**20 else f"{size / 2**20:.3g} MB"


@dataclass
class ByteBudget:
    """Bytes the decoded images of one read may take, taken image by image from the headers before decoding.

    `limit` bounds one read; a server whose reads share a pool overrides `grant` to draw from it, so a
    read holds only what it has decoded so far, not a share set aside up front.
    """

    limit: int
    taken: int = 0

    def grant(self, nbytes: int) -> int | None:
        """Take `nbytes` more; None when granted, else the most this read could hold in all (for the message)."""
        if self.taken + nbytes > self.limit:
            return self.limit
        self.taken += nbytes
        return None

    def take(self, nbytes: int, what: str) -> None:
        """Take `nbytes` for `what` (e.g. "The 3 images uploaded"), or refuse with a message saying how much fits."""
        most = self.grant(nbytes)
        if most is not None:
            raise InputError(
                f"{what} take {megabytes(self.taken + nbytes)} in memory, more than the {megabytes(most)} this server keeps for "
                f"one set of pairs now. Use fewer or smaller images (every image is held at most {MAX_SIDE} pixels "
                "on its longer side), or analyze again once this session's earlier views are gone."
            )


def return_freed_memory() -> None:
    """Hand the pages freed since the last call back to the system (glibc's `malloc_trim`).

    Decoded images, an analysis and a half-built model are hundreds of small and large blocks; once freed, glibc
    keeps most of them in its heaps (one per thread that allocated), so the resident set of a server stays at its
    peak. Called when sessions end and when a model fails to load.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, ...): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _check_budgets(items: list[_Item], pixel_budget: int, memory: ByteBudget | None) -> None:
    """The pixels to decode and the bytes to keep, both from the headers, before any image is decoded."""
    sizes = [_header_size(item) for item in items]
    total = sum(width * height for width, height in sizes)
    if total > pixel_budget:
        raise InputError(
            f"The {_plural(len(items), 'image')} uploaded hold {_megapixels(total)} megapixels together, more "
            f"than the {_megapixels(pixel_budget)} megapixels one upload may decode. Upload fewer images, or resize "
            f"large photos first (to {MAX_SIDE} pixels on the longer side: they are downscaled to that anyway)."
        )
    if memory is not None:
        memory.take(
            sum(decoded_bytes(width, height) for width, height in sizes), f"The {_plural(len(items), 'image')} uploaded"
        )


def _match_table(names: list[str], table: dict[str, str], table_label: str) -> list[str]:
    """Captions for `names` from `table`: by exact base name, else by a unique case-insensitive match.

    The case-insensitive fallback forgives a table that says cat.jpg for an upload called Cat.JPG.
    """
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise InputError(
            f"Several images are called {_list_names(duplicates)}, so {table_label} cannot tell them apart; "
            "rename them so each file name is unique."
        )
    matched = {name: name for name in names if name in table}
    spare: dict[str, list[str]] = {}
    for key in table:
        if key not in matched:
            spare.setdefault(key.lower(), []).append(key)
    for name in names:
        candidates = spare.get(name.lower(), [])
        if name not in matched and len(candidates) == 1:
            matched[name] = candidates[0]
    missing = [name for name in names if name not in matched]
    unused = [key for key in table if key not in set(matched.values())]
    if missing:
        raise InputError(
            f"{_plural(len(missing), 'image')} {'has' if len(missing) == 1 else 'have'} no caption in "
            f"{table_label}: {_list_names(missing)}. Add a row for each, with the exact file name."
        )
    if unused:
        raise InputError(
            f"{table_label} has captions for {_plural(len(unused), 'image')} that "
            f"{'was' if len(unused) == 1 else 'were'} not uploaded: {_list_names(unused)}. "
            "Upload them too, or remove their rows."
        )
    return [table[matched[name]] for name in names]


def _merge_tables(tables: list[tuple[str, str | bytes]]) -> dict[str, str]:
    """All caption tables of one upload as one mapping; they must not contradict each other."""
    merged: dict[str, str] = {}
    for label, source in tables:
        for key, caption in load_caption_table(source, label).items():
            if key in merged and merged[key] != caption:
                raise InputError(f"{label} and another caption table give {key} different captions; keep one.")
            merged[key] = caption
    return merged


def pairs_from_uploads(
    image_paths: list[str],
    captions_text: str | None = None,
    caption_table_path: str | None = None,
    max_pairs: int | None = None,
    *,
    max_request_pixels: int | None = None,
    memory: ByteBudget | None = None,
) -> PairSet:
    """Build the image-caption pairs from what the user uploaded; the one entry point of the UI.

    Captions come from a caption table when there is one (`caption_table_path`, a .csv/.json among
    `image_paths`, or a table inside an uploaded zip), matched to images by base file name; otherwise
    from `captions_text`, one per line, matched in upload order. Zips are read in memory, never
    extracted: their images (in name order, ignoring __MACOSX/ and dotfiles) take the zip's place in
    the upload order. All checks that need no pixels run before any image is decoded, and the total
    size, read from the image headers, is checked against a pixel budget before decoding too.

    Args:
        image_paths: Uploaded files: images, .zip archives of images, and optionally a caption table.
            None is treated as no upload.
        captions_text: Captions, one per line (blank lines are ignored).
        caption_table_path: A CSV or JSON caption table (see `load_caption_table`).
        max_pairs: Most images accepted; None means MAX_PAIRS (the command line allows more).
        max_request_pixels: Most pixels, summed over all images, decoded for this call; None means
            MAX_REQUEST_PIXELS.
        memory: The bytes the decoded images may take (`decoded_bytes`), taken from the headers before
            decoding; None means no bound (a server passes its memory budget).

    Raises:
        InputError: Anything wrong with the uploads, with a message for the user.
    """
    notices: list[str] = []
    items: list[_Item] = []
    tables: list[tuple[str, str | bytes]] = []
    if caption_table_path:
        tables.append((os.path.basename(caption_table_path), caption_table_path))
    with contextlib.ExitStack() as stack:
        zip_bytes = 0
        for raw in image_paths or []:
            path = os.fspath(raw)
            base = os.path.basename(path)
            if _extension(base) == ".zip":
                try:
                    archive = stack.enter_context(zipfile.ZipFile(path))
                except (zipfile.BadZipFile, OSError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    raise InputError(f"{base} is not a readable zip archive ({reason}); create it again.") from exc
                members, table = _scan_zip(archive, notices)
                # Zip-bomb guard, from the sizes in the zip's directory, before anything is decompressed.
                zip_bytes += sum(m.file_size for m in members) + (table.file_size if table else 0)
                if zip_bytes > MAX_ZIP_BYTES:
                    raise InputError(
                        f"{base} unpacks to more than {MAX_ZIP_BYTES // 2**20} MB (counting all zips uploaded "
                        "together); upload fewer or smaller images."
                    )
                if table is not None:
                    if table.file_size > MAX_TABLE_BYTES:
                        raise InputError(f"{table.filename} in {base} is too large to be a caption table.")
                    tables.append((f"{base}: {table.filename}", _read_member(archive, table)))
                items += [
                    _Item(_base_name(m.filename), f"{base}: {m.filename}", archive=archive, member=m) for m in members
                ]
            elif _extension(base) in TABLE_EXTENSIONS:
                notices.append(f"{base} was uploaded with the images; it supplies the captions")
                tables.append((base, path))
            else:
                items.append(_Item(base, base, path=path))
        if not items:
            raise InputError("No images were uploaded: add at least one image, or a .zip of images.")
        limit = MAX_PAIRS if max_pairs is None else max_pairs
        if len(items) > limit:
            raise InputError(
                f"{len(items)} images were uploaded, but at most {limit} can be compared at once; upload fewer."
            )

        names = [item.name for item in items]
        if tables:
            table_label = " and ".join(label for label, _ in tables)
            captions = _match_table(names, _merge_tables(tables), table_label)
            where = f"in {table_label}"
            if captions_text and captions_text.strip():
                notices.append(f"The caption text was ignored: {table_label} supplies the captions.")
        else:
            captions = parse_caption_lines(captions_text or "")
            where = "in the caption text"
            if len(captions) != len(items):
                raise InputError(
                    f"{_plural(len(items), 'image')} but {_plural(len(captions), 'caption')}: give one caption "
                    "per image, one per line, in upload order (blank lines are ignored)."
                )
        empty = [name for name, caption in zip(names, captions) if not caption]
        if empty:
            raise InputError(f"The caption for {_list_names(empty)} is empty {where}; write one.")

        pixel_budget = MAX_REQUEST_PIXELS if max_request_pixels is None else max_request_pixels
        _check_budgets(items, pixel_budget, memory)
        images = [load_image(item.read(), item.label, notices=notices) for item in items]
    return PairSet(images=images, captions=captions, names=names, notices=notices)


def load_pairs_folder(
    path: str | os.PathLike[str], max_pairs: int | None = None, *, max_request_pixels: int | None = None,
    memory: ByteBudget | None = None,
) -> PairSet:  # fmt: skip
    """Load a folder of images with a caption table (captions.csv or captions.json, or a single table).

    Used by the command line and for the bundled sample sets. Images are the folder's top-level image
    files, in name order; dotfiles are ignored. At most `max_pairs` (None: MAX_PAIRS) are accepted, of
    at most `max_request_pixels` (None: MAX_REQUEST_PIXELS) pixels in all, taking their decoded bytes
    from `memory` when given (`pairs_from_uploads`).

    Raises:
        InputError: The folder is missing, holds no images, has no (or several) caption tables, or any
            of the problems `pairs_from_uploads` reports.
    """
    images, table = folder_contents(path)
    return pairs_from_uploads(
        images, caption_table_path=table, max_pairs=max_pairs, max_request_pixels=max_request_pixels, memory=memory
    )


def folder_contents(path: str | os.PathLike[str]) -> tuple[list[str], str]:
    """A pairs folder's image files (top level, in name order, dotfiles ignored) and its one caption table.

    Raises:
        InputError: The folder is missing, holds no images, or has no (or several) caption tables.
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise InputError(f"{folder} is not a folder.")
    entries = sorted(
        (e for e in os.listdir(folder) if not e.startswith(".") and os.path.isfile(os.path.join(folder, e))),
        key=_natural_key,
    )
    images = [os.path.join(folder, e) for e in entries if _extension(e) in IMAGE_EXTENSIONS]
    tables = [e for e in entries if _extension(e) in TABLE_EXTENSIONS]
    preferred = [e for e in tables if e.lower() in PREFERRED_TABLE_NAMES]
    if not images:
        raise InputError(f"{folder} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    if len(preferred) > 1 or (not preferred and len(tables) != 1):
        raise InputError(
            f"{folder} needs exactly one caption table, named captions.csv or captions.json "
            f"(found {_list_names(preferred or tables) if tables else 'none'})."
        )
    return images, os.path.join(folder, (preferred or tables)[0])
