"""Two embedding folders of the same pairs, linked pair by pair: two models (or checkpoints) side by side.

`python -m vlviz embed` the same source twice, with two models, and each pair of one folder has its twin in
the other (the same place in the source; a pair whose image one run could not decode is in one folder only).
What moved between the models is read pair by pair from the folders' columns: how far the pair's own caption
moved in image->caption retrieval (`caption_rank_share`, the share of other captions the image prefers to its
own, over each folder's reference sample: `vlviz.embedding.pair_columns`), and its own-pair cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlviz.data.inputs import InputError
from vlviz.embedding.dataset import EmbeddedDataset


@dataclass(frozen=True)
class LinkedPairs:
    """The pairs two folders share: `first[k]` in one folder is `second[k]` in the other, in source order."""

    first: np.ndarray  # (M,) int64 pair numbers in the first folder, ascending
    second: np.ndarray  # (M,) int64 pair numbers in the second folder, ascending (both follow the source)
    rank_shift: np.ndarray  # (M,) float32 second's caption_rank_share - first's: > 0, the second model ranks worse
    cosine_shift: np.ndarray  # (M,) float32 second's own-pair cosine - first's

    def __len__(self) -> int:
        return len(self.first)

    def in_second(self, pairs: np.ndarray) -> np.ndarray:
        """The second folder's pair numbers of first-folder pairs (-1 where a pair has no twin): linked hover."""
        return _twins(self.first, self.second, pairs)

    def in_first(self, pairs: np.ndarray) -> np.ndarray:
        """The first folder's pair numbers of second-folder pairs (-1 where a pair has no twin)."""
        return _twins(self.second, self.first, pairs)


def _twins(keys: np.ndarray, values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """values[k] where keys[k] == pair, -1 where no key is the pair (keys ascending, as folder order is)."""
    pairs = np.asarray(pairs, dtype=np.int64)
    if len(keys) == 0:
        return np.full(len(pairs), -1, np.int64)
    at = np.minimum(np.searchsorted(keys, pairs), len(keys) - 1)
    return np.where(keys[at] == pairs, values[at], -1)


LINK_PROBES = 64  # linked pairs whose names and captions are compared: the same pairs, not only the same places


def link_datasets(first: EmbeddedDataset, second: EmbeddedDataset) -> LinkedPairs:
    """Pair the two folders' pairs by their place in the source, and what moved for each.

    The source may have moved or been copied between the two runs: the pairs are the same when those at the same
    places have the same image names and captions (checked on `LINK_PROBES` pairs spread over the folders).

    Raises:
        InputError: The folders share no place, or hold other pairs at the same places (another source).
    """
    _, in_first, in_second = np.intersect1d(first.positions, second.positions, assume_unique=True, return_indices=True)
    names = f"{first.embeddings.path.name} and {second.embeddings.path.name}"
    if len(in_first) == 0:
        raise InputError(f"{names} share no pair.")
    in_first, in_second = in_first.astype(np.int64), in_second.astype(np.int64)
    probe = np.unique(np.linspace(0, len(in_first) - 1, min(len(in_first), LINK_PROBES)).round().astype(np.int64))
    one, two = in_first[probe], in_second[probe]
    if first.names(one) != second.names(two) or first.captions(one) != second.captions(two):
        raise InputError(
            f"{names} hold other pairs at the same places: they embed different sources. Link two folders that "
            "`python -m vlviz embed` wrote from the same --data with two models."
        )
    shift = {
        name: (second.columns[name][in_second] - first.columns[name][in_first]).astype(np.float32)
        for name in ("caption_rank_share", "own_cosine")
    }
    return LinkedPairs(in_first, in_second, shift["caption_rank_share"], shift["own_cosine"])
