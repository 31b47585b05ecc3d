"""Per-pair figures of a whole embedding folder, computed once in batches and kept beside the shards.

`own_cosine` is cos(image i, caption i). `caption_rank_share` is the share of other captions that image i
scores at least as high as its own: (rank of its own caption - 1) / (N - 1) in image->caption retrieval, ties
counted against the own caption as everywhere in vlviz (`vlviz.metrics.affinity.partner_ranks`), 0 for a
pair its model alone retrieves first; over the same reference sample as the
next, so a million-pair folder gets an estimate in steps of 1/R. Two folders of the same pairs compare their
models pair by pair with it (`vlviz.embedding.linked`). `inconsistency` is SaCo's per-sample score
(`vlviz.metrics.consistency.sample_inconsistency`), s_i = mean over j != i of |A_I[i, j] - A_T[i, j]|, taken
over a seeded reference sample of REFERENCE_PAIRS pairs j instead of all N: the exact score needs N^2 dot
products (10^12 at a million pairs), the sampled one N x R, and its standard error is about
std(|A_I - A_T|) / sqrt(R), 0.003 at R = 1024 on CLIP-like embeddings. A folder of at most R pairs gets the
exact score.

`source_columns` gathers what the source said of each pair (`vlviz.data.formats.numeric_fields`, kept by `embed`
in each shard): LAION's similarity, an aesthetic score, a size; the map is coloured by them as by the others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vlviz.data.formats import MAX_SOURCE_FIELDS
from vlviz.embedding.folder import FEATURE_KEYS, EmbeddingFolder
from vlviz.embedding.store import read_source_fields, sample_positions

REFERENCE_PAIRS = 1024  # pairs j each pair's inconsistency is averaged over
REFERENCE_SEED = 0
COLUMN_BATCH = 8192  # pairs whose (B, R) affinities are taken at once
TIE_TOLERANCE = 1e-6  # cosines this close to a pair's own are ties: a duplicate caption, or a collapsed model


def pair_columns(folder: EmbeddingFolder, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """`own_cosine`, `caption_rank_share` and `inconsistency`, (N,) float32 each, and `reference`, the pairs the
    last two are taken over.

    One pass over the shards; memory is a batch's (B, R) affinities and the reference's (R, D) features.
    """
    n = folder.pairs
    reference = sample_positions(n, REFERENCE_PAIRS, REFERENCE_SEED)  # all pairs when n <= R
    rows = folder.rows(reference, tuple(FEATURE_KEYS.values()))
    reference_images = torch.from_numpy(rows["image_features"].astype(np.float32))  # (R, D)
    reference_texts = torch.from_numpy(rows["text_features"].astype(np.float32))
    own, inconsistency, rank_share = (np.empty(n, np.float32) for _ in range(3))
    for (start, images), (_, texts) in zip(
        folder.batches("image", COLUMN_BATCH), folder.batches("caption", COLUMN_BATCH)
    ):
        images, texts = torch.from_numpy(images), torch.from_numpy(texts)  # (B, D)
        stop = start + len(images)
        own_pair = (images * texts).sum(dim=1)  # (B,)
        own[start:stop] = own_pair.numpy()
        image_caption = images @ reference_texts.T  # (B, R)
        difference = (images @ reference_images.T - texts @ reference_texts.T).abs_()  # (B, R)
        # a tie counts against the own caption (`partner_ranks`); TIE_TOLERANCE absorbs the two products' rounding
        closer = image_caption >= own_pair[:, None] - TIE_TOLERANCE
        # a pair of the reference leaves itself out: j != i
        member = np.flatnonzero((reference >= start) & (reference < stop))
        difference[reference[member] - start, member] = 0
        closer[reference[member] - start, member] = False
        counts = np.full(len(images), len(reference), np.float32)
        counts[reference[member] - start] -= 1
        inconsistency[start:stop] = difference.sum(dim=1).numpy() / np.maximum(counts, 1)
        rank_share[start:stop] = closer.sum(dim=1).numpy() / np.maximum(counts, 1)
        if progress:
            progress(len(images))
    return {"own_cosine": own, "caption_rank_share": rank_share, "inconsistency": inconsistency, "reference": reference}


def source_columns(folder: EmbeddingFolder) -> dict[str, np.ndarray]:
    """The source's numeric fields of every pair, name -> (N,) float32, NaN for a pair whose row lacked it: the
    first MAX_SOURCE_FIELDS names the shards list, in their order (shards of one source list the same ones,
    unless its rows differ)."""
    shards = [read_source_fields(folder.shard_path(s)) for s in range(len(folder.starts) - 1)]
    names = list(dict.fromkeys(name for shard in shards if shard for name in shard[0]))[:MAX_SOURCE_FIELDS]
    columns = {name: np.full(folder.pairs, np.nan, dtype=np.float32) for name in names}
    for number, shard in enumerate(shards):
        start, stop = int(folder.starts[number]), int(folder.starts[number + 1])
        for column, name in enumerate(shard[0] if shard else []):
            if name in columns:
                columns[name][start:stop] = shard[1][:, column]
    return columns
