"""UMAP in a child process: the same layouts as in-process, kept layouts transform there, failures are clear,
and the child is lean (no torch) and never outlives its parent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.embedding.test_embedding_space import _pairs
from vlviz.embedding import umap_layout
from vlviz.embedding.layout_worker import LayoutWorker, RemoteUmap
from vlviz.embedding.space import LayoutSettings, fit_layout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def worker() -> LayoutWorker:
    worker = LayoutWorker()
    yield worker
    worker.close()


def test_a_umap_fitted_in_the_worker_equals_one_fitted_here(worker: LayoutWorker) -> None:
    images, texts = _pairs(20)
    here = fit_layout(images, texts, LayoutSettings(n_neighbors=8, seed=3))
    there = worker.fit_layout(images, texts, LayoutSettings(n_neighbors=8, seed=3))
    assert worker.ready.is_set()
    assert isinstance(there.projection, RemoteUmap)
    assert torch.equal(there.coordinates, here.coordinates)
    assert (there.method, there.axis_titles, there.note, there.dimension) == (
        here.method, here.axis_titles, here.note, here.dimension,
    )  # fmt: skip
    later_images, later_texts = _pairs(6, seed=1)
    assert torch.equal(there.transform(later_images, later_texts), here.transform(later_images, later_texts))


def test_pca_small_sets_and_bad_shapes_stay_in_this_process(worker: LayoutWorker) -> None:
    images, texts = _pairs(12)
    assert not isinstance(worker.fit_layout(images, texts, LayoutSettings("pca")).projection, RemoteUmap)
    small = worker.fit_layout(images[:3], texts[:3])
    assert small.method == "pca" and "UMAP needs at least" in small.note
    with pytest.raises(ValueError, match="one shape"):
        worker.fit_layout(images, texts[:5])


def test_an_error_in_the_child_is_raised_here_and_it_keeps_serving(worker: LayoutWorker) -> None:
    images, texts = _pairs(12)
    with pytest.raises(ValueError, match="min_dist"):  # umap-learn refuses it in the child
        worker.fit_layout(images, texts, LayoutSettings(min_dist=-1.0))
    assert worker.fit_layout(images, texts, LayoutSettings(n_neighbors=5)).method == "umap"


def test_a_stopped_child_is_replaced_and_its_layouts_are_gone(worker: LayoutWorker) -> None:
    images, texts = _pairs(12)
    layout = worker.fit_layout(images, texts, LayoutSettings(n_neighbors=5))
    worker._process.kill()  # as if the child had crashed (the module's last use: later fits would compile again)
    worker._process.wait()
    with pytest.raises(ValueError, match="kept layout is gone"):
        layout.transform(images, texts)
    with pytest.raises(ValueError, match="min_dist"):  # a new child answers (refused before any compile)
        worker.fit_layout(images, texts, LayoutSettings(min_dist=-1.0))
    with pytest.raises(ValueError, match="kept layout is gone"):
        layout.transform(images, texts)
    worker.close()
    assert worker._process is None


def test_the_child_imports_neither_torch_nor_the_vlviz_package() -> None:
    check = "import runpy, sys; runpy.run_path(sys.argv[1]); print(sorted({'torch', 'vlviz'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-P", "-c", check, umap_layout.__file__], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has stopped (its new parent may not reap it)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_busy_child_stops_when_its_parent_dies() -> None:
    """The parent asks for the warm-up (the child compiles for many seconds) and dies at once."""
    parent = (
        "import os, threading, time\n"
        "from vlviz.embedding.layout_worker import LayoutWorker\n"
        "worker = LayoutWorker()\n"
        "threading.Thread(target=worker.start, daemon=True).start()\n"
        "while worker._process is None: time.sleep(0.05)\n"
        "time.sleep(1)\n"
        "print(worker._process.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, cwd=ROOT, timeout=120)
    child = int(out.stdout)
    deadline = time.monotonic() + 15
    while not _stopped(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _stopped(child)
