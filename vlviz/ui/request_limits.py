"""How many bytes one HTTP request may send the server, counted before they are read into memory.

Gradio reads an API call's JSON body whole (and logs it on an error): a 300 MB body took the app 1.2 GB, so a
body of a few GB ended it. Every request is bounded here, as an ASGI middleware outside Gradio: by its declared
Content-Length at once, and by the bytes actually received for a body sent in chunks. File uploads
(`/gradio_api/upload`, streamed to disk by Gradio) get the larger bound, which is also Gradio's own per-file
`max_file_size`; everything else (event data, API calls, MCP) the smaller one. An upload is also refused when it
could leave less than MIN_FREE_DISK_BYTES free where Gradio keeps uploads: they stay there until Gradio's cache
sweep, so uploads in a row could otherwise fill the disk the server's runs and other visitors need; and on a
public server one client address may upload at most ADDRESS_UPLOAD_BYTES within UPLOAD_WINDOW_S, so that one
visitor cannot take that disk from the others.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from gradio.utils import get_upload_folder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlviz.models.policy import is_public
from vlviz.ui.session import SESSION_TTL_S

MB = 2**20
MAX_REQUEST_BYTES = int(float(os.environ.get("VLVIZ_MAX_REQUEST_MB", 16)) * MB)
"""Most bytes of a request that is not a file upload. The largest the app sends: an Analyze naming an upload of
10,000 files (about 400 bytes each, 4 MB), a lasso's 20,000 points (400 KB)."""
MAX_UPLOAD_BYTES = int(float(os.environ.get("VLVIZ_MAX_UPLOAD_MB", 2048)) * MB)
"""Most bytes of one upload request, and of one uploaded file (a tar shard's members are read up to 2 GB)."""
MIN_FREE_DISK_BYTES = int(float(os.environ.get("VLVIZ_MIN_FREE_DISK_MB", 2048)) * MB)
"""Free disk an upload may not take the upload folder's file system below."""
ADDRESS_UPLOAD_BYTES = int(float(os.environ.get("VLVIZ_ADDRESS_UPLOAD_MB", 8192)) * MB)
"""Most bytes one client address may upload to a public server within UPLOAD_WINDOW_S."""
UPLOAD_WINDOW_S = SESSION_TTL_S
"""How long an upload counts against its address: as long as Gradio keeps it (the session TTL its cache sweep uses)."""
UPLOAD_ROUTE = "/upload"  # Gradio's upload route ends so (`/gradio_api/upload`)


class UploadLedger:
    """Bytes each client address uploaded within the last `window_s` seconds."""

    def __init__(self, budget: int = ADDRESS_UPLOAD_BYTES, window_s: float = UPLOAD_WINDOW_S) -> None:
        self.budget, self.window_s = budget, window_s
        self._uploads: defaultdict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def room(self, address: str) -> int:
        """Bytes `address` may still upload now."""
        with self._lock:
            uploads, oldest = self._uploads[address], time.monotonic() - self.window_s
            while uploads and uploads[0][0] < oldest:
                uploads.popleft()
            if not uploads:
                del self._uploads[address]  # an address that went quiet holds no entry
            return self.budget - sum(size for _, size in uploads)

    def add(self, address: str, size: int) -> None:
        with self._lock:
            self._uploads[address].append((time.monotonic(), size))


def _upload_folder_free_bytes() -> int:
    folder = get_upload_folder()  # where Gradio keeps uploads (GRADIO_TEMP_DIR)
    os.makedirs(folder, exist_ok=True)
    return shutil.disk_usage(folder).free


class _TooLarge(Exception):
    """The body went past its bound while the app read it."""


class RequestBodyLimit:
    """ASGI middleware: a request whose body is larger than its bound is answered 413 without being read whole."""

    def __init__(
        self, app: ASGIApp, max_bytes: int | None = None, upload_bytes: int | None = None,
        free_disk: Callable[[], int] = _upload_folder_free_bytes, min_free_disk: int | None = None,
        ledger: UploadLedger | None = None, public: Callable[[], bool] = is_public,
    ) -> None:  # fmt: skip
        self.app = app
        self.max_bytes = MAX_REQUEST_BYTES if max_bytes is None else max_bytes
        self.upload_bytes = MAX_UPLOAD_BYTES if upload_bytes is None else upload_bytes
        self.free_disk = free_disk
        self.min_free_disk = MIN_FREE_DISK_BYTES if min_free_disk is None else min_free_disk
        self.ledger = UploadLedger() if ledger is None else ledger
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/").endswith(UPLOAD_ROUTE)
        limit = self.upload_bytes if upload else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, limit)
            return
        size = int(declared) if declared is not None else limit
        if upload and self.free_disk() - size < self.min_free_disk:
            await _answer(send, 507, "This server is short of disk space for uploads now; try again later.")
            return
        address = scope["client"][0] if upload and scope.get("client") and self.public() else None
        if address is not None:
            room = self.ledger.room(address)
            if size > room:
                await _answer(
                    send, 429,
                    f"Uploads from your address reached the {self.ledger.budget // MB:,} MB this server takes from "
                    f"one address within {self.ledger.window_s / 3600:g} h ({max(room, 0) // MB:,} MB left); "
                    "upload again later.",
                )  # fmt: skip
                return
        received, started = 0, False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _refuse(send, limit)
        finally:
            if address is not None:
                self.ledger.add(address, received)


async def _refuse(send: Send, limit: int) -> None:
    await _answer(
        send, 413,
        f"This request is larger than the {limit // MB:,} MB this server accepts in one request. Send fewer or "
        "smaller files (or, for an API call, the images as file uploads, not inside the request).",
    )  # fmt: skip


async def _answer(send: Send, status: int, message: str) -> None:
    body = message.encode()
    headers: list[Any] = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
