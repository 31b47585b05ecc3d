"""Clusters of an embedded dataset's map: groups of points that lie together, to colour the map by and to select
whole, each named by the words its pairs' captions use more than the rest of the dataset's do (as Embedding Atlas
and latent-scope label theirs).

The clusters are of the 2-D map, not of the embeddings: they are what the eye groups on screen, so a selection by
cluster is the lasso a user would draw around it. k-means is fitted on a seeded sample of the points and every
point then goes to its nearest centre, in bounded batches (a million pairs' two million points in about a second).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from vlviz.models.tokens import STOP_WORDS

CLUSTER_COUNT = 16
"""Clusters a map is cut into: as many as a qualitative palette tells apart."""
FIT_POINTS_PER_CLUSTER = 256  # k-means is fitted on at most this many sampled points a cluster
ASSIGN_BATCH = 262_144  # points assigned to their nearest centre at once: (B, k) distances
LABEL_PAIRS = 400  # captions read per cluster to name it
LABEL_WORDS = 3
_WORD = re.compile(r"[a-z][a-z'-]+")


@dataclass(frozen=True)
class MapClusters:
    """Each map point's cluster (0 the largest) and each cluster's name."""

    assignment: np.ndarray  # (2N,) int16
    labels: list[str]  # per cluster: its most distinctive caption words, "" when none stands out

    @property
    def sizes(self) -> np.ndarray:
        """(k,) points per cluster."""
        return np.bincount(self.assignment, minlength=len(self.labels))

    def points(self, cluster: int) -> np.ndarray:
        """The map points of `cluster`, in order."""
        return np.flatnonzero(self.assignment == cluster)


def cluster_map(coordinates: np.ndarray, count: int = CLUSTER_COUNT, seed: int = 0) -> np.ndarray:
    """(P,) int16: each of the (P, 2) map points' cluster by k-means, numbered by size (0 the largest; a cluster
    no point went to has no number, so the numbers are 0..k'-1 for the k' <= `count` clusters that hold points).

    Fitted on a seeded sample of FIT_POINTS_PER_CLUSTER points a cluster, then every point is assigned to its
    nearest centre: the same clusters whatever the map's size, in memory of one batch's distances.
    """
    coordinates = np.asarray(coordinates, dtype=np.float32)
    n = len(coordinates)
    count = max(1, min(count, n))
    rng = np.random.default_rng(seed)
    sample = coordinates[np.sort(rng.choice(n, size=min(n, count * FIT_POINTS_PER_CLUSTER), replace=False))]
    with warnings.catch_warnings():  # a small map may hold fewer distinct points than clusters: some stay empty
        warnings.simplefilter("ignore", ConvergenceWarning)
        centres = KMeans(count, n_init=4, random_state=seed).fit(sample).cluster_centers_.astype(np.float32)  # (k, 2)
    assignment = np.empty(n, dtype=np.int64)
    for start in range(0, n, ASSIGN_BATCH):
        block = coordinates[start : start + ASSIGN_BATCH]
        distances = ((block[:, None, :] - centres[None]) ** 2).sum(-1)  # (B, k)
        assignment[start : start + len(block)] = distances.argmin(1)
    order = np.argsort(-np.bincount(assignment, minlength=count), kind="stable")  # largest first, empty ones last
    rank = np.empty(count, dtype=np.int16)
    rank[order] = np.arange(count, dtype=np.int16)
    return rank[assignment]


def cluster_labels(
    assignment: np.ndarray,
    n_pairs: int,
    captions_of: Callable[[np.ndarray], Sequence[str]],
    per_cluster: int = LABEL_PAIRS,
    seed: int = 0,
) -> list[str]:
    """Each cluster's name: the LABEL_WORDS words most particular to it, among the captions of a seeded sample of
    `per_cluster` of the pairs its points belong to (`captions_of(pairs)`, one read for all clusters).

    A word scores its share of the cluster's captions times its inverse share of all the sampled captions
    (tf-idf over the clusters' samples); stop words and words in fewer than two of a cluster's captions are left out.
    """
    count = int(assignment.max()) + 1 if len(assignment) else 0
    rng = np.random.default_rng(seed)
    sampled = []
    for cluster in range(count):  # k clusters: a short loop; each draw is one vectorised choice
        members = np.unique(np.flatnonzero(assignment == cluster) % n_pairs)  # a pair once, by its image or caption
        sampled.append(np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False)))
    pairs = np.unique(np.concatenate(sampled)) if sampled else np.zeros(0, np.int64)
    words_of = {
        int(pair): set(_WORD.findall(caption.lower())) - STOP_WORDS for pair, caption in zip(pairs, captions_of(pairs))
    }
    in_all = Counter(word for words in words_of.values() for word in words)
    labels = []
    for members in sampled:
        in_cluster = Counter(word for pair in members for word in words_of[int(pair)])
        scored = sorted(
            (
                (-(seen / len(members)) * np.log(len(words_of) / in_all[word]), word)
                for word, seen in in_cluster.items()
                if seen >= 2 and in_all[word] < len(words_of)  # a word of every caption names no cluster
            ),
        )
        labels.append(" · ".join(word for _, word in scored[:LABEL_WORDS]))
    return labels
