"""A pair set's embeddings on disk, in shards: written in bounded memory, resumable, split over torchrun ranks,
and read back without the model.

A million pairs fit in no request, and their images in no memory. `embed_to_folder` streams a source
(`vlviz.data.formats.stream_pairs`: images stay encoded until their batch), cuts it by position into
shards of `shard_size` pairs and writes each shard once; `load_embeddings` reads the folder back for
the report, whole or as a seeded uniform sample, so a 1M-pair set is analysed from its shards.

A folder holds:
    index.json              what must agree between runs (model spec and a fingerprint of its weights,
                            source, shard size, file format, dtype, patches, thumbnails), the model's dim, logit_scale
                            and logit_bias, and the shards with their first pair, count and complete flag
    embeddings-00000.npz    pairs [0, shard_size) of the source (or .parquet); the next shard the next ones
    embeddings-00000.npz.skipped.json   beside a shard whose images did not all decode: the pairs left
                            out (position, name, reason); the index counts them and lists the first few
    dataset.json ...        once the folder is complete, what `vlviz.embedding.dataset` builds from it: pair
                            columns, search index, layout

Each shard holds `index` (each pair's position in the source), `names` (image file names, never paths),
`captions`, L2-normalised `image_features` and `text_features` (n, D), `weights` (the model's fingerprint,
as in the index: a shard copied from another model's folder is told apart), with thumbnails each image as a
small JPEG (`thumbnails`, the n JPEGs end to end as uint8, and `thumbnail_offsets`, (n + 1,): image i is
bytes [offsets[i], offsets[i + 1]); a binary column in parquet) and, with patches, `patch_features`
(n, P, D), `token_features` (n, T, D) (projected, not normalised, as `vlviz.models.encoding.PairEncoding`'s)
and `token_ids` (n, T). A source whose rows carry numeric fields (`vlviz.data.formats.numeric_fields`: a
sample's .json, a parquet's number columns, ...) adds `source_fields` (n, F) float32, NaN where a pair's row
lacks one, and `source_field_names`, their names as a JSON list (0-d: parquet keeps it in its metadata).

An image that does not decode (corrupt, truncated, too many pixels) is left out with its reason, not
the end of the run: a million-pair crawl always holds a few.

Resumable: a shard is written to a temporary file and renamed, so a shard file that exists is whole, and
a rerun skips it without decoding its images. Under torchrun rank r of W writes shards r, r + W, ... (as
the trainer splits its data): every rank reads the source, decoding only its own shards' images. The
ranks meet twice (`torch.distributed.barrier`): once rank 0 has checked or started the index, and when
all shards are written, after which rank 0 writes the final index from the files on disk.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from vlviz.data.formats import MAX_SOURCE_FIELDS, PairStream, RawPair
from vlviz.data.inputs import InputError, load_image
from vlviz.models.encoding import VLModel, global_embeddings, image_embeddings, text_embeddings
from vlviz.models.towers import joint_dim

INDEX_FILE = "index.json"
FORMAT_NAME = "vlviz-embeddings"
FORMAT_VERSION = 1
FILE_FORMATS = ("npz", "parquet")
DTYPES = ("float16", "float32")
DEFAULT_SHARD_SIZE = 10_000  # pairs per shard: 5 MB of fp16 global features at D = 128, 20 MB at D = 512
DEFAULT_BATCH = 256  # pairs decoded and encoded at once
GLOBAL_KEYS = ("index", "names", "captions", "image_features", "text_features")
PATCH_KEYS = ("patch_features", "token_features", "token_ids")
THUMBNAIL_KEYS = ("thumbnails", "thumbnail_offsets")
DEFAULT_THUMBNAIL_SIDE = 64  # px of a thumbnail's longer side: a JPEG of about 2 KB, 2 GB for a million pairs
MAX_THUMBNAIL_SIDE = 128  # thumbnails are for a map's hover and a result list, never for analysis
THUMBNAIL_QUALITY = 80  # JPEG quality
PARQUET_ROW_GROUP = 1024  # rows a parquet shard's row group holds: thumbnails are read one group at a time
MAX_LISTED_SKIPS = 100  # pairs left out that the index names (all are counted)
SKIPPED_SUFFIX = ".skipped.json"
_SETTINGS = {"source": "--data", "shard_size": "--shard-size", "file_format": "--format", "dtype": "--dtype",
             "patches": "--patches", "thumbnails": "--thumbnails"}  # fmt: skip
"""Header fields a rerun must repeat, with the command-line option that sets each."""
_OLDER_INDEX_DEFAULTS = {"thumbnails": 0}
"""What an index written before a header field existed means by its absence."""


@dataclass(frozen=True)
class EmbedSettings:
    """How a folder is written; all but `batch_size` are recorded in its index and must match on a rerun."""

    shard_size: int = DEFAULT_SHARD_SIZE  # pairs per shard file; the source is cut by position
    file_format: str = "npz"  # "npz" (numpy, no pickle) or "parquet" (fixed-size list columns)
    dtype: str = "float16"  # of the stored features: float16 halves the files, cosines keep ~3 decimals
    patches: bool = False  # also store projected patch and token features (large: P x D and T x D a pair)
    batch_size: int = DEFAULT_BATCH  # pairs decoded and encoded at once: the memory bound of the images
    thumbnails: int = DEFAULT_THUMBNAIL_SIDE  # longer side in px of each image's stored JPEG thumbnail; 0: none

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.batch_size < 1:
            raise ValueError(
                f"Shard size and batch size must be positive, got {self.shard_size} and {self.batch_size}."
            )
        if not 0 <= self.thumbnails <= MAX_THUMBNAIL_SIDE:
            raise ValueError(f"Thumbnail side must be 0 (none) to {MAX_THUMBNAIL_SIDE} px, got {self.thumbnails}.")
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"Unknown format {self.file_format!r}; choose one of {', '.join(FILE_FORMATS)}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}.")


@dataclass(frozen=True)
class EmbedSummary:
    """What one rank's run did: the source's pairs and shards, and how many shards it wrote or found done."""

    pairs: int
    shards: int
    written: int  # shards this rank encoded and wrote
    skipped: int  # shards of this rank already complete on disk (a resumed run)
    left_out: list[dict[str, Any]]  # on rank 0, the first pairs of the folder whose image did not decode, with why
    left_out_count: int  # on rank 0, how many there are in all (0 on other ranks)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, values as float32): tells two checkpoints of one
    spec apart. The precision a model runs in is recorded beside it, so the two differences get their own message."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        values = tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
        digest.update(values.reshape(-1).cpu().numpy().tobytes())
    return digest.hexdigest()


def shard_name(number: int, file_format: str) -> str:
    return f"embeddings-{number:05d}.{file_format}"


def is_embeddings_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder `embed_to_folder` wrote (it holds a vlviz-embeddings index.json)."""
    index = Path(path) / INDEX_FILE
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def shard_held(shard: dict[str, Any]) -> int:
    """The pairs an index.json shard record holds: its count less those left out (a record written before pairs
    could be left out lists no `held`: it holds them all)."""
    return int(shard.get("held", shard["count"]))


def read_index(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The index.json of an embedding folder.

    Raises:
        InputError: The folder has no index, or it is not a vlviz embeddings index.
    """
    path = Path(folder) / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{Path(folder).name} holds no {INDEX_FILE}: write it with `python -m vlviz embed`.") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{Path(folder).name}/{INDEX_FILE} could not be read ({exc}).") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise InputError(f"{Path(folder).name}/{INDEX_FILE} is not an index of vlviz embeddings.")
    if index.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{Path(folder).name} was written by another vlviz (format version {index.get('version')}, this one "
            f"reads {FORMAT_VERSION}); embed it again."
        )
    return index


def _write_index(folder: Path, index: dict[str, Any]) -> None:
    """Write index.json atomically: a reader (another rank, a report) sees the old one or the new one whole."""
    temporary = folder / f".{INDEX_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(index, indent=1), encoding="utf-8")
    os.replace(temporary, folder / INDEX_FILE)


def _header(model: VLModel, source: str, settings: EmbedSettings, source_options: dict[str, Any]) -> dict[str, Any]:
    """The index fields a run fixes before it reads the source."""
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "model": model.spec,
        "weights": model_fingerprint(model.model), "precision": str(model.dtype).removeprefix("torch."),
        "source": os.path.abspath(source), "source_options": source_options, "shard_size": settings.shard_size,
        "file_format": settings.file_format, "dtype": settings.dtype, "patches": settings.patches,
        "thumbnails": settings.thumbnails,
        "dim": joint_dim(model.model), "logit_scale": model.logit_scale, "logit_bias": model.logit_bias,
        "grid_size": list(model.grid_size) if settings.patches else None,
        "context_length": model.context_length,
    }  # fmt: skip


def _check_compatible(folder: Path, index: dict[str, Any], header: dict[str, Any]) -> None:
    """Refuse to add embeddings to a folder that holds another model's, or was written with other settings."""
    if index["model"] != header["model"]:
        raise InputError(
            f"{folder.name} holds embeddings of {index['model']}, not {header['model']}: one folder holds one "
            "model's embeddings. Write to another --out folder, or delete this one first."
        )
    if index["precision"] != header["precision"]:
        raise InputError(
            f"{folder.name} holds embeddings computed in {index['precision']} (this run: {header['precision']}, "
            "on another kind of device); resume it on the device it was started on (--device), or write to another "
            "--out folder."
        )
    if index["weights"] != header["weights"]:
        raise InputError(
            f"{folder.name} holds embeddings of {index['model']} with other weights (the checkpoint changed since "
            "they were written). Write to another --out folder, or delete this one first."
        )
    for key, option in _SETTINGS.items():
        written = index.get(key, _OLDER_INDEX_DEFAULTS.get(key))
        if written != header[key]:
            raise InputError(
                f"{folder.name} was written with {option} {written} (this run: {header[key]}); rerun with the "
                "same setting to resume it, or write to another --out folder."
            )


def _open_folder(folder: Path, header: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """The folder's index, checked against this run by every rank (so all refuse alike); rank 0 starts a new one."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / INDEX_FILE).exists():
        index = read_index(folder)
        _check_compatible(folder, index, header)
        return index
    if rank != 0:
        return None
    if any(folder.glob("embeddings-*")):
        raise InputError(f"{folder.name} holds embedding shards but no {INDEX_FILE}; write to another --out folder.")
    index = {**header, "pairs": None, "complete": False, "shards": []}
    _write_index(folder, index)
    return index


def _barrier(world_size: int) -> None:
    """Wait for every rank (torchrun); nothing in one process."""
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def _done(folder: Path, index: dict[str, Any]) -> bool:
    return index["complete"] and all((folder / s["file"]).is_file() for s in index["shards"])


# ------------------------------------------------------------------------------------------- writing


def _decode(model: VLModel, pair: RawPair, thumbnail_side: int) -> tuple[torch.Tensor, bytes] | str:
    """The pair's preprocessed pixels and thumbnail, or why its image cannot be read (the pair is then left out)."""
    try:
        image = load_image(pair.image, pair.label)
    except InputError as error:
        return str(error)
    return model.preprocess(image), thumbnail_jpeg(image, thumbnail_side)


def thumbnail_jpeg(image: Image.Image, side: int) -> bytes:
    """`image` shrunk to fit `side` x `side` (aspect kept) as JPEG bytes; empty for side 0."""
    if side == 0:
        return b""
    small = image.copy()
    small.thumbnail((side, side))
    encoded = io.BytesIO()
    small.convert("RGB").save(encoded, format="JPEG", quality=THUMBNAIL_QUALITY)
    return encoded.getvalue()


def _encode_batch(model: VLModel, pairs: list[RawPair], pixels: torch.Tensor, patches: bool) -> dict[str, torch.Tensor]:
    """Encode one decoded batch: global features (B, D), and patch (B, P, D) / token (B, T, D) ones with ids."""
    ids = model.tokenizer([pair.caption for pair in pairs])  # (B, T)
    pixels, on_device = pixels.to(model.device, model.dtype), ids.to(model.device)
    with torch.inference_mode():
        if not patches:  # plain open_clip: no intermediates to keep
            image, text = global_embeddings(model.model, pixels, on_device)
            return {"image_features": image, "text_features": text}
        image, patch = image_embeddings(model.model, pixels)
        text, tokens = text_embeddings(model.model, on_device)
    return {"image_features": image, "text_features": text, "patch_features": patch, "token_features": tokens,
            "token_ids": ids.to(torch.int32)}  # fmt: skip


def _encode_shard(
    model: VLModel,
    pairs: Iterator[tuple[int, RawPair]],
    settings: EmbedSettings,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Every array of one shard, batch by batch (only `batch_size` decoded images are held at a time), and
    the pairs left out because their image does not decode: position, name and reason."""
    parts: dict[str, list[np.ndarray]] = {}
    index: list[int] = []
    names: list[str] = []
    captions: list[str] = []
    thumbnails: list[bytes] = []
    locations: list[tuple[int, int, int, int] | None] = []
    fields: list[tuple[tuple[str, float], ...]] = []
    left_out: list[dict[str, Any]] = []
    dtype = np.dtype(settings.dtype)
    while batch := list(itertools.islice(pairs, settings.batch_size)):
        decoded = [(position, pair, _decode(model, pair, settings.thumbnails)) for position, pair in batch]
        left_out += [{"position": p, "name": pair.name, "reason": x} for p, pair, x in decoded if isinstance(x, str)]
        kept = [(p, pair, x) for p, pair, x in decoded if not isinstance(x, str)]
        if kept:
            positions, raw, images = zip(*kept)
            pixels, small = zip(*images)
            index += positions
            names += [pair.name for pair in raw]
            captions += [pair.caption for pair in raw]
            thumbnails += small
            locations += [pair.location for pair in raw]
            fields += [pair.fields for pair in raw]
            for key, value in _encode_batch(model, list(raw), torch.stack(pixels), settings.patches).items():
                array = value.cpu().numpy() if value.dtype == torch.int32 else value.float().cpu().numpy().astype(dtype)
                parts.setdefault(key, []).append(array)
        if progress:
            progress(len(batch))
    if not parts:  # no image of the shard decodes: an empty shard, so the folder still completes
        parts = {key: [array] for key, array in _empty_features(model, settings).items()}
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    if settings.thumbnails:
        arrays["thumbnails"] = np.frombuffer(b"".join(thumbnails), dtype=np.uint8)
        arrays["thumbnail_offsets"] = np.concatenate([[0], np.cumsum([len(t) for t in thumbnails])]).astype(np.int64)
    if locations and None not in locations:  # images in uncompressed tars: a selection reads them in place
        arrays["image_locations"] = np.asarray(locations, dtype=np.int64)
    arrays |= _source_field_arrays(fields)
    return {"index": np.asarray(index, dtype=np.int64), "names": np.asarray(names, dtype=str),
            "captions": np.asarray(captions, dtype=str), **arrays}, left_out  # fmt: skip


def _source_field_arrays(fields: list[tuple[tuple[str, float], ...]]) -> dict[str, np.ndarray]:
    """The shard's `source_fields` (n, F) and `source_field_names`: the first MAX_SOURCE_FIELDS field names its
    pairs' rows carry, NaN where a row lacks one; nothing when no row carries any."""
    names = list(dict.fromkeys(name for row in fields for name, _ in row))[:MAX_SOURCE_FIELDS]
    if not names:
        return {}
    column = {name: number for number, name in enumerate(names)}
    values = np.full((len(fields), len(names)), np.nan, dtype=np.float32)
    for row, pair_fields in enumerate(fields):
        for name, value in pair_fields:
            if name in column:
                values[row, column[name]] = value
    return {"source_fields": values, "source_field_names": np.asarray(json.dumps(names))}


def read_source_fields(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray] | None:
    """A shard's source fields: their names and (n, F) float32 values; None when its source rows carried none.

    Raises:
        InputError: The file is not a readable shard, or its field names are not a list of at most
            MAX_SOURCE_FIELDS names.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "source_field_names" not in data.files:
                    return None
                listed = str(data["source_field_names"])
                values = data["source_fields"]
        else:
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata or {}
            if b"source_field_names" not in metadata:
                return None
            listed = metadata[b"source_field_names"].decode()
            values = _read_parquet(path, ("source_fields",))["source_fields"]
        names = json.loads(listed)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path.name} is not a readable embedding shard ({exc}); embed it again.") from exc
    valid = isinstance(names, list) and len(names) <= MAX_SOURCE_FIELDS and all(isinstance(n, str) for n in names)
    if not valid or values.shape[1:] != (len(names),):
        raise InputError(f"{path.name} lists its source fields wrongly; embed it again.")
    return names, np.asarray(values, dtype=np.float32)


def _empty_features(model: VLModel, settings: EmbedSettings) -> dict[str, np.ndarray]:
    """The feature arrays of a shard with no pair, shaped as a full one's."""
    dim, dtype = joint_dim(model.model), np.dtype(settings.dtype)
    arrays = {"image_features": np.zeros((0, dim), dtype), "text_features": np.zeros((0, dim), dtype)}
    if settings.patches:
        patches, length = int(np.prod(model.grid_size)), model.context_length
        arrays |= {"patch_features": np.zeros((0, patches, dim), dtype), "token_features": np.zeros((0, length, dim), dtype),
                   "token_ids": np.zeros((0, length), np.int32)}  # fmt: skip
    return arrays


def _write_shard(path: Path, arrays: dict[str, np.ndarray], file_format: str) -> None:
    """Write one shard atomically (a temporary file renamed), so a shard file that exists is whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if file_format == "npz":
        with temporary.open("wb") as file:
            np.savez(file, **arrays)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {
            key: pa.array(value.tolist()) if value.dtype.kind == "U" else pa.array(value)
            for key, value in arrays.items()
            if value.ndim == 1 and key not in THUMBNAIL_KEYS
        }
        if "thumbnails" in arrays:  # one JPEG a row: a binary column over the same bytes and offsets
            offsets = pa.py_buffer(arrays["thumbnail_offsets"])
            columns["thumbnails"] = pa.Array.from_buffers(
                pa.large_binary(), len(arrays["index"]), [None, offsets, pa.py_buffer(arrays["thumbnails"])]
            )
        for key, value in arrays.items():
            if value.ndim > 1:  # (n, ...) -> a fixed-size list of its flattened rows
                columns[key] = pa.FixedSizeListArray.from_arrays(
                    pa.array(value.reshape(-1)), int(np.prod(value.shape[1:]))
                )
        table = pa.table(columns).replace_schema_metadata(
            {key: str(value) for key, value in arrays.items() if value.ndim == 0}  # the weights fingerprint
        )
        pq.write_table(table, temporary, row_group_size=PARQUET_ROW_GROUP)
    os.replace(temporary, path)


def _shard_count(path: Path) -> int:
    """How many pairs a shard file holds, read from its index alone."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return int(data["index"].shape[0])
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _write_skipped(path: Path, skipped: list[dict[str, Any]]) -> None:
    """The pairs a shard left out, beside it (atomically); no file when none was."""
    listed = path.with_name(path.name + SKIPPED_SUFFIX)
    if skipped:
        temporary = listed.with_name(f".{listed.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(skipped), encoding="utf-8")
        os.replace(temporary, listed)
    else:
        listed.unlink(missing_ok=True)


def _read_skipped(path: Path) -> list[dict[str, Any]]:
    listed = path.with_name(path.name + SKIPPED_SUFFIX)
    return json.loads(listed.read_text(encoding="utf-8")) if listed.is_file() else []


def _final_index(folder: Path, header: dict[str, Any], total: int) -> dict[str, Any]:
    """The index of a folder whose source holds `total` pairs, from the shard files on disk.

    `pairs` is the source's pairs, `held` those stored (the others' images did not decode): `skipped`
    counts them and `skipped_pairs` names the first `MAX_LISTED_SKIPS`.
    """
    size, shards, skipped = header["shard_size"], [], []
    for number in range(-(-total // size)):
        first, count = number * size, min(size, total - number * size)
        path = folder / shard_name(number, header["file_format"])
        complete, held, left_out = path.is_file(), 0, []
        if complete:
            held, left_out = _shard_count(path), _read_skipped(path)
            if held + len(left_out) != count:
                raise InputError(
                    f"{path.name} holds {held + len(left_out)} pairs where the source now has {count}: the source "
                    "changed since it was written. Embed it into a new --out folder."
                )
        skipped += left_out
        shards.append({"file": path.name, "first": first, "count": count, "held": held, "complete": complete})
    return {**header, "pairs": total, "held": sum(s["held"] for s in shards), "skipped": len(skipped),
            "skipped_pairs": skipped[:MAX_LISTED_SKIPS], "complete": all(s["complete"] for s in shards),
            "shards": shards}  # fmt: skip


def embed_to_folder(
    model: VLModel,
    stream: PairStream,
    out: str | os.PathLike[str],
    settings: EmbedSettings = EmbedSettings(),
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] | None = None,
    source_options: dict[str, Any] | None = None,
) -> EmbedSummary:
    """Embed every pair of `stream` into shards under `out`; this rank writes shards rank, rank + world_size, ...

    Shards already on disk are skipped without decoding their images; a folder holding another model's
    embeddings, or written with other settings, is refused. With torch.distributed initialised (torchrun)
    the ranks wait for rank 0 to check or start the index, and for each other at the end, when rank 0
    writes the final index from the files on disk. `progress(n)` hears of every n pairs read.
    The index records the source as an absolute path: a rerun must read the same one. `source_options` (the
    keyword arguments `stream_pairs` was given) are recorded too, so a reader can find a pair's image again.

    Raises:
        InputError: The folder holds other embeddings, the source is empty or bad, or changed since a
            previous run; `--patches` with a tower that has none.
    """
    folder = Path(out)
    if settings.patches and model.patches_unavailable:
        raise InputError(f"--patches: {model.spec} has no patch embeddings ({model.patches_unavailable}).")
    header = _header(model, stream.source, settings, source_options or {})
    index = _open_folder(folder, header, rank)
    _barrier(world_size)  # rank 0 has started the index of a new folder
    index = index or read_index(folder)
    if _done(folder, index):
        shards = len(index["shards"])
        done = len(range(rank, shards, world_size))
        return EmbedSummary(index["pairs"], shards, 0, done, index.get("skipped_pairs", []), index.get("skipped", 0))
    total = written = skipped = 0
    for number, group in itertools.groupby(enumerate(stream.pairs), key=lambda item: item[0] // settings.shard_size):
        path = folder / shard_name(number, settings.file_format)
        if number % world_size == rank and not path.is_file():
            arrays, left_out = _encode_shard(model, group, settings, progress)
            _write_skipped(path, left_out)  # before the shard: a shard file that exists has its list beside it
            _write_shard(path, arrays | {"weights": np.asarray(header["weights"])}, settings.file_format)
            total, written = total + len(arrays["index"]) + len(left_out), written + 1
        else:  # another rank's pairs, or a shard an earlier run wrote: read past, never decoded
            count = sum(1 for _ in group)
            total, skipped = total + count, skipped + (number % world_size == rank)
            if progress:
                progress(count)
    if total == 0:
        raise InputError(f"{stream.source} holds no image-caption pairs.")
    _barrier(world_size)  # every rank's shards are on disk
    final = _final_index(folder, header, total) if rank == 0 else {}
    if rank == 0:
        _write_index(folder, final)
    left_out = final.get("skipped_pairs", [])
    return EmbedSummary(total, -(-total // settings.shard_size), written, skipped, left_out, final.get("skipped", 0))


# ------------------------------------------------------------------------------------------- reading


def read_shard(path: str | os.PathLike[str], patches: bool = False) -> dict[str, np.ndarray]:
    """One shard's arrays: GLOBAL_KEYS, and PATCH_KEYS with `patches` (names and captions are arrays of str).

    Raises:
        InputError: The file is not a readable shard, or has no patch features when they are asked for.
    """
    path = Path(path)
    keys = GLOBAL_KEYS + (PATCH_KEYS if patches else ())
    try:
        return _read_npz(path, keys) if path.suffix == ".npz" else _read_parquet(path, keys)
    except KeyError as exc:
        raise InputError(f"{path.name} has no {exc.args[0]}: embed with --patches to store them.") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path.name} is not a readable embedding shard ({exc}); embed it again.") from exc


def read_shard_arrays(path: str | os.PathLike[str], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Some arrays of a shard, memory-mapped from an npz (only the rows used are read), read from a parquet.

    Raises:
        InputError: The file is not a readable shard, or lacks one of `keys`.
    """
    path = Path(path)
    try:
        if path.suffix != ".npz":
            return _read_parquet(path, keys)
        arrays = {key: map_npz_array(path, key) for key in keys}
    except KeyError as exc:
        raise InputError(f"{path.name} has no {exc.args[0]}; embed it again.") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path.name} is not a readable embedding shard ({exc}); embed it again.") from exc
    missing = [key for key, array in arrays.items() if array is None]
    if missing:
        raise InputError(f"{path.name} has no {missing[0]}; embed it again.")
    return arrays  # type: ignore[return-value]


def read_thumbnails(path: str | os.PathLike[str], rows: np.ndarray) -> list[bytes] | None:
    """The JPEG thumbnails of some rows of a shard (any order, repeats allowed), reading only those: memory-mapped
    from an npz, the row groups holding them from a parquet (PARQUET_ROW_GROUP rows each; a shard written before
    is one group); None when the shard was written without thumbnails.

    Raises:
        InputError: The file is not a readable shard.
    """
    path, rows = Path(path), np.asarray(rows, dtype=np.int64)
    try:
        if path.suffix == ".npz":
            data, offsets = (map_npz_array(path, key) for key in THUMBNAIL_KEYS)
            if data is None or offsets is None:
                return None
            return [bytes(data[offsets[row] : offsets[row + 1]]) for row in rows.tolist()]
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if "thumbnails" not in parquet.schema_arrow.names:
            return None
        sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        group_of = np.searchsorted(starts, rows, side="right") - 1
        found: list[bytes] = [b""] * len(rows)
        for group in np.unique(group_of).tolist():
            at = np.flatnonzero(group_of == group)
            column = parquet.read_row_group(group, columns=["thumbnails"]).column("thumbnails")
            for index, jpeg in zip(at.tolist(), column.take(rows[at] - starts[group]).to_pylist()):
                found[index] = jpeg
        return found
    except (OSError, ValueError, IndexError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path.name} is not a readable embedding shard ({exc}); embed it again.") from exc


def map_npz_array(path: str | os.PathLike[str], key: str) -> np.ndarray | None:
    """Array `key` of an npz shard, memory-mapped read-only (np.savez stores members uncompressed, so each
    .npy member lies whole in the file); None when the shard has no such array.

    np.load reads an npz member whole; mapping it lets a reader touch the rows it needs only.

    Raises:
        ValueError: The member is compressed or its header is unreadable.
    """
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        try:
            member = archive.getinfo(f"{key}.npy")
        except KeyError:
            return None
        if member.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{key} is compressed")
        file.seek(member.header_offset)
        local = file.read(30)  # the local file header: its name and extra field lengths sit at bytes 26-29
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        file.seek(member.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(file)
        start = file.tell()
    if dtype.hasobject:
        raise ValueError(f"{key} holds Python objects")
    if 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C")


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:  # only the arrays asked for are read
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise KeyError(missing[0])
        return {key: data[key] for key in keys}


def _read_parquet(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns of a parquet shard; a fixed-size list column becomes (n, width), patch and token ones (n, P or T, D)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [key for key in keys if key not in pq.read_schema(path).names]
    if missing:
        raise KeyError(missing[0])
    table = pq.read_table(path, columns=list(keys))
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        column = table.column(key).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            arrays[key] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
        else:
            arrays[key] = column.to_numpy(zero_copy_only=False)
    for key in ("patch_features", "token_features"):
        if key in arrays:
            arrays[key] = arrays[key].reshape(len(arrays[key]), -1, arrays["image_features"].shape[1])
    return arrays


@dataclass(frozen=True)
class StoredEmbeddings:
    """Global embeddings read back from an embedding folder: all its N pairs, or a seeded sample of them."""

    image_features: torch.Tensor  # (S, D) float32, L2-normalised (to the stored dtype's precision)
    text_features: torch.Tensor  # (S, D)
    names: list[str]
    captions: list[str]
    positions: torch.Tensor  # (S,) long: each row's place in the source, ascending (pairs left out leave gaps)
    pairs: int  # N: all pairs of the folder
    seed: int  # of the sample (when S < N)
    model: str
    source: str
    logit_scale: float
    logit_bias: float | None
    gap: float  # ||mean image - mean caption|| over all N pairs
    matched_cosine: float  # mean cos(image i, caption i) over all N pairs

    @property
    def sampled(self) -> bool:
        return len(self.names) < self.pairs


def sample_positions(pairs: int, max_pairs: int, seed: int) -> np.ndarray:
    """The positions a sample keeps: the first `max_pairs` of `torch.randperm(pairs)` under `seed`, ascending.

    Uniform without replacement, and the same for the same folder size and seed.
    """
    order = torch.randperm(pairs, generator=torch.Generator().manual_seed(seed))[:max_pairs]
    return order.sort().values.numpy()


def load_embeddings(folder: str | os.PathLike[str], max_pairs: int | None = None, seed: int = 0) -> StoredEmbeddings:
    """The global embeddings of a finished folder: all N pairs, or when N > `max_pairs` a seeded uniform sample.

    N counts the pairs stored (a pair whose image did not decode was left out when it was written). No model is loaded. Shards are read one at a time, in order: memory is one shard plus the rows kept.
    The modality gap and the mean own-pair cosine cover all N pairs whatever the sample (float64 sums as
    the shards pass); the sample is `sample_positions(N, max_pairs, seed)`.

    Raises:
        InputError: The folder is not a finished embedding folder, or a shard is missing or unreadable.
    """
    folder = Path(folder)
    index = read_index(folder)
    shards = index["shards"]
    total = index.get("held", index["pairs"])  # folders written before pairs could be left out hold them all
    if not index["complete"] or not all((folder / shard["file"]).is_file() for shard in shards):
        written = len(list(folder.glob(f"embeddings-*.{index['file_format']}")))
        raise InputError(
            f"{folder.name} is not finished ({written} shard{'' if written == 1 else 's'} written so far). Run the "
            "same `python -m vlviz embed` command again to finish it: written shards are kept."
        )
    if total == 0:
        raise InputError(
            f"{folder.name} holds no pair: no image of its source could be read ({index['skipped']} left out)."
        )
    keep = sample_positions(total, max_pairs, seed) if max_pairs is not None and total > max_pairs else None
    image_sum, text_sum = np.zeros(index["dim"]), np.zeros(index["dim"])
    own = 0.0
    parts: list[dict[str, np.ndarray]] = []
    first = 0  # the first stored pair of this shard, counted over the folder's stored pairs
    for shard in shards:
        arrays = read_shard(folder / shard["file"])
        images, texts = arrays["image_features"].astype(np.float32), arrays["text_features"].astype(np.float32)
        held = shard_held(shard)
        if len(images) != held or images.shape[1] != index["dim"]:
            raise InputError(f"{shard['file']} does not hold the {held} pairs its index lists; embed again.")
        image_sum += images.sum(axis=0, dtype=np.float64)
        text_sum += texts.sum(axis=0, dtype=np.float64)
        own += float(np.einsum("nd,nd->", images, texts, dtype=np.float64))
        rows = np.arange(len(images)) if keep is None else keep[(keep >= first) & (keep < first + len(images))] - first
        first += len(images)
        parts.append({"images": images[rows], "texts": texts[rows], "positions": arrays["index"][rows],
                      "names": arrays["names"][rows], "captions": arrays["captions"][rows]})  # fmt: skip
    return StoredEmbeddings(
        image_features=torch.from_numpy(np.concatenate([part["images"] for part in parts])),
        text_features=torch.from_numpy(np.concatenate([part["texts"] for part in parts])),
        names=np.concatenate([part["names"] for part in parts]).tolist(),
        captions=np.concatenate([part["captions"] for part in parts]).tolist(),
        positions=torch.from_numpy(np.concatenate([part["positions"] for part in parts])),
        pairs=total, seed=seed, model=index["model"], source=index["source"], logit_scale=index["logit_scale"],
        logit_bias=index["logit_bias"], gap=float(np.linalg.norm((image_sum - text_sum) / total)),
        matched_cosine=own / total,
    )  # fmt: skip
