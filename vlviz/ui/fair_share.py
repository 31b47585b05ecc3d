"""A fair share of Gradio's queue: one session, and on a public server one client address, may hold only
so many of its waiting places, so a visitor who floods the queue leaves room for everyone else.

Gradio 6.31 bounds the queue for all sessions together (`max_size`) and offers no hook per session, so
`share_queue` wraps the queue's `push`, the one way into it (`/queue/join`, `/call/NAME` and MCP's
loopback client all go through it), and refuses with Gradio's own "queue full" answer (HTTP 503) and a
message saying why. tests/ui/test_fair_share.py pins this against the Gradio of requirements.txt.

What a session does once it holds a worker is bounded elsewhere: one training and one heavy analysis
at a time (`vlviz.ui.runner.Runner`, `Session.exclusive`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import fastapi
import gradio as gr

QUEUE_SHARE = int(os.environ.get("VLVIZ_QUEUE_SHARE", 16))
"""Requests one session may have waiting in the queue. A client picks its own session hash, hence also:"""
QUEUE_SHARE_PER_ADDRESS = int(os.environ.get("VLVIZ_QUEUE_SHARE_PER_ADDRESS", 32))
"""Requests one client address may have waiting on a public server, whatever session hashes it sends. Behind a
reverse proxy the address is the proxy's unless uvicorn trusts it (`FORWARDED_ALLOW_IPS`); then every visitor
shares these places (on a Space, the queue holds this many instead of `VLVIZ_QUEUE_SIZE`)."""
WAIT = "as many as one may hold: wait for them to finish, then try again."


class FairShare:
    """A queue's `push` that first counts the requests already waiting from the same session and address."""

    def __init__(self, demo: gr.Blocks, per_session: int, per_address: int | None) -> None:
        self.queue = demo._queue
        self.per_session, self.per_address = per_session, per_address
        self._push: Callable[..., Awaitable[tuple[bool, Any, str]]] = self.queue.push
        self._joining: Counter[tuple[str, str]] = Counter()  # requests between this check and their place

    async def __call__(self, body: Any, request: fastapi.Request, username: str | None) -> tuple[bool, Any, str]:
        keys = self._keys(body.session_hash, request)
        queued = (event for events in self.queue.event_queue_per_concurrency_id.values() for event in events.queue)
        waiting = Counter(key for event in queued for key in self._keys(event.session_hash, event.request))
        limits = {"session": self.per_session, "address": self.per_address}
        for key in keys:
            if waiting[key] + self._joining[key] >= limits[key[0]]:
                who = "This session" if key[0] == "session" else "Your address"
                return False, f"{who} already has {limits[key[0]]} requests waiting in the queue, {WAIT}", "queue_full"
        self._joining.update(keys)
        try:
            return await self._push(body=body, request=request, username=username)
        finally:
            self._joining.subtract(keys)
            for key in keys:
                if not self._joining[key]:
                    del self._joining[key]

    def _keys(self, session_hash: str | None, request: fastapi.Request | None) -> list[tuple[str, str]]:
        """What a request counts against: its session, and on a public server its client address."""
        keys = [("session", session_hash)] if session_hash else []
        address = public_address(request, public=self.per_address is not None)
        return keys + ([("address", address)] if address else [])


def public_address(request: fastapi.Request | gr.Request | None, public: bool) -> str | None:
    """The client address a public server counts a visitor's queue places and memory against; None on a local
    server, where every visitor is the owner, and for a request without a client."""
    if not public or request is None or request.client is None:
        return None
    return request.client.host


def share_queue(demo: gr.Blocks, per_session: int, per_address: int | None) -> None:
    """Give each session (and with `per_address`, each client address) at most that many of `demo`'s waiting
    places. Call it after `demo.queue()`, which makes a new queue."""
    demo._queue.push = FairShare(demo, per_session, per_address)
