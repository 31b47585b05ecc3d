"""A fake Hugging Face hub on 127.0.0.1, so the download path can be tested for real without the internet.

It serves the file API that `huggingface_hub.hf_hub_download` uses (HEAD and GET on
``/{org}/{name}/resolve/{revision}/{filename}``) with the headers the client requires: ``X-Repo-Commit``, a quoted
``ETag`` (the file's sha256) and ``Content-Length``; it answers ``Range: bytes=N-`` with 206 as the real hub does.
It sends no ``X-Xet-*`` headers and no redirects, so the client downloads over plain HTTP from this one server.
Unknown repos, revisions and files get 404 with the hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), which the client turns into its typed errors.

Misbehaviour is switched with `FakeHub.mode` (see `MODES`) while the server runs. Every request is recorded, so a
test can tell whether a load downloaded, and whether it touched the server at all. Standard library only.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import cast
from urllib.parse import unquote, urlsplit

MODES = (
    "normal",  # serves the files
    "error",  # HTTP 500 on every request
    "stall",  # accepts the connection, reads the request, never answers
    "stall-body",  # HEAD answers normally; GET sends its headers, then never the body
    "stall-weights",  # GET of a weights file sends its headers and half the body, then nothing
    "truncated",  # GET of a weights file declares its full length, sends half of it and closes the connection
)
COMMIT = hashlib.sha1(b"vlviz fake hub").hexdigest()  # the one commit every repo is at (40 hex digits)
STALL_LIMIT_S = 60.0  # a stalled handler gives up after this, or as soon as the hub stops
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the hub received: what a test asserts on."""

    method: str
    path: str
    range: str | None


class FakeHub:
    """A threaded HTTP server imitating the hub's file API; use as a context manager or `start()`/`stop()`."""

    def __init__(self, repos: Mapping[str, Mapping[str, bytes | Path]], mode: str = "normal") -> None:
        self.repos = {
            repo: {name: data.read_bytes() if isinstance(data, Path) else data for name, data in files.items()}
            for repo, files in repos.items()
        }
        self.mode = mode
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hf-hub", daemon=True
        )

    @property
    def mode(self) -> str:
        """How the hub behaves now: one of `MODES`."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"Unknown fake hub mode {mode!r}: one of {', '.join(MODES)}.")
        self._mode = mode

    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def downloads(self) -> list[str]:
        """The file paths fetched with GET so far: the bodies the client downloaded."""
        return [r.path for r in self.requests if r.method == "GET"]

    def clear(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._requests.clear()

    def start(self) -> FakeHub:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release stalled handlers, so nothing outlives the test."""
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _stall(self) -> None:
        self._released.wait(STALL_LIMIT_S)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet about clients that hang up (a TCP-only probe, a client giving up on a stall); loud otherwise."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like the real hub: every answer carries a Content-Length
    server_version = "vlviz-fake-hub/1"

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures, not access logs
        pass

    @property
    def hub(self) -> FakeHub:
        return cast(_Server, self.server).hub

    def _answer(self, send_body: bool) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        hub._record(RecordedRequest(self.command, path, self.headers.get("Range")))
        mode = hub.mode
        if mode == "stall":
            hub._stall()
            self.close_connection = True
            return
        if mode == "error":
            self._send_status(500, b"Internal Server Error", send_body)
            return
        match = _RESOLVE.match(path)
        if match is None:
            self._send_status(404, b"Not Found", send_body)
            return
        repo, revision, filename = match["repo"], unquote(match["revision"]), unquote(match["filename"])
        files = hub.repos.get(repo)
        if files is None:
            self._send_status(404, b"Repository not found", send_body, {"X-Error-Code": "RepoNotFound"})
            return
        if revision not in ("main", COMMIT):
            self._send_status(404, b"Invalid rev id", send_body, {"X-Error-Code": "RevisionNotFound"})
            return
        data = files.get(filename)
        if data is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
            self._send_status(404, b"Entry not found", send_body, headers)
            return
        self._send_file(filename, data, send_body)

    def _send_status(self, status: int, body: bytes, send_body: bool, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if headers and "X-Error-Code" in headers:
            self.send_header("X-Error-Message", body.decode())
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_file(self, filename: str, data: bytes, send_body: bool) -> None:
        mode = self.hub.mode
        start = _range_start(self.headers.get("Range"), len(data))
        if mode in ("truncated", "stall-weights") or not send_body:
            start = 0  # a truncating server ignores Range, as some CDNs do; HEAD always describes the whole file
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        if mode == "stall-body":
            self.wfile.flush()
            self.hub._stall()
            self.close_connection = True
            return
        if mode in ("truncated", "stall-weights") and filename.endswith(_WEIGHT_SUFFIXES):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if mode == "stall-weights":
                self.hub._stall()
            self.close_connection = True  # the client sees the connection end before Content-Length bytes
            return
        self.wfile.write(data[start:])


def _range_start(header: str | None, size: int) -> int:
    """The first byte asked for by ``Range: bytes=N-`` (the only form the hub client sends), else 0."""
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    start = int(match[1]) if match else 0
    return start if 0 < start < size else 0
