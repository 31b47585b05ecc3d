"""UMAP in a child process: the same layouts as in-process, kept layouts transform there, failures are clear."""

from __future__ import annotations

import pytest
import torch

from tests.core.test_embedding_space import _pairs
from vlviz.embedding_space import fit_layout
from vlviz.layout_worker import LayoutWorker, RemoteUmap


@pytest.fixture(scope="module")
def worker() -> LayoutWorker:
    worker = LayoutWorker()
    yield worker
    worker.close()


def test_a_umap_fitted_in_the_worker_equals_one_fitted_here(worker: LayoutWorker) -> None:
    images, texts = _pairs(20)
    here = fit_layout(images, texts, "umap", n_neighbors=8, seed=3)
    there = worker.fit_layout(images, texts, "umap", n_neighbors=8, seed=3)
    assert worker.ready.is_set()
    assert isinstance(there.projection, RemoteUmap)
    assert torch.equal(there.coordinates, here.coordinates)
    assert (there.method, there.axis_titles, there.note, there.dimension) == (
        here.method, here.axis_titles, here.note, here.dimension,
    )  # fmt: skip
    later_images, later_texts = _pairs(6, seed=1)
    assert torch.equal(there.transform(later_images, later_texts), here.transform(later_images, later_texts))


def test_pca_and_small_sets_stay_in_this_process(worker: LayoutWorker) -> None:
    images, texts = _pairs(12)
    assert not isinstance(worker.fit_layout(images, texts, "pca").projection, RemoteUmap)
    small = worker.fit_layout(images[:3], texts[:3], "umap")
    assert small.method == "pca" and "UMAP needs at least" in small.note


def test_errors_of_the_child_are_raised_here_and_it_keeps_serving(worker: LayoutWorker) -> None:
    images, texts = _pairs(12)
    with pytest.raises(ValueError, match="Unknown UMAP metric"):
        worker.fit_layout(images, texts, "umap", metric="manhattan")
    with pytest.raises(ValueError, match="one shape"):
        worker.fit_layout(images, texts[:5], "umap")
    assert worker.fit_layout(images, texts, "umap", n_neighbors=5).method == "umap"


def test_a_stopped_child_is_replaced_and_its_layouts_are_gone(worker: LayoutWorker) -> None:
    images, texts = _pairs(12)
    layout = worker.fit_layout(images, texts, "umap", n_neighbors=5)
    worker._process.kill()  # as if the child had crashed (the module's last test: later fits would compile again)
    worker._process.wait()
    with pytest.raises(ValueError, match="kept layout is gone"):
        layout.transform(images, texts)
    with pytest.raises(ValueError, match="Unknown UMAP metric"):  # a new child answers (no fit: no compile)
        worker.fit_layout(images, texts, "umap", metric="manhattan")
    with pytest.raises(ValueError, match="kept layout is gone"):
        layout.transform(images, texts)
    worker.close()
    assert worker._process is None
