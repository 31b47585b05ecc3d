"""A finished embedding folder, checked and read shard by shard: what the search index, the layout and the
pair columns are built from, and what `vlviz.embedding.dataset` opens.

Pairs are numbered 0..N-1 in folder order over the pairs the folder holds (a pair whose image did not decode
was left out by `embed` and has no number); `positions` maps a number to the pair's place in the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlviz.data.inputs import InputError
from vlviz.embedding.store import map_npz_array, read_index, read_shard_arrays, shard_held

FEATURE_KEYS = {"image": "image_features", "caption": "text_features"}
"""The shard array of each modality."""
ROW_BATCH = 65_536  # rows converted to float32 at once when a pass reads every pair
_CRC_CHUNK = 16 * 2**20


def crc32(path: Path) -> int:
    """The CRC-32 of a file, read in chunks."""
    crc = 0
    with path.open("rb") as file:
        while chunk := file.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def file_record(path: Path) -> dict[str, Any]:
    """What dataset.json keeps of a file built from the embeddings: its name, size and CRC-32 (a truncated or
    damaged file is told apart when the folder is opened)."""
    return {"file": path.name, "bytes": path.stat().st_size, "crc32": crc32(path)}


@dataclass(frozen=True)
class EmbeddingFolder:
    """A finished folder `embed` wrote, its shards checked against its index.json."""

    path: Path
    index: dict[str, Any]
    starts: np.ndarray  # (S + 1,) int64: shard s holds pairs [starts[s], starts[s + 1])

    @property
    def pairs(self) -> int:
        """N, the pairs the folder holds."""
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return int(self.index["dim"])

    @property
    def key(self) -> str:
        """What the files built from these embeddings must have been built from: model, weights and shards."""
        basis = [self.index["model"], self.index["weights"], self.index["dtype"]]
        basis += [[shard["file"], shard_held(shard)] for shard in self.index["shards"]]
        return hashlib.blake2b(json.dumps(basis).encode(), digest_size=16).hexdigest()

    def shard_path(self, shard: int) -> Path:
        return self.path / self.index["shards"][shard]["file"]

    def shard_arrays(self, shard: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Arrays of one shard (memory-mapped from npz)."""
        return read_shard_arrays(self.shard_path(shard), keys)

    def batches(self, modality: str, size: int = ROW_BATCH) -> Iterator[tuple[int, np.ndarray]]:
        """Every pair's features of one modality, in order, as (first pair, (B <= size, D) float32) batches."""
        key = FEATURE_KEYS[modality]
        for shard in range(len(self.starts) - 1):
            features = self.shard_arrays(shard, (key,))[key]
            for offset in range(0, len(features), size):
                yield int(self.starts[shard]) + offset, np.asarray(features[offset : offset + size], np.float32)

    def rows(self, pairs: np.ndarray, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Arrays `keys` at the given pair numbers (any order, repeats allowed), gathered shard by shard."""
        pairs = np.asarray(pairs, dtype=np.int64)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= self.pairs):
            raise IndexError(f"Pair numbers run from 0 to {self.pairs - 1}.")
        shard_of = np.searchsorted(self.starts, pairs, side="right") - 1
        found: dict[str, np.ndarray] = {}
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            arrays = self.shard_arrays(int(shard), keys)
            local = pairs[where] - self.starts[shard]
            for key, array in arrays.items():
                rows = np.asarray(array[local])  # a mapped array reads these rows only
                if key not in found:
                    found[key] = np.empty((len(pairs), *rows.shape[1:]), rows.dtype)
                found[key][where] = rows
        return found

    def positions(self) -> np.ndarray:
        """(N,) int64: each pair's place in the source."""
        return np.concatenate(
            [self.shard_arrays(s, ("index",))["index"] for s in range(len(self.starts) - 1)] or [np.zeros(0, np.int64)]
        )


def open_folder(path: str | os.PathLike[str]) -> EmbeddingFolder:
    """The folder at `path`, checked: a finished vlviz embeddings index whose every shard is on disk, readable,
    holds the pairs the index lists and the index's model's embeddings.

    Raises:
        InputError: What is wrong and what to do, naming the file.
    """
    folder = Path(path)
    index = read_index(folder)
    shards = index["shards"]
    if not index["complete"]:
        written = sum((folder / shard["file"]).is_file() for shard in shards)
        raise InputError(
            f"{folder.name} is not finished ({written} of {len(shards)} shards written). Run the same "
            "`python -m vlviz embed` command again to finish it: written shards are kept."
        )
    missing = [shard["file"] for shard in shards if not (folder / shard["file"]).is_file()]
    if missing:
        raise InputError(
            f"{folder.name} lacks {missing[0]}{f' and {len(missing) - 1} more shards' if len(missing) > 1 else ''}, "
            "which its index.json lists. Run the same `python -m vlviz embed` command again to rewrite them."
        )
    held = np.array([shard_held(shard) for shard in shards], dtype=np.int64)
    if held.sum() == 0:
        raise InputError(f"{folder.name} holds no pair: no image of its source could be read.")
    for shard, count in zip(shards, held.tolist()):
        _check_shard(folder, index, shard, count)
    return EmbeddingFolder(folder, index, np.concatenate([[0], np.cumsum(held)]))


def _check_shard(folder: Path, index: dict[str, Any], shard: dict[str, Any], held: int) -> None:
    """One shard against the index: readable, `held` rows of the index's width, written by the index's model."""
    path = folder / shard["file"]
    again = "delete it and run the same `python -m vlviz embed` command again to rewrite it"
    shapes, weights = _shard_facts(path)
    expected = {"index": (held,), **{key: (held, index["dim"]) for key in FEATURE_KEYS.values()}}
    if any(shapes.get(key) != shape for key, shape in expected.items()):
        raise InputError(
            f"{shard['file']} holds {shapes.get('image_features')} image features where index.json lists {held} "
            f"pairs of width {index['dim']} ({index['model']}): it is another folder's or another model's shard; "
            f"{again}."
        )
    if weights is not None and weights != index["weights"]:
        raise InputError(
            f"{shard['file']} holds embeddings of other weights than index.json's {index['model']} (it was written "
            f"into this folder by another model's run); {again}."
        )


def _shard_facts(path: Path) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """A shard's array shapes and the weights fingerprint it records (None: written before shards recorded
    it), from its headers alone."""
    try:
        if path.suffix == ".npz":
            arrays = {key: map_npz_array(path, key) for key in ("index", *FEATURE_KEYS.values(), "weights")}
            shapes = {key: array.shape for key, array in arrays.items() if array is not None}
            weights = arrays["weights"]
            return shapes, None if weights is None else str(np.asarray(weights))
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        rows, schema = file.metadata.num_rows, file.schema_arrow
        shapes = {"index": (rows,)} if "index" in schema.names else {}
        for key in FEATURE_KEYS.values():
            if key in schema.names and pa.types.is_fixed_size_list(schema.field(key).type):
                shapes[key] = (rows, schema.field(key).type.list_size)
        metadata = schema.metadata or {}
        return shapes, metadata[b"weights"].decode() if b"weights" in metadata else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path.name} is not a readable embedding shard ({exc}); embed it again.") from exc
