"""UMAP on numpy arrays: the one place vlviz calls umap-learn (numpy only, so a child process can run it lean).

`vlviz.embedding.space.fit_layout` checks its arguments and builds the layout around it, in this
process or, for the app, in `vlviz.embedding.layout_worker`'s child (which imports this module and numpy only).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import sys
import threading
import time
from collections import OrderedDict
from typing import IO, Any

import numpy as np

UMAP_METRICS = ("cosine", "euclidean", "correlation")


def umap_coordinates(
    points: np.ndarray, n_neighbors: int, min_dist: float, metric: str, seed: int
) -> tuple[np.ndarray, Any]:
    """Fit a 2-D UMAP (McInnes et al. 2018) on (M, D) float32 points: (M, 2) float32 coordinates, the reducer.

    umap-learn with `random_state=seed` and one thread: the same points and seed give the same layout.
    """
    import umap  # slow to import (numba): only when a UMAP is asked for

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric=metric,
        random_state=seed,
        transform_seed=seed,
        n_jobs=1,
    )
    return reducer.fit_transform(points).astype(np.float32), reducer


def warm_up_umap(seed: int = 0) -> None:
    """Fit a UMAP on a few random points, so that umap-learn's numba code is compiled before a user waits for it.

    umap-learn compiles on the first fit of each process (about 25 s on a quiet 2-core machine, 90 s on a
    busy one); later fits of a few hundred points take a fraction of a second.
    """
    points = np.random.default_rng(seed).standard_normal((20, 8)).astype(np.float32)
    umap_coordinates(points / np.linalg.norm(points, axis=1, keepdims=True), 5, 0.1, "cosine", seed)


# ------------------------------------------------------------------ serving a parent over pipes
# `vlviz.embedding.layout_worker` runs this file as a script (`python -P .../umap_layout.py`: numpy and umap-learn
# only, not the vlviz package, which imports torch). Each message is a 4-byte length, a JSON header, then
# the header's `shape` of little-endian float32 values: numbers only, no pickle.

KEPT_REDUCERS = 16  # fitted reducers the child keeps for `transform` (the oldest go first)
WORKER_NICENESS = 19  # the child's CPU priority (POSIX nice: 19 is the lowest): requests come before layouts
GONE = (
    "The kept layout is gone (the layout worker restarted or dropped it): draw without 'Keep layout' to fit a new one."
)
_LENGTH = struct.Struct("<I")


def write_message(stream: IO[bytes], header: dict[str, Any], array: np.ndarray | None = None) -> None:
    """Send a JSON header and a float32 array (none: an empty one)."""
    values = np.ascontiguousarray(array if array is not None else np.zeros((0,)), dtype="<f4")
    encoded = json.dumps(header | {"shape": list(values.shape)}).encode()
    stream.write(_LENGTH.pack(len(encoded)) + encoded + values.tobytes())
    stream.flush()


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], np.ndarray]:
    """Receive a header and its array; EOFError when the stream ends (the other side is gone)."""
    header = json.loads(_exactly(stream, _LENGTH.unpack(_exactly(stream, _LENGTH.size))[0]))
    shape = tuple(int(n) for n in header["shape"])
    values = np.frombuffer(_exactly(stream, 4 * int(np.prod(shape))), dtype="<f4").reshape(shape)
    return header, values.astype(np.float32)


def _exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the stream ended")
    return data


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: warm up, fit and transform on request until the parent closes the pipe."""
    reducers: OrderedDict[int, Any] = OrderedDict()
    handles = itertools.count(1)
    while True:
        try:
            header, points = read_message(requests)
        except EOFError:
            return
        try:
            if header["op"] == "warm_up":
                warm_up_umap()
                write_message(replies, {})
            elif header["op"] == "fit":
                settings = {key: header[key] for key in ("n_neighbors", "min_dist", "metric", "seed")}
                coordinates, reducers[handle := next(handles)] = umap_coordinates(points, **settings)
                while len(reducers) > KEPT_REDUCERS:
                    reducers.popitem(last=False)
                write_message(replies, {"handle": handle}, coordinates)
            elif header["op"] == "transform":
                if header["handle"] not in reducers:
                    raise ValueError(GONE)
                write_message(replies, {}, reducers[header["handle"]].transform(points))
            else:
                raise ValueError(f"Unknown layout worker request {header['op']!r}.")
        except Exception as error:  # one failed layout must not stop the worker: the parent raises it
            write_message(replies, {"error": str(error) or type(error).__name__})


def _exit_with_parent(parent: int) -> None:
    """Stop when the parent is gone (reparented), even in the middle of a fit: no orphan keeps computing."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


if __name__ == "__main__":
    with contextlib.suppress(OSError, AttributeError):  # not POSIX: normal priority
        os.nice(WORKER_NICENESS)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    serve(sys.stdin.buffer, protocol)
