"""An embedding folder opened for exploring: its pairs' columns, their 2-D layout, search, thumbnails, and a
selection handed to Analyze.

`open_dataset(folder)` checks the folder (`vlviz.embedding.folder.open_folder`), builds what it lacks and
returns an `EmbeddedDataset`. Built once and kept beside the shards, listed in dataset.json with their size
and CRC-32 (a truncated or damaged file is refused with what to do) and the embeddings they were built from:

    columns.npz             own_cosine, caption_rank_share, inconsistency (`vlviz.embedding.pair_columns`)
                            and each pair's place in the source, (N,) each; the source's numeric fields
                            (`source_names`, `source_values` (F, N))
    search-images.faiss     the approximate nearest-neighbour index of each modality
    search-captions.faiss   (`vlviz.embedding.search_index`)
    layout.npz              the 2-D map of every image and caption (`vlviz.embedding.layout_store`)

`python -m vlviz embed` builds the columns and the search index when the folder is complete (and the layout with
--layout); opening builds anything missing, the layout (minutes at a million pairs) included unless
`layout=False`. The embeddings are not held: the index keeps its own compressed copy, and `features` reads
rows from the shards (memory-mapped for npz).
"""

from __future__ import annotations

import io
import json
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlviz.data.formats import read_located_images, stream_pairs
from vlviz.data.inputs import ByteBudget, InputError, PairSet, decoded_bytes_of, load_image
from vlviz.embedding import layout_store, pair_columns, search_index
from vlviz.embedding.clusters import MapClusters, cluster_labels, cluster_map
from vlviz.embedding.folder import FEATURE_KEYS, EmbeddingFolder, crc32, file_record, open_folder
from vlviz.embedding.store import model_fingerprint, read_thumbnails
from vlviz.models.encoding import VLModel

MANIFEST_FILE = "dataset.json"
MANIFEST_FORMAT = "vlviz-dataset"
MANIFEST_VERSION = 1
COLUMNS_FILE = "columns.npz"
COLUMNS = ("own_cosine", "caption_rank_share", "inconsistency")  # what each pair is coloured and compared by
SOURCE_COLUMN_PREFIX = "source: "  # a source field's colour column: "source: similarity"
BUILD_VERSIONS = {"columns": 3}  # a record built by an older version is built again (2: caption_rank_share,
# 3: the source's fields, added to a version-2 file's metrics)
SEARCH_FILES = {"image": "search-images.faiss", "caption": "search-captions.faiss"}
MODALITIES = tuple(FEATURE_KEYS)  # "image", "caption"
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes the opened dataset may hold; search lists beyond it are memory-mapped
MAX_SELECTION = 200  # pairs a selection hands to Analyze (their images are decoded from the source)

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): "columns", "search image", "search caption", "layout fit", "layout"."""


# ------------------------------------------------------------------------------------------ manifest


def _checked(folder: Path, record: dict[str, Any], what: str) -> Path:
    """The file of `record`, refused when it is missing, truncated or damaged."""
    path = folder / record["file"]
    rebuild = f"delete it and open the folder again to rebuild the {what}"
    if not path.is_file():
        raise InputError(
            f"{folder.name}/{record['file']} ({what}) is missing though {MANIFEST_FILE} lists it; open the folder "
            f"again (with prepare=True) to rebuild the {what}."
        )
    size = path.stat().st_size
    if size != record["bytes"]:
        raise InputError(
            f"{folder.name}/{record['file']} ({what}) is {size} bytes where {MANIFEST_FILE} lists {record['bytes']}: "
            f"it is truncated or was overwritten; {rebuild}."
        )
    if crc32(path) != record["crc32"]:
        raise InputError(f"{folder.name}/{record['file']} ({what}) is damaged (its CRC-32 differs); {rebuild}.")
    return path


def read_manifest(embeddings: EmbeddingFolder) -> dict[str, Any]:
    """The folder's dataset.json (an empty one when none is written yet), checked against its embeddings.

    Raises:
        InputError: The manifest is unreadable, or was built from other embeddings than the shards now hold.
    """
    path = embeddings.path / MANIFEST_FILE
    empty = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "embeddings": embeddings.key, "built": {}}
    if not path.exists():
        return empty
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        valid = manifest["format"] == MANIFEST_FORMAT and isinstance(manifest["built"], dict)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{embeddings.path.name}/{MANIFEST_FILE} is unreadable ({exc}); delete it and open the folder again to "
            "rebuild the columns, search index and layout."
        ) from exc
    if not valid or manifest.get("version") != MANIFEST_VERSION:
        raise InputError(
            f"{embeddings.path.name}/{MANIFEST_FILE} is not a vlviz dataset manifest of version {MANIFEST_VERSION}; "
            "delete it and open the folder again to rebuild what it lists."
        )
    if manifest["embeddings"] != embeddings.key:
        raise InputError(
            f"{embeddings.path.name}/{MANIFEST_FILE} lists files built from other embeddings than the shards now "
            "hold (the folder was embedded again since); delete it and open the folder again to rebuild them."
        )
    return manifest


def _write_manifest(embeddings: EmbeddingFolder, manifest: dict[str, Any]) -> None:
    path = embeddings.path / MANIFEST_FILE
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------ building


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    """A per-batch counter that reports `stage` to `progress` as (done, total), from (0, total) now."""
    if progress is None:
        return None
    done = [0]
    progress(stage, 0, total)

    def advance(count: int) -> None:
        done[0] += count
        progress(stage, done[0], total)

    return advance


def _kept_pair_metrics(embeddings: EmbeddingFolder, record: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    """The pair metrics of an intact version-2 columns file (its size and CRC-32 as listed): version 3 only added
    the source's fields, so a folder built before keeps its metrics (minutes to compute at a million pairs)."""
    path = embeddings.path / COLUMNS_FILE
    if (
        record is None
        or record.get("version") != 2
        or not path.is_file()
        or file_record(path) != {key: record.get(key) for key in ("file", "bytes", "crc32")}
    ):
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            kept = {name: stored[name] for name in (*COLUMNS, "reference")}
    except (OSError, ValueError, KeyError):
        return None
    return kept if all(len(kept[name]) == embeddings.pairs for name in COLUMNS) else None


def _build_columns(
    embeddings: EmbeddingFolder, progress: Progress | None, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """columns.npz: the pair metrics (kept from `previous`, the record of a version-2 file, when intact) and the
    source's fields."""
    columns = _kept_pair_metrics(embeddings, previous) or pair_columns.pair_columns(
        embeddings, _stage(progress, "columns", embeddings.pairs)
    )
    source = pair_columns.source_columns(embeddings)
    values = np.stack(list(source.values())) if source else np.zeros((0, embeddings.pairs), np.float32)
    path = embeddings.path / COLUMNS_FILE
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        np.savez(
            file, positions=embeddings.positions(), source_names=np.asarray(list(source), dtype=str),
            source_values=values, **columns,
        )  # fmt: skip
    os.replace(temporary, path)
    return {**file_record(path), "reference_pairs": len(columns["reference"]), "version": BUILD_VERSIONS["columns"]}


def _build_search(embeddings: EmbeddingFolder, progress: Progress | None) -> dict[str, Any]:
    lists = search_index.list_count(embeddings.pairs)
    record: dict[str, Any] = {"lists": lists, "code": search_index.SCALAR_CODE, "files": {}}
    for modality in MODALITIES:
        index = search_index.build_modality_index(
            embeddings, modality, lists, _stage(progress, f"search {modality}", embeddings.pairs)
        )
        probes, recall = search_index.tune_probes(embeddings, index, modality)
        path = embeddings.path / SEARCH_FILES[modality]
        search_index.write_index(index, path)
        record["files"][modality] = {**file_record(path), "probes": probes, "tuned_recall_at_10": round(recall, 4)}
    return record


def _files(record: dict[str, Any]) -> list[str]:
    """The files a dataset.json record lists: its own, or each modality's."""
    return [record["file"]] if "file" in record else [entry["file"] for entry in record["files"].values()]


def prepare_dataset(
    folder: str | os.PathLike[str] | EmbeddingFolder, layout: bool = True, progress: Progress | None = None
) -> list[str]:
    """Build what the folder lacks of its columns, search index and (with `layout`) layout; returns what was built.

    Each is written whole (a temporary file renamed) and then listed in dataset.json, so an interrupted run
    leaves the others usable and a rerun builds only what is missing, or what lost a file (the layout resumes
    shard by shard).

    Raises:
        InputError: The folder is not a finished embedding folder, or its dataset.json is unreadable or stale.
    """
    embeddings = folder if isinstance(folder, EmbeddingFolder) else open_folder(folder)
    manifest = read_manifest(embeddings)
    steps = {"columns": partial(_build_columns, previous=manifest["built"].get("columns")), "search": _build_search}
    if layout:
        steps["layout"] = layout_store.build_layout
    built = []
    for name, build in steps.items():
        record = manifest["built"].get(name)
        if (
            record is None
            or any(not (embeddings.path / file).is_file() for file in _files(record))
            or record.get("version", 1) < BUILD_VERSIONS.get(name, 1)
        ):  # never built, a file of it deleted (as a refusal to open says to do with a damaged one), or outdated
            manifest["built"][name] = build(embeddings, progress)
            _write_manifest(embeddings, manifest)
            built.append(name)
    return built


# ------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class DatasetLayout:
    """Every pair's image and caption as points of one 2-D map: 2N points, images first, then captions."""

    coordinates: np.ndarray  # (2N, 2) float32
    method: str  # how it was made, e.g. "umap on a sample, the rest placed by its neighbours"
    details: dict[str, Any]  # its settings and sample, from dataset.json

    @property
    def x(self) -> np.ndarray:
        return self.coordinates[:, 0]

    @property
    def y(self) -> np.ndarray:
        return self.coordinates[:, 1]

    @property
    def modality(self) -> np.ndarray:
        """(2N,) int8: 0 for an image, 1 for a caption."""
        return (np.arange(len(self.coordinates)) >= len(self.coordinates) // 2).astype(np.int8)

    @property
    def pair(self) -> np.ndarray:
        """(2N,) int64: the pair each point belongs to."""
        return np.arange(len(self.coordinates), dtype=np.int64) % (len(self.coordinates) // 2)


@dataclass
class EmbeddedDataset:
    """An opened embedding folder. Pairs are numbered 0..N-1 in folder order; `positions` gives their place
    in the source."""

    embeddings: EmbeddingFolder
    columns: dict[str, np.ndarray]  # name -> (N,) float32: what points can be coloured by (COLUMNS, then the
    # source's fields as SOURCE_COLUMN_PREFIX + name)
    positions: np.ndarray  # (N,) int64
    layout: DatasetLayout | None  # None when opened with layout=False before one was built
    memory_budget: int
    _indexes: dict[str, search_index.ModalityIndex]
    _checked_models: weakref.WeakSet[VLModel] = field(default_factory=weakref.WeakSet)

    def __len__(self) -> int:
        """N, the pairs the folder holds."""
        return self.embeddings.pairs

    @property
    def model_spec(self) -> str:
        """The spec of the model the folder was embedded with: text and image queries need it loaded."""
        return str(self.embeddings.index["model"])

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: columns, positions, layout and the search lists not memory-mapped."""
        held = sum(array.nbytes for array in self.columns.values()) + self.positions.nbytes
        held += 0 if self.layout is None else self.layout.coordinates.nbytes
        return held + sum(index.nbytes for index in self._indexes.values())

    @cached_property
    def clusters(self) -> MapClusters | None:
        """The map's clusters and their names (`vlviz.embedding.clusters`), made on first use (about 2 s at a
        million pairs); None without a map."""
        if self.layout is None:
            return None
        assignment = cluster_map(self.layout.coordinates)
        return MapClusters(assignment, cluster_labels(assignment, len(self), self.captions))

    def captions(self, pairs: Sequence[int] | np.ndarray) -> list[str]:
        return self.embeddings.rows(np.asarray(pairs), ("captions",))["captions"].tolist()

    def names(self, pairs: Sequence[int] | np.ndarray) -> list[str]:
        return self.embeddings.rows(np.asarray(pairs), ("names",))["names"].tolist()

    def features(self, pairs: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The stored embeddings of some pairs, "image" and "caption" -> (n, D) float32, within the memory budget.

        Raises:
            InputError: They would take more than the memory budget.
        """
        pairs = np.asarray(pairs, dtype=np.int64)
        needed = 2 * 4 * len(pairs) * self.embeddings.dim
        if needed > self.memory_budget:
            raise InputError(
                f"The features of {len(pairs)} pairs take {needed / 2**20:.0f} MB, more than the "
                f"{self.memory_budget / 2**20:.0f} MB budget; ask for fewer pairs at a time."
            )
        rows = self.embeddings.rows(pairs, tuple(FEATURE_KEYS.values()))
        return {modality: rows[key].astype(np.float32) for modality, key in FEATURE_KEYS.items()}

    def search(
        self,
        query: str | Image.Image | np.ndarray,
        k: int = 10,
        modality: str = "image",
        model: VLModel | None = None,
    ) -> search_index.SearchHits:
        """The k pairs whose image (or caption, `modality`) is nearest to the query, best first: (k,) pair numbers
        and cosines.

        A text or an image is encoded by `model`, which must be the folder's (`model_spec`, same weights); a
        vector (D,) is searched as it is (e.g. `features([i])["image"][0]`: the pairs nearest pair i's image).

        Raises:
            InputError: No model for a text or image query, or another model than the folder's.
            ValueError: An unknown modality or a vector of another width.
        """
        if modality not in MODALITIES:
            raise ValueError(f"Unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}.")
        vector = self._query_vector(query, model)
        hits = self._indexes[modality].search(vector[None], min(k, len(self)))
        found = hits.pairs[0] >= 0
        return search_index.SearchHits(hits.pairs[0][found], hits.scores[0][found])

    def _query_vector(self, query: str | Image.Image | np.ndarray, model: VLModel | None) -> np.ndarray:
        if isinstance(query, np.ndarray):
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.embeddings.dim:
                raise ValueError(
                    f"A query vector of this folder has {self.embeddings.dim} values, got {vector.shape[0]}."
                )
            return vector / max(float(np.linalg.norm(vector)), 1e-12)
        if model is None:
            raise InputError(
                f"A {'text' if isinstance(query, str) else 'image'} query is encoded by the folder's model: load "
                f"{self.model_spec} and pass it as model=."
            )
        self._check_model(model)
        encoded = model.encode_texts([query]) if isinstance(query, str) else model.encode_images([query])
        return encoded[0].float().cpu().numpy()

    def _check_model(self, model: VLModel) -> None:
        """Refuse a model other than the folder's (its spec and weights): its vectors would mean nothing here."""
        if model in self._checked_models:
            return
        index = self.embeddings.index
        if model_fingerprint(model.model) != index["weights"]:
            raise InputError(
                f"{model.name} is not the model {self.embeddings.path.name} was embedded with ({index['model']}, "
                "other weights): its queries would not match the stored embeddings. Load that model."
            )
        self._checked_models.add(model)

    def thumbnail(self, pair: int) -> Image.Image | None:
        """Pair `pair`'s stored thumbnail, or None when the folder was embedded without thumbnails."""
        (jpeg,) = self.thumbnail_jpegs([pair])
        return None if jpeg is None else Image.open(io.BytesIO(jpeg))

    def thumbnail_jpegs(self, pairs: Sequence[int]) -> list[bytes | None]:
        """Some pairs' stored thumbnails as the JPEG bytes `embed` wrote (None where it wrote none), read shard by
        shard: the map draws dozens at once when zoomed in."""
        pairs = np.asarray(pairs, dtype=np.int64)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= len(self)):
            raise IndexError(f"Pair numbers run from 0 to {len(self) - 1}.")
        shard_of = np.searchsorted(self.embeddings.starts, pairs, side="right") - 1
        found: list[bytes | None] = [None] * len(pairs)
        for shard in np.unique(shard_of).tolist():
            at = np.flatnonzero(shard_of == shard)
            stored = read_thumbnails(self.embeddings.shard_path(shard), pairs[at] - self.embeddings.starts[shard])
            for index, jpeg in zip(at.tolist(), stored or []):
                found[index] = jpeg
        return found

    def pairs(
        self, pairs: Sequence[int] | np.ndarray, max_pairs: int = MAX_SELECTION, memory: ByteBudget | None = None
    ) -> PairSet:
        """The selected pairs' images (decoded from the folder's source) and captions, for Analyze.

        Images in uncompressed tar shards are read where `embed` found them (`read_located_images`: one seek
        each, whatever the folder's size); other sources are read from their start to the last selected pair
        (a folder's or a table's images are opened only when selected; compressed shards and parquet are
        streamed through), decoding only the selected images, each taken from `memory` (its size read from its
        header) before it is decoded.

        Raises:
            InputError: More than `max_pairs` pairs, the source is gone or changed since it was embedded, a
                selected image no longer decodes, or the images do not fit `memory`.
        """
        chosen = np.unique(np.asarray(pairs, dtype=np.int64))
        if len(chosen) == 0 or len(chosen) > max_pairs:
            raise InputError(f"Select 1 to {max_pairs} pairs to analyse, not {len(chosen)}.")
        index = self.embeddings.index
        names, captions = self.names(chosen), self.captions(chosen)
        locations = self._image_locations(chosen)
        if locations is not None:
            try:
                encoded = read_located_images(index["source"], locations.tolist(), names)
            except InputError as error:
                raise InputError(f"The source of {self.embeddings.path.name} cannot be read: {error}") from error
            return PairSet([self._decoded(data, name, memory) for data, name in zip(encoded, names)], captions, names)
        wanted = dict(zip(self.positions[chosen].tolist(), chosen.tolist()))
        expected = {position: (names[i], captions[i]) for i, position in enumerate(self.positions[chosen].tolist())}
        found: dict[int, Image.Image] = {}
        try:
            stream = stream_pairs(index["source"], **index.get("source_options", {}))
            for position, raw in enumerate(stream.pairs):
                if position in wanted:
                    if (raw.name, raw.caption) != expected[position]:
                        raise InputError(
                            f"Pair {position} of {index['source']} is now {raw.name!r}, not {expected[position][0]!r}: "
                            "the source changed since it was embedded. Embed it again into a new folder."
                        )
                    found[position] = self._decoded(raw.image, raw.label, memory)
                    if len(found) == len(wanted):
                        break
        except InputError as error:
            raise InputError(f"The source of {self.embeddings.path.name} cannot be read: {error}") from error
        if len(found) < len(wanted):
            raise InputError(
                f"{index['source']} now ends before pair {max(set(wanted) - set(found))}: the source changed since "
                "it was embedded. Embed it again into a new folder."
            )
        order = sorted(wanted)
        return PairSet([found[p] for p in order], [expected[p][1] for p in order], [expected[p][0] for p in order])

    @staticmethod
    def _decoded(image: bytes | os.PathLike[str], label: str, memory: ByteBudget | None) -> Image.Image:
        if memory is not None:
            memory.take(decoded_bytes_of(image), "The selected images")
        return load_image(image, label)

    def _image_locations(self, chosen: np.ndarray) -> np.ndarray | None:
        """(n, 4) where each chosen pair's image lies in the source (`RawPair.location`), or None when a shard
        has no locations (another source format, compressed shards, or a folder embedded before they were kept)."""
        try:
            return self.embeddings.rows(chosen, ("image_locations",))["image_locations"]
        except InputError:
            return None


def open_dataset(
    folder: str | os.PathLike[str],
    prepare: bool = True,
    layout: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: Progress | None = None,
) -> EmbeddedDataset:
    """Open an embedding folder for exploring: check it, build what it lacks (`prepare`), read what was built.

    Args:
        folder: A folder `python -m vlviz embed` wrote.
        prepare: Build the columns, search index and (with `layout`) layout when missing; False refuses a
            folder that lacks the first two.
        layout: Build the layout when missing (minutes at a million pairs); False opens without one.
        memory_budget: Bytes the dataset may hold; search lists that do not fit are memory-mapped.
        progress: Hears of each build stage as (stage, done, total).

    Raises:
        InputError: What is wrong with the folder or a file built from it, and what to do.
    """
    embeddings = open_folder(folder)
    if prepare:
        prepare_dataset(embeddings, layout=layout, progress=progress)
    manifest = read_manifest(embeddings)
    built = manifest["built"]
    for name in ("columns", "search"):
        if name not in built:
            raise InputError(
                f"{embeddings.path.name} has no {name} yet: open it with prepare=True (or run `python -m vlviz embed` "
                "again) to build them."
            )
    columns_path = _checked(embeddings.path, built["columns"], "pair columns")
    try:
        with np.load(columns_path, allow_pickle=False) as stored:
            older = [name for name in COLUMNS if name not in stored.files]
            if older:
                raise InputError(
                    f"{embeddings.path.name}/{COLUMNS_FILE} was built by an older vlviz (it has no {older[0]}); open "
                    "the folder once with prepare=True (`python -m vlviz explore FOLDER` where it lies) to rebuild it."
                )
            columns = {name: stored[name] for name in COLUMNS}
            if "source_names" in stored.files:  # a version 2 file has none: opened as it is, without them
                fields = zip(stored["source_names"].tolist(), stored["source_values"])
                columns |= {SOURCE_COLUMN_PREFIX + name: values for name, values in fields}
            positions = stored["positions"]
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{COLUMNS_FILE} is unreadable ({exc}); delete it and open the folder again.") from exc
    if any(len(array) != embeddings.pairs for array in (*columns.values(), positions)):
        raise InputError(f"{COLUMNS_FILE} does not hold {embeddings.pairs} pairs; delete it and open the folder again.")
    room = memory_budget - sum(array.nbytes for array in columns.values()) - positions.nbytes
    indexes = {}
    for modality in MODALITIES:
        record = built["search"]["files"][modality]
        path = _checked(embeddings.path, record, f"{modality} search index")
        mapped = record["bytes"] > room
        try:
            index = search_index.read_index_file(path, mapped)
        except ValueError as exc:
            raise InputError(f"{path.name} is unreadable ({exc}); delete it and open the folder again.") from exc
        room -= 0 if mapped else record["bytes"]
        indexes[modality] = search_index.ModalityIndex(index, record["probes"], mapped)
    stored_layout = None
    if "layout" in built:
        path = _checked(embeddings.path, built["layout"], "layout")
        coordinates = layout_store.read_layout(path, embeddings.pairs)
        stored_layout = DatasetLayout(coordinates, built["layout"]["method"], built["layout"])
    return EmbeddedDataset(embeddings, columns, positions, stored_layout, memory_budget, indexes)
