"""UMAP layouts fitted in a child process, so that umap-learn's numba code never holds the app's GIL.

umap-learn's numba functions hold the GIL while they run and compile on each process's first fit
(about 25 s on 2 cores): in the app's own process that compile, and every large fit (20,000
points: tens of seconds), would stall every other request of every visitor. `LayoutWorker` runs
`fit_layout` in one child (`python -m vlviz.layout_worker`) and keeps the fitted reducers there,
so a kept layout can `transform` later embeddings; PCA layouts stay in-process (instant).

The protocol is numbers only, no pickle: each message is a 4-byte length, a JSON header, then the
header's `shape` of little-endian float32 values.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from vlviz.embedding_space import MIN_UMAP_POINTS, EmbeddingLayout, fit_layout, warm_up_umap

KEPT_LAYOUTS = 16  # fitted reducers the child keeps for `transform` (the oldest go first)
_LENGTH = struct.Struct("<I")


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
    """One child process that fits UMAP layouts (`fit_layout`, same arguments and result) one at a time."""

    def __init__(self) -> None:
        self.ready = threading.Event()  # set once the child has compiled umap-learn's code
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._generation = 0  # counts the children started: a handle from an earlier child is gone

    def start(self) -> None:
        """Start the child (if it is not running) and compile UMAP there; blocks until it is compiled."""
        with self._lock:
            self._request({"op": "warm_up"}, None)
        self.ready.set()

    def fit_layout(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        method: str = "umap",
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "cosine",
        seed: int = 0,
    ) -> EmbeddingLayout:
        """`vlviz.embedding_space.fit_layout`, with UMAP fitted in the child (errors alike: ValueError)."""
        settings = dict(method=method, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, seed=seed)
        if method != "umap" or 2 * len(image_features) < MIN_UMAP_POINTS or image_features.shape != text_features.shape:
            return fit_layout(image_features, text_features, **settings)  # PCA, the small-set fallback, or the error
        points = torch.cat([image_features, text_features]).detach().cpu().float().numpy()
        with self._lock:
            header, coordinates = self._request({"op": "fit", **settings}, points)
            generation = self._generation
        self.ready.set()
        projection = RemoteUmap(self, header["handle"], generation)
        titles = tuple(header["axis_titles"])
        return EmbeddingLayout(
            header["method"], torch.from_numpy(coordinates), titles, header["note"], points.shape[1], projection
        )

    def transform(self, reducer: RemoteUmap, points: np.ndarray) -> np.ndarray:
        """Place `points` with a reducer the child fitted; ValueError if the child no longer has it."""
        with self._lock:
            if reducer.generation != self._generation or self._process is None or self._process.poll() is not None:
                raise ValueError(_GONE)
            _, coordinates = self._request({"op": "transform", "handle": reducer.handle}, points.astype(np.float32))
        return coordinates

    def close(self) -> None:
        """Stop the child (it also stops by itself when this process ends: its input closes)."""
        with self._lock:
            self._stop()

    def _request(self, header: dict[str, Any], array: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
        process = self._running()
        try:
            _write(process.stdin, header, array)
            reply, values = _read(process.stdout)
        except (OSError, ValueError, struct.error) as error:
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
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "vlviz.layout_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=os.environ | {"PYTHONPATH": path},
            )
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


_GONE = (
    "The kept layout is gone (the layout worker restarted or dropped it): draw without 'Keep layout' to fit a new one."
)


def _write(stream: IO[bytes], header: dict[str, Any], array: np.ndarray | None) -> None:
    values = np.ascontiguousarray(array, dtype="<f4") if array is not None else np.zeros((0,), "<f4")
    encoded = json.dumps(header | {"shape": list(values.shape)}).encode()
    stream.write(_LENGTH.pack(len(encoded)) + encoded + values.tobytes())
    stream.flush()


def _read(stream: IO[bytes]) -> tuple[dict[str, Any], np.ndarray]:
    header = json.loads(_exactly(stream, _LENGTH.unpack(_exactly(stream, _LENGTH.size))[0]))
    shape = tuple(int(n) for n in header["shape"])
    values = np.frombuffer(_exactly(stream, 4 * int(np.prod(shape))), dtype="<f4").reshape(shape)
    return header, values.astype(np.float32)


def _exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("the stream ended")
    return data


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child: answer requests until the parent closes its input."""
    reducers: OrderedDict[int, Any] = OrderedDict()
    while True:
        try:
            header, points = _read(requests)
        except ValueError:
            return  # the parent closed the pipe
        op = header["op"]
        try:
            if op == "warm_up":
                warm_up_umap()
                _write(replies, {}, None)
            elif op == "fit":
                half = points.shape[0] // 2
                tensor = torch.from_numpy(points)
                settings = {key: header[key] for key in ("method", "n_neighbors", "min_dist", "metric", "seed")}
                layout = fit_layout(tensor[:half], tensor[half:], **settings)
                handle = (max(reducers) + 1) if reducers else 1
                reducers[handle] = layout.projection
                while len(reducers) > KEPT_LAYOUTS:
                    reducers.popitem(last=False)
                reply = {"handle": handle, "method": layout.method, "axis_titles": list(layout.axis_titles),
                         "note": layout.note}  # fmt: skip
                _write(replies, reply, layout.coordinates.numpy())
            elif op == "transform":
                if header["handle"] not in reducers:
                    raise ValueError(_GONE)
                _write(replies, {}, reducers[header["handle"]].transform(points))
            else:
                raise ValueError(f"Unknown layout worker request {op!r}.")
        except Exception as error:  # one failed layout must not stop the worker: the parent raises it
            _write(replies, {"error": str(error) or type(error).__name__}, None)


if __name__ == "__main__":
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    _serve(sys.stdin.buffer, protocol)
