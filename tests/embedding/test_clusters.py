"""The map's clusters: k-means on the 2-D points, numbered by size, and their names from their captions."""

from __future__ import annotations

import numpy as np
import pytest

import vlviz.embedding.clusters as clusters_module
from vlviz.embedding.clusters import MapClusters, cluster_labels, cluster_map


def _blobs(sizes: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points in far-apart tight blobs of `sizes`, shuffled, and each point's blob."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])[: len(sizes)]
    blob = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(blob))
    points = centres[blob] + rng.normal(scale=0.3, size=(len(blob), 2))
    return points[order].astype(np.float32), blob[order]


def test_each_blob_is_one_cluster_numbered_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    points, blob = _blobs((50, 300, 120))
    assignment = cluster_map(points, count=3)
    assert assignment.dtype == np.int16 and assignment.shape == (470,)
    by_size = {1: 0, 2: 1, 0: 2}  # the 300-point blob is cluster 0, the 120-point one 1, the 50-point one 2
    assert np.array_equal(assignment, np.vectorize(by_size.get)(blob))
    assert MapClusters(assignment, ["", "", ""]).sizes.tolist() == [300, 120, 50]
    monkeypatch.setattr(clusters_module, "ASSIGN_BATCH", 7)  # points assigned in batches: the same clusters
    assert np.array_equal(cluster_map(points, count=3), assignment)
    assert np.array_equal(cluster_map(points, count=3, seed=0), assignment)  # seeded: the same every time


def test_a_map_of_fewer_points_than_clusters_has_a_cluster_a_point() -> None:
    points = np.array([[0, 0], [5, 5], [9, 0]], np.float32)
    assert sorted(cluster_map(points, count=16).tolist()) == [0, 1, 2]
    same = np.zeros((40, 2), np.float32)  # fewer distinct points than clusters: one cluster, the empty ones unnumbered
    assert cluster_map(same, count=16).tolist() == [0] * 40
    assert cluster_labels(cluster_map(same, count=16), 20, lambda pairs: ["a dog"] * len(pairs)) == [""]


def test_a_cluster_is_named_by_the_words_particular_to_its_captions() -> None:
    # pairs 0-3 and their captions (points 4-7) in cluster 0; pairs 4-7 and their captions in cluster 1
    n_pairs = 8
    assignment = np.array([0, 0, 0, 0, 1, 1, 1, 1] * 2, np.int16)
    captions = [
        "a red circle on the left", "a red circle and a square", "a red circle at the top", "a small red circle",
        "a blue cross on the left", "a blue cross", "a blue cross and a circle", "a large blue cross",
    ]  # fmt: skip
    asked = []

    def captions_of(pairs: np.ndarray) -> list[str]:
        asked.append(pairs.tolist())
        return [captions[pair] for pair in pairs]

    labels = cluster_labels(assignment, n_pairs, captions_of)
    assert asked == [list(range(8))]  # one read, each sampled pair once
    assert labels[0].split(" · ")[0] == "red"  # in all four of its captions, and in none of the other cluster's
    assert labels[0].split(" · ")[1] == "circle"  # in all four too, but also in one of the other cluster's
    assert labels[1].split(" · ")[:2] == ["blue", "cross"]
    assert "left" not in labels[0] and "small" not in labels[0]  # seen once in the cluster: no name
    everywhere = cluster_labels(assignment, n_pairs, lambda pairs: ["a dog"] * len(pairs))
    assert everywhere == ["", ""]  # a word of every caption names no cluster
