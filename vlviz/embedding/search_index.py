"""Approximate nearest-neighbour search over a folder's image and caption embeddings (faiss, inverted lists).

One faiss `IndexIVFScalarQuantizer` per modality: the vectors are split into L = 4 sqrt(N) lists around
k-means centroids trained on a seeded sample, each vector stored as SCALAR_CODE (one byte a dimension); a query
scans the P lists whose centroids are nearest. Chosen by measurement (docs/dataset.md): of faiss's
inverted lists and HNSW graphs, usearch and hnswlib on 2 cores, it builds a million vectors in minutes where
the graphs take the better part of an hour, and holds them in a quarter of float32's memory.

P is not guessed: after building, `tune_probes` measures recall@10 against exact search for a seeded
sample of the folder's own vectors of the other modality (captions asking the image index, images the caption
index: the cross-modal queries the app sends) and keeps the smallest P that reaches RECALL_TARGET, or past which
more lists no longer help (the 8-bit codes cap the recall where many vectors are near-ties: about 0.98 on a
million synthetic pairs of 1,000 concepts).
Inner products of L2-normalised vectors: scores are cosines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlviz.embedding.folder import FEATURE_KEYS, EmbeddingFolder
from vlviz.embedding.store import sample_positions

SCALAR_CODE = "QT_8bit"  # faiss scalar quantizer: 8 bits a dimension (QT_fp16: 16)
LISTS_PER_ROOT = 4  # L = 4 sqrt(N) inverted lists
TRAIN_PER_LIST = 64  # k-means training vectors a list (faiss asks for at least 39)
RECALL_TARGET = 0.98  # recall@10 the probes are tuned to on the folder's own vectors (0.95 is asked of new queries)
SATURATED = 0.002  # recall@10 a doubling of the probes must add to be worth its time
TUNE_QUERIES = 256  # queries the tuning measures recall with
TUNE_K = 10
SEED = 0
EXACT_BATCH = 65_536  # folder rows scored at once by exact search


def list_count(pairs: int) -> int:
    """L for N vectors: 4 sqrt(N), at most N / 39 so that every list trains on enough vectors (1 for tiny N)."""
    return max(1, min(round(LISTS_PER_ROOT * pairs**0.5), pairs // 39))


@dataclass(frozen=True)
class SearchHits:
    """The nearest pairs of each query, best first: pair numbers and cosines, (Q, k) each."""

    pairs: np.ndarray  # int64; -1 where fewer than k pairs were found
    scores: np.ndarray  # float32


def build_modality_index(
    folder: EmbeddingFolder, modality: str, lists: int, progress: Callable[[int], None] | None = None
) -> Any:
    """A trained, filled faiss index of one modality's features (pair i is id i)."""
    import faiss

    train = sample_positions(folder.pairs, TRAIN_PER_LIST * lists, SEED)
    vectors = folder.rows(train, (FEATURE_KEYS[modality],))[FEATURE_KEYS[modality]].astype(np.float32)
    quantizer = faiss.IndexFlatIP(folder.dim)
    code = getattr(faiss.ScalarQuantizer, SCALAR_CODE)
    index = faiss.IndexIVFScalarQuantizer(quantizer, folder.dim, lists, code, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = SEED
    index.train(vectors)
    for _, batch in folder.batches(modality):
        index.add(batch)
        if progress:
            progress(len(batch))
    return index


def exact_search(folder: EmbeddingFolder, queries: np.ndarray, k: int, modality: str) -> SearchHits:
    """The true k nearest pairs of each query (Q, D) in one modality, by a pass over every stored vector."""
    queries_t = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best = torch.full((len(queries), 0), -torch.inf)
    best_pairs = torch.zeros((len(queries), 0), dtype=torch.long)
    for start, batch in folder.batches(modality, EXACT_BATCH):
        scores = queries_t @ torch.from_numpy(batch).T  # (Q, B)
        pairs = torch.arange(start, start + len(batch)).expand(len(queries), -1)
        best, order = torch.cat([best, scores], dim=1).topk(min(k, best.shape[1] + len(batch)), dim=1)
        best_pairs = torch.cat([best_pairs, pairs], dim=1).gather(1, order)
    return SearchHits(best_pairs.numpy(), best.numpy().astype(np.float32))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of the share of the true k nearest that were found: (Q, k) pair numbers each."""
    k = truth.shape[1]
    hits = (found[:, :k, None] == truth[:, None, :]).any(axis=1).sum(axis=1)
    return float(hits.mean() / k)


def search(index: Any, queries: np.ndarray, k: int, probes: int) -> SearchHits:
    """The approximate k nearest pairs of each query (Q, D) scanning `probes` lists."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.d)
    scores, pairs = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=probes))
    return SearchHits(pairs.astype(np.int64), scores.astype(np.float32))


@dataclass(frozen=True)
class ModalityIndex:
    """One modality's index as opened: the faiss index, the lists a query scans, whether it is memory-mapped."""

    index: Any
    probes: int
    mapped: bool

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the codes (none when memory-mapped: the OS pages them in) and the centroids."""
        codes = 0 if self.mapped else self.index.ntotal * self.index.code_size
        return codes + self.index.nlist * self.index.d * 4

    def search(self, queries: np.ndarray, k: int) -> SearchHits:
        return search(self.index, queries, k, self.probes)


def tune_probes(folder: EmbeddingFolder, index: Any, modality: str) -> tuple[int, float]:
    """The fewest lists a query must scan for recall@10 >= RECALL_TARGET, and the recall measured there; or,
    where the 8-bit codes cap the recall below it, the lists past which doubling adds less than SATURATED.

    The queries are a seeded sample of the folder's vectors of the other modality; the truth, exact search.
    """
    other = "caption" if modality == "image" else "image"
    asked = sample_positions(folder.pairs, TUNE_QUERIES, SEED + 1)
    queries = folder.rows(asked, (FEATURE_KEYS[other],))[FEATURE_KEYS[other]].astype(np.float32)
    k = min(TUNE_K, folder.pairs)
    truth = exact_search(folder, queries, k, modality).pairs
    probes, recall = 1, recall_at_k(search(index, queries, k, 1).pairs, truth)
    while recall < RECALL_TARGET and probes < index.nlist:
        more = min(index.nlist, probes * 2)
        better = recall_at_k(search(index, queries, k, more).pairs, truth)
        if better - recall < SATURATED:  # the codes' precision, not the lists scanned, limits the recall
            break
        probes, recall = more, better
    return probes, recall


def write_index(index: Any, path: Path) -> None:
    """Write atomically (a temporary file renamed): an index file that exists is whole."""
    import faiss

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, path)


def read_index_file(path: Path, mapped: bool) -> Any:
    """An index written by `write_index`, in memory or memory-mapped (its lists are then read as touched).

    Raises:
        ValueError: faiss cannot read the file.
    """
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mapped else 0)
    except RuntimeError as exc:
        raise ValueError(f"faiss cannot read it: {str(exc).splitlines()[0]}") from exc
