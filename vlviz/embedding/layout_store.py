"""A 2-D map of every image and caption of an embedding folder, fitted once and kept beside the shards.

UMAP cannot take a million pairs on two cores, and umap-learn's own `transform` places about a thousand points a
second. So (docs/dataset.md has the measurements that chose this): UMAP (`vlviz.embedding.space.fit_layout`) is
fitted on the 2S images and captions of a seeded sample of S = SAMPLE_PAIRS pairs, and every other point is
placed at the softmax-weighted mean of the map positions of its NEIGHBOURS nearest sampled points (found in the
sample's top SEARCH_DIMS principal directions, weighted by their cosines in the full space at temperature
TEMPERATURE), a batch of points at a time: several points a millisecond, where umap-learn's `transform` places
one, and it keeps as much of each point's neighbourhood. A sampled pair keeps the
position UMAP gave it. A folder of at most S pairs is fitted whole.

Resumable as `embed` is: the fit is written first (layout-fit.npz: the sample and its map), then one part per
shard (layout-part-00000.npy ...), each a temporary file renamed; a rerun reuses both and places only the shards
that have no part. The parts are then joined into layout.npz and removed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlviz.data.inputs import InputError
from vlviz.embedding.folder import FEATURE_KEYS, EmbeddingFolder, file_record
from vlviz.embedding.space import LayoutSettings, fit_layout
from vlviz.embedding.store import sample_positions

LAYOUT_FILE = "layout.npz"
FIT_FILE = "layout-fit.npz"
PART_PREFIX = "layout-part-"
SAMPLE_PAIRS = 10_000  # pairs whose images and captions UMAP is fitted on
NEIGHBOURS = 15  # sampled points each other point is placed by
SEARCH_DIMS = 128  # principal directions of the sample its nearest points are searched in
TEMPERATURE = 0.01  # of the softmax over their cosines
PLACE_BATCH = 1024  # points placed at once: a (B, 2S) cosine matrix
SETTINGS = LayoutSettings("umap", 15, 0.1, seed=0)  # as dataset.json records them; the seed also draws the sample
PLACED = f"; every other point at the weighted mean of its {NEIGHBOURS} nearest sampled points"


def _save(path: Path, **arrays: np.ndarray) -> None:
    """np.savez to `path` atomically: a file that exists is whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        np.savez(file, **arrays)
    os.replace(temporary, path)


def _fit(folder: EmbeddingFolder) -> tuple[np.ndarray, np.ndarray, str]:
    """The sample's pair numbers (S,), the map of its images then captions (2S, 2) and how it was made,
    written once."""
    path = folder.path / FIT_FILE
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return stored["sample"], stored["coordinates"], str(stored["method"])
        except (OSError, ValueError, KeyError):
            path.unlink()  # an unreadable fit is only lost time: fit again
    sample = sample_positions(folder.pairs, SAMPLE_PAIRS, SETTINGS.seed)
    rows = folder.rows(sample, tuple(FEATURE_KEYS.values()))
    fitted = fit_layout(
        torch.from_numpy(rows["image_features"].astype(np.float32)),
        torch.from_numpy(rows["text_features"].astype(np.float32)),
        SETTINGS,
    )
    coordinates = fitted.coordinates.numpy().astype(np.float32)
    method = f"{fitted.method.upper()} of {'all' if len(sample) == folder.pairs else 'a seeded sample of'} "
    method += f"{len(sample):,} pairs" + (f" ({fitted.note})" if fitted.note else "")
    method += PLACED if len(sample) < folder.pairs else ""
    _save(path, sample=sample, coordinates=coordinates, method=np.asarray(method))
    return sample, coordinates, method


@dataclass(frozen=True)
class Anchors:
    """The sampled points with their map positions, ready to place others among them.

    The NEIGHBOURS nearest anchors of a point are found in the anchors' top SEARCH_DIMS principal directions
    (a quarter of the work at D = 512), then weighted by their cosines in the full space.
    """

    vectors: torch.Tensor  # (M, D) L2-normalised
    positions: torch.Tensor  # (M, 2) their map positions
    projection: torch.Tensor | None  # (D, SEARCH_DIMS), None when D <= SEARCH_DIMS
    projected: torch.Tensor  # (M, SEARCH_DIMS or D)

    @classmethod
    def of(cls, vectors: torch.Tensor, positions: torch.Tensor) -> Anchors:
        projection = None
        if vectors.shape[1] > SEARCH_DIMS:
            projection = torch.linalg.svd(vectors - vectors.mean(dim=0), full_matrices=False)[2][:SEARCH_DIMS].T
        return cls(vectors, positions, projection, vectors if projection is None else vectors @ projection)

    def place(self, points: torch.Tensor) -> torch.Tensor:
        """Map positions (B, 2) of L2-normalised points (B, D): the softmax(cos / TEMPERATURE)-weighted mean of
        the positions of their NEIGHBOURS nearest anchors."""
        searched = points if self.projection is None else points @ self.projection
        nearest = (searched @ self.projected.T).topk(min(NEIGHBOURS, len(self.vectors)), dim=1).indices  # (B, K)
        similarity = torch.einsum("bd,bkd->bk", points, self.vectors[nearest])
        weights = torch.softmax(similarity / TEMPERATURE, dim=1)
        return (weights[..., None] * self.positions[nearest]).sum(dim=1)


def _place_shard(folder: EmbeddingFolder, shard: int, sample: np.ndarray, anchors: Anchors) -> np.ndarray:
    """The map positions of one shard's images then captions, (2n, 2) float32."""
    arrays = folder.shard_arrays(shard, tuple(FEATURE_KEYS.values()))
    start, count = int(folder.starts[shard]), int(folder.starts[shard + 1] - folder.starts[shard])
    placed = []
    for key in FEATURE_KEYS.values():
        features = arrays[key]
        for offset in range(0, count, PLACE_BATCH):
            batch = torch.from_numpy(np.asarray(features[offset : offset + PLACE_BATCH], np.float32))
            placed.append(anchors.place(batch))
    coordinates = torch.cat(placed).numpy() if placed else np.zeros((0, 2), np.float32)
    # a sampled pair keeps its UMAP position
    members = np.flatnonzero((sample >= start) & (sample < start + count))
    coordinates[sample[members] - start] = anchors.positions[members].numpy()
    coordinates[count + sample[members] - start] = anchors.positions[len(sample) + members].numpy()
    return coordinates.astype(np.float32)


def build_layout(folder: EmbeddingFolder, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Fit (or reuse the fit), place every shard that has no part yet, join the parts into layout.npz; returns
    what dataset.json records of it: the file's name, size and CRC-32, and how the map was made."""
    if progress:
        progress("layout fit", 0, 1)
    sample, coordinates, method = _fit(folder)
    rows = folder.rows(sample, tuple(FEATURE_KEYS.values()))
    vectors = np.concatenate([rows["image_features"], rows["text_features"]]).astype(np.float32)
    anchors = Anchors.of(torch.from_numpy(vectors), torch.from_numpy(coordinates))
    shards = len(folder.starts) - 1
    parts = [folder.path / f"{PART_PREFIX}{shard:05d}.npy" for shard in range(shards)]
    for shard, part in enumerate(parts):
        if not part.is_file():
            placed = _place_shard(folder, shard, sample, anchors)
            temporary = part.with_name(f".{part.name}.{os.getpid()}.tmp")
            with temporary.open("wb") as file:
                np.save(file, placed)
            os.replace(temporary, part)
        if progress:
            progress("layout", int(folder.starts[shard + 1]), folder.pairs)
    loaded = [np.load(part, allow_pickle=False) for part in parts]
    images = np.concatenate([part[: len(part) // 2] for part in loaded])
    captions = np.concatenate([part[len(part) // 2 :] for part in loaded])
    path = folder.path / LAYOUT_FILE
    _save(path, coordinates=np.concatenate([images, captions]))
    for part in parts:
        part.unlink()
    (folder.path / FIT_FILE).unlink()
    umap = {"n_neighbors": SETTINGS.n_neighbors, "min_dist": SETTINGS.min_dist, "seed": SETTINGS.seed}
    return {**file_record(path), "method": method, "sample_pairs": len(sample), "neighbours": NEIGHBOURS,
            "temperature": TEMPERATURE, "umap": umap}  # fmt: skip


def read_layout(path: Path, pairs: int) -> np.ndarray:
    """The (2N, 2) float32 map in layout.npz.

    Raises:
        InputError: The file is unreadable or holds another number of points.
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            coordinates = stored["coordinates"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path.name} is unreadable ({exc}); delete it and open the folder again.") from exc
    if coordinates.shape != (2 * pairs, 2):
        raise InputError(
            f"{path.name} holds {coordinates.shape[0]} points where the folder has {2 * pairs} images and captions; "
            "delete it and open the folder again."
        )
    return coordinates
