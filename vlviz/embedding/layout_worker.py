"""UMAP layouts fitted in a child process, so that umap-learn's numba code never holds the app's GIL.

umap-learn's numba functions hold the GIL while they run and compile on each process's first fit
(about 25 s on 2 cores): in the app's own process that compile, and every large fit (20,000
points: tens of seconds), would stall every other request of every visitor. `LayoutWorker` is
`fit_layout` with the UMAP itself fitted in one child (`vlviz/embedding/umap_layout.py` run as a script:
numpy and umap-learn only, at the lowest CPU priority), which keeps the fitted reducers so that a
kept layout can `transform` later embeddings. PCA layouts stay in-process (instant). The child
exits when its parent does.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import torch

from vlviz.embedding import umap_layout
from vlviz.embedding.space import DEFAULT_SETTINGS, EmbeddingLayout, LayoutSettings, fit_layout
from vlviz.embedding.umap_layout import GONE, read_message, write_message


class LayoutWorkerError(RuntimeError):
    """The child process stopped or could not be started; the next request starts a new one."""


class RemoteUmap:
    """A UMAP reducer that lives in the worker: `EmbeddingLayout.projection` for layouts fitted there."""

    def __init__(self, worker: LayoutWorker, handle: int, generation: int) -> None:
        self.worker, self.handle, self.generation = worker, handle, generation

    def transform(self, points: np.ndarray) -> np.ndarray:
        """New (M, D) points in the fitted frame, as `umap.UMAP.transform` places them: (M, 2)."""
        return self.worker.transform(self, points)


class LayoutWorker:
    """One child process that fits UMAP layouts for `fit_layout`, one at a time."""

    def __init__(self) -> None:
        self.ready = threading.Event()  # set once the child has compiled umap-learn's code
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._generation = 0  # counts the children started: a handle from an earlier child is gone

    def start(self) -> None:
        """Start the child (if it is not running) and compile UMAP there; blocks until it is compiled."""
        with self._lock:
            self._request({"op": "warm_up"})
        self.ready.set()

    def fit_layout(
        self, image_features: torch.Tensor, text_features: torch.Tensor, settings: LayoutSettings = DEFAULT_SETTINGS
    ) -> EmbeddingLayout:
        """`vlviz.embedding.space.fit_layout` (same settings, checks, notes and result), its UMAP fitted in the child."""
        return fit_layout(image_features, text_features, settings, umap_fit=self._umap)

    def transform(self, reducer: RemoteUmap, points: np.ndarray) -> np.ndarray:
        """Place `points` with a reducer the child fitted; ValueError if the child no longer has it."""
        with self._lock:
            if reducer.generation != self._generation or self._process is None or self._process.poll() is not None:
                raise ValueError(GONE)
            _, coordinates = self._request({"op": "transform", "handle": reducer.handle}, points)
        return coordinates

    def close(self) -> None:
        """Stop the child (it also stops by itself when this process ends)."""
        with self._lock:
            self._stop()

    def _umap(self, points: np.ndarray, **settings: Any) -> tuple[np.ndarray, RemoteUmap]:
        """`umap_coordinates` in the child: the coordinates, and the child's reducer as a `RemoteUmap`."""
        with self._lock:
            reply, coordinates = self._request({"op": "fit", **settings}, points)
            generation = self._generation
        self.ready.set()  # a fit compiles too
        return coordinates, RemoteUmap(self, reply["handle"], generation)

    def _request(self, header: dict[str, Any], array: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
        process = self._running()
        try:
            write_message(process.stdin, header, array)
            reply, values = read_message(process.stdout)
        except (OSError, EOFError, ValueError) as error:
            self._stop()
            raise LayoutWorkerError(
                f"The layout worker stopped ({error}); the next layout starts a new one."
            ) from error
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply, values

    def _running(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        try:  # -P: the script's folder (the vlviz package) is not put on sys.path
            command = [sys.executable, "-P", umap_layout.__file__]
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as error:
            raise LayoutWorkerError(f"Could not start the layout worker: {error}") from error
        self._generation += 1
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
