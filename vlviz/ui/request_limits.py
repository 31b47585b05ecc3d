"""How many bytes one HTTP request may send the server, counted before they are read into memory.

Gradio reads an API call's JSON body whole (and logs it on an error): a 300 MB body took the app 1.2 GB, so a
body of a few GB ended it. Every request is bounded here, as an ASGI middleware outside Gradio: by its declared
Content-Length at once, and by the bytes actually received for a body sent in chunks. File uploads
(`/gradio_api/upload`, streamed to disk by Gradio) get the larger bound, which is also Gradio's own per-file
`max_file_size`; everything else (event data, API calls, MCP) the smaller one.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MB = 2**20
MAX_REQUEST_BYTES = int(float(os.environ.get("VLVIZ_MAX_REQUEST_MB", 16)) * MB)
"""Most bytes of a request that is not a file upload. The largest the app sends: an Analyze naming an upload of
10,000 files (about 400 bytes each, 4 MB), a lasso's 20,000 points (400 KB)."""
MAX_UPLOAD_BYTES = int(float(os.environ.get("VLVIZ_MAX_UPLOAD_MB", 2048)) * MB)
"""Most bytes of one upload request, and of one uploaded file (a tar shard's members are read up to 2 GB)."""
UPLOAD_ROUTE = "/upload"  # Gradio's upload route ends so (`/gradio_api/upload`)


class _TooLarge(Exception):
    """The body went past its bound while the app read it."""


class RequestBodyLimit:
    """ASGI middleware: a request whose body is larger than its bound is answered 413 without being read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None, upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = MAX_REQUEST_BYTES if max_bytes is None else max_bytes
        self.upload_bytes = MAX_UPLOAD_BYTES if upload_bytes is None else upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_bytes if scope["path"].rstrip("/").endswith(UPLOAD_ROUTE) else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, limit)
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


async def _refuse(send: Send, limit: int) -> None:
    body = (
        f"This request is larger than the {limit // MB:,} MB this server accepts in one request. Send fewer or "
        "smaller files (or, for an API call, the images as file uploads, not inside the request)."
    ).encode()
    headers: list[Any] = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
