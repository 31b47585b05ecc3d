"""What visitors make the server hold, in bytes: each session's analysis and the analyses kept for links.

Pairs are the one thing a visitor can make the server keep in memory for hours (an upload's decoded
images, its embeddings), so they are counted in bytes against budgets: one per session
(`VLVIZ_SESSION_MEMORY_MB`), one per client address on a public server (`VLVIZ_ADDRESS_MEMORY_MB`) and one
for the process (`VLVIZ_MEMORY_BUDGET_MB`). An Analyze takes its bytes as its readers decode, image by image
from the headers before any pixel is decoded (`Reservation`, a `vlviz.data.inputs.ByteBudget`), then its
embeddings' bytes before encoding; once encoded, the analysis is held in place of the session's previous
one. The analyses kept for view links and talks (`KeptAnalyses`) count too: the oldest go first when the
process needs room, and a session keeps at most a few. One analysis held by its session and kept for a link
counts once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vlviz.data.inputs import ByteBudget, return_freed_memory
from vlviz.models.encoding import EncodedPairs
from vlviz.ui.messages import refusal

MB = 2**20
SESSION_MEMORY_BYTES = int(float(os.environ.get("VLVIZ_SESSION_MEMORY_MB", 1024)) * MB)
"""Most bytes one session's pairs may take (decoded images and embeddings), its kept links included."""
MEMORY_BUDGET_BYTES = int(float(os.environ.get("VLVIZ_MEMORY_BUDGET_MB", 4096)) * MB)
"""Most bytes all sessions' pairs may take together, analyses in progress and kept ones included."""
ADDRESS_MEMORY_BYTES = int(float(os.environ.get("VLVIZ_ADDRESS_MEMORY_MB", MEMORY_BUDGET_BYTES / 2 / MB)) * MB)
"""Most bytes the sessions of one client address may take together on a public server (a visitor opens as many
sessions as it likes); by default half the process's budget, so one address never holds all of it."""
MIN_RESERVATION_BYTES = 16 * MB
"""Below this much room an Analyze is refused at once rather than started (a few hundred small pairs)."""
MAX_KEPT_PER_SESSION = 4
"""Analyses one session keeps for links and talks; its oldest go first."""


def trim_heap_every(seconds: float, expire: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread that, every `seconds`, calls `expire` (drop what outlived its time) and returns freed
    heap pages: analyses are freed when Gradio replaces or expires a session's state, at no moment vlviz sees,
    and the resident set should follow."""

    def trim() -> None:
        while True:
            time.sleep(seconds)
            expire()
            return_freed_memory()

    thread = threading.Thread(target=trim, name="vlviz-heap-trim", daemon=True)
    thread.start()
    return thread


@dataclass
class Reservation(ByteBudget):
    """The bytes an Analyze in progress holds, taken from the ledger image by image as the readers decode
    (`ByteBudget.take`), never a share set aside up front: concurrent Analyzes of small sets all fit.

    `limit` is its session's budget less what the session's kept links hold.
    """

    ledger: MemoryLedger | None = None
    address: str | None = None

    def grant(self, nbytes: int) -> int | None:
        if self.taken + nbytes > self.limit:
            return self.limit
        assert self.ledger is not None
        return self.ledger.grant(self, nbytes)


class MemoryLedger:
    """Bytes held per owner (a session's current analysis, a kept link), each analysis counted once, and the
    bytes taken by analyses in progress, against the process budget; thread-safe.

    On a public server each owner also has the client address it came from: a visitor can open as many
    sessions as it likes, so one address may hold at most `address_budget` of the process's bytes.
    """

    def __init__(
        self, budget: int = MEMORY_BUDGET_BYTES, session_budget: int = SESSION_MEMORY_BYTES,
        address_budget: int = ADDRESS_MEMORY_BYTES,
    ) -> None:  # fmt: skip
        self.budget, self.session_budget, self.address_budget = budget, session_budget, address_budget
        self._held: dict[str, tuple[int, int, str | None]] = {}  # owner -> (analysis serial, bytes, address)
        self._open: list[Reservation] = []  # the analyses in progress
        self._lock = threading.Lock()
        self.make_room = lambda needed: None  # KEPT frees kept analyses here (set below)

    def used(self, address: str | None = None) -> int:
        """Bytes held (each analysis once) plus bytes taken by analyses in progress: all, or one address's."""
        with self._lock:
            return self._used(address)

    def _used(self, address: str | None = None) -> int:
        """Under `_lock`: the bytes held and taken (of `address` only, when given). A session's analysis counts
        until the next one replaces it: both are in memory while the next is read."""
        held = {serial: size for _, (serial, size, where) in self._held.items() if address is None or where == address}
        taken = sum(r.taken for r in self._open if address is None or r.address == address)
        return sum(held.values()) + taken

    def _free(self, address: str | None) -> tuple[int, int]:
        """Under `_lock`: the bytes the process, and `address` (the process's when None), have free."""
        process = self.budget - self._used()
        return process, process if address is None else self.address_budget - self._used(address)

    @contextlib.contextmanager
    def reserve(self, owner: str, address: str | None = None) -> Iterator[Reservation]:
        """An analysis in progress of `owner` (a session token), from `address` on a public server (None: not
        counted by address), which takes its bytes as it decodes, up to its session's budget less what its kept
        links hold, and at most what its address and the process have free.

        Raises:
            gr.Error: The server, or this address, has less than MIN_RESERVATION_BYTES free now.
        """
        reservation = Reservation(self.session_budget - self.kept_by(owner), ledger=self,
                                  address=address)  # fmt: skip
        self.make_room(MIN_RESERVATION_BYTES)
        with self._lock:
            process, mine = self._free(address)
            if min(process, mine) < MIN_RESERVATION_BYTES:
                whose = "your sessions'" if mine < process else "other visitors'"
                raise refusal(
                    f"The server holds as many pairs as it can right now ({whose} analyses); try again in a few "
                    "minutes, or analyze fewer pairs."
                )
            self._open.append(reservation)
        try:
            yield reservation
        finally:
            with self._lock:
                self._open.remove(reservation)

    def grant(self, reservation: Reservation, nbytes: int) -> int | None:
        """Let `reservation` take `nbytes` more if its address and the process have them (kept analyses of any
        session are evicted, oldest first, to make room); None when granted, else the most it could hold."""
        for attempt in range(2):
            with self._lock:
                process, mine = self._free(reservation.address)
                if nbytes <= min(process, mine):
                    reservation.taken += nbytes
                    return None
            if attempt == 0:
                self.make_room(nbytes)  # outside the lock: KEPT's eviction takes it
        return reservation.taken + max(0, min(process, mine))

    def hold(self, owner: str, analysis: EncodedPairs, address: str | None = None) -> None:
        """`owner` now holds `analysis` (in place of what it held), counted against `address` too when given."""
        with self._lock:
            self._held[owner] = (analysis.serial, analysis.nbytes, address)

    def release(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)

    def address_of(self, owner: str) -> str | None:
        """The client address `owner`'s analysis counts against, if any."""
        with self._lock:
            return self._held.get(owner, (0, 0, None))[2]

    def kept_by(self, session: str) -> int:
        """Bytes the links a session kept hold (owners `session/kept/...`), each analysis once."""
        with self._lock:
            kept = {
                serial: size for owner, (serial, size, _) in self._held.items() if owner.startswith(f"{session}/kept/")
            }
            return sum(kept.values())


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
        self._ledger.hold(f"{session}/kept/{token}", analysis, self._ledger.address_of(session))
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
