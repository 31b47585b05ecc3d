"""What visitors make the server hold, in bytes: each session's analysis and the analyses kept for links.

Pairs are the one thing a visitor can make the server keep in memory for hours (an upload's decoded
images, its embeddings), so they are counted in bytes against two budgets: one per session
(`VLVIZ_SESSION_MEMORY_MB`) and one for the process (`VLVIZ_MEMORY_BUDGET_MB`). An Analyze reserves
its share before reading a byte and passes it to the readers as their decoded-bytes bound
(`vlviz.data.inputs.decoded_bytes`, from the image headers), so nothing past the budget is decoded;
once encoded, the analysis is held in place of the session's previous one. The analyses kept for
view links and talks (`KeptAnalyses`) count too: the oldest go first when the process needs room,
and a session keeps at most a few. One analysis held by its session and kept for a link counts once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from vlviz.encoding import EncodedPairs
from vlviz.ui.messages import refusal

MB = 2**20
SESSION_MEMORY_BYTES = int(float(os.environ.get("VLVIZ_SESSION_MEMORY_MB", 1024)) * MB)
"""Most bytes one session's pairs may take (decoded images and embeddings), its kept links included."""
MEMORY_BUDGET_BYTES = int(float(os.environ.get("VLVIZ_MEMORY_BUDGET_MB", 4096)) * MB)
"""Most bytes all sessions' pairs may take together, analyses in progress and kept ones included."""
MIN_RESERVATION_BYTES = 16 * MB
"""Below this much room an Analyze is refused at once rather than started (a few hundred small pairs)."""
MAX_KEPT_PER_SESSION = 4
"""Analyses one session keeps for links and talks; its oldest go first."""


def return_freed_memory() -> None:
    """Hand the pages freed since the last call back to the system (glibc's `malloc_trim`).

    An analysis is hundreds of small and large blocks; once freed, glibc keeps most of them in its heaps, so the
    resident set of a server whose visitors have left stays at its peak. Called when sessions end.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, ...): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Reservation:
    """The bytes an Analyze in progress may fill: the readers' bound, then what the kept analysis may take."""

    allowed: int


class MemoryLedger:
    """Bytes held per owner (a session's current analysis, a kept link), each analysis counted once, and
    reservations of analyses in progress, against the process budget; thread-safe."""

    def __init__(self, budget: int = MEMORY_BUDGET_BYTES, session_budget: int = SESSION_MEMORY_BYTES) -> None:
        self.budget, self.session_budget = budget, session_budget
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (analysis serial, bytes)
        self._reserved = 0
        self._lock = threading.Lock()
        self.make_room = lambda needed: None  # KEPT frees kept analyses here (set below)

    def used(self) -> int:
        """Bytes held (each analysis once) plus bytes reserved."""
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(dict(self._held.values()).values()) + self._reserved

    @contextlib.contextmanager
    def reserve(self, owner: str) -> Iterator[Reservation]:
        """Room for one analysis of `owner`: its session's budget, less what its kept links hold, at most what the
        process has free (kept analyses of any session are evicted, oldest first, to make it).

        Raises:
            gr.Error: The server holds as many pairs as it may right now.
        """
        wanted = self.session_budget - self.held_by(owner, kept_only=True)
        self.make_room(wanted)
        with self._lock:
            allowed = min(wanted, self.budget - self._used())
            if allowed < MIN_RESERVATION_BYTES:
                raise refusal(
                    "The server holds as many pairs as it can right now (other visitors' analyses); try again in a "
                    "few minutes, or analyze fewer pairs."
                )
            self._reserved += allowed
        try:
            yield Reservation(allowed)
        finally:
            with self._lock:
                self._reserved -= allowed

    def hold(self, owner: str, analysis: EncodedPairs) -> None:
        """`owner` now holds `analysis` (in place of what it held)."""
        with self._lock:
            self._held[owner] = (analysis.serial, analysis.nbytes)

    def release(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)

    def held_by(self, session: str, kept_only: bool = False) -> int:
        """Bytes a session's own analysis and its kept links hold (keys `session` and `session/kept/...`)."""
        with self._lock:
            mine = {
                serial: size
                for owner, (serial, size) in self._held.items()
                if owner.startswith(f"{session}/kept/") or (owner == session and not kept_only)
            }
            return sum(mine.values())


LEDGER = MemoryLedger()


class KeptAnalyses:
    """Analyses handed from an app session to another page (a talk, a view link): token -> (analysis, model spec).

    The token is made here (random, 128 bits) and only ever looked up. Entries count in bytes against
    the ledger (an analysis kept twice, or also on its session's screen, counts once): a session keeps
    at most MAX_KEPT_PER_SESSION, the same analysis under one token, and the oldest of any session go
    when the process needs room; all expire with sessions.
    """

    def __init__(self, ledger: MemoryLedger, ttl_s: float) -> None:
        self._kept: OrderedDict[str, tuple[float, EncodedPairs, str, str]] = OrderedDict()
        self._ledger, self._ttl_s = ledger, ttl_s
        self._lock = threading.Lock()
        ledger.make_room = self.make_room

    def put(self, analysis: EncodedPairs, model_spec: str, session: str) -> str:
        """Keep `analysis` for a link of `session` (a session token); the token to look it up by."""
        with self._lock:
            for token, (_, kept, spec, owner) in self._kept.items():
                if kept is analysis and spec == model_spec and owner == session:
                    self._kept.move_to_end(token)
                    return token
            mine = [token for token, entry in self._kept.items() if entry[3] == session]
            for token in mine[: max(0, len(mine) - MAX_KEPT_PER_SESSION + 1)]:
                self._drop(token)
            token = secrets.token_urlsafe(16)
            self._kept[token] = (time.monotonic(), analysis, model_spec, session)
        self._ledger.hold(f"{session}/kept/{token}", analysis)
        self.make_room(0)
        return token

    def get(self, token: str | None) -> tuple[EncodedPairs, str] | None:
        """The analysis under `token`, or None (unknown, expired, or no token): a dictionary lookup, nothing else."""
        if not token:
            return None
        with self._lock:
            entry = self._kept.get(token)
            if entry is None or time.monotonic() - entry[0] > self._ttl_s:
                if entry is not None:
                    self._drop(token)
                return None
            return entry[1], entry[2]

    def make_room(self, needed: int) -> None:
        """Drop kept analyses, oldest first, until the ledger has `needed` bytes free (or none is kept)."""
        with self._lock:
            while self._kept and self._ledger.budget - self._ledger.used() < needed:
                self._drop(next(iter(self._kept)))

    def expire(self) -> None:
        """Drop the analyses kept longer than their time to live (a lookup finds them gone anyway)."""
        now = time.monotonic()
        with self._lock:
            for token in [t for t, entry in self._kept.items() if now - entry[0] > self._ttl_s]:
                self._drop(token)

    def _drop(self, token: str) -> None:
        _, _, _, session = self._kept.pop(token)
        self._ledger.release(f"{session}/kept/{token}")
