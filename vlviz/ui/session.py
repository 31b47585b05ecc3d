"""What every tab shares: the session (its analysis with the model that encoded it, its runs, its files), and
the tab protocol.

The tab protocol: each tab module builds its components and wires them to callbacks that return (or yield)
`{component: value}` updates (`Updates`), every component an event may update listed in its `outputs`. A tab
that draws the session's analysis by itself, once, when it comes into view passes its draw function to
`draw_on_first_view`, the one gate every tab shares. Callbacks are thin adapters: they call the library and
turn its `ValueError`s into `gr.Error`s, which Gradio shows as a message (and returns to API clients) without
touching what is already on screen.
"""

from __future__ import annotations

import functools
import inspect
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component

from vlviz.data.formats import pairs_from_dataset_uploads
from vlviz.data.inputs import InputError, PairSet, pairs_from_uploads
from vlviz.models.encoding import EncodedPairs, VLModel, encode_pair_set
from vlviz.models.loading import (
    DEFAULT_ONLINE_SPEC,
    GROUNDED_SPEC,
    OFFLINE_SPEC,
    ModelUnavailableError,
    load_model,
    load_model_or_offline,
)
from vlviz.models.policy import ModelPolicy, is_public
from vlviz.ui.agents import fetch
from vlviz.ui.fair_share import public_address
from vlviz.ui.memory import LEDGER, KeptAnalyses
from vlviz.ui.messages import refusal
from vlviz.ui.runner import Runner
from vlviz.viz.html import markdown_code, markdown_text

MODEL_CHOICES = [
    OFFLINE_SPEC,
    GROUNDED_SPEC,
    DEFAULT_ONLINE_SPEC,
    "ViT-B-16:openai",
    "ViT-B-16-SigLIP:webli",
    "RN50:openai",
]
DATA_DIR = Path(os.environ.get("VLVIZ_DATA_DIR") or Path(tempfile.gettempdir()) / "vlviz")
"""Where sessions keep their files: DATA_DIR/sessions/TOKEN/{exports,runs}. Never served as such: Gradio
serves only the copies of the files a callback returns. It must lie outside Gradio's own folder
(`GRADIO_TEMP_DIR`), whose every file Gradio serves, and inside the system's temp folder or the working
directory, the only places Gradio copies returned files from without an `allowed_paths` entry."""
SESSION_TTL_S = float(os.environ.get("VLVIZ_SESSION_TTL_S", 4 * 3600))
"""A session's files (and Gradio's copies of the files it was sent) go this long after its last use."""
SWEEP_EVERY_S = 60.0
ANALYSIS_CONCURRENCY = int(os.environ.get("VLVIZ_ANALYSIS_CONCURRENCY", 3))
"""Analyze, Consistency and Embedding space calls that run at once (one queue): a large set holds one slot."""
VIEW_CONCURRENCY = 4  # Grounding and Keywords: light calls on already-encoded pairs
ANALYSIS_EVENT = {"show_progress": "minimal", "concurrency_id": "analysis", "concurrency_limit": ANALYSIS_CONCURRENCY}
"""Event settings of the views that encode whole pair sets: one queue, a large set holds one slot."""
VIEW_EVENT = {"show_progress": "minimal", "concurrency_id": "views", "concurrency_limit": VIEW_CONCURRENCY}
ANALYSIS_BUSY = (
    "This session is already running an analysis (Analyze, Consistency, Embedding space, a comparison or the "
    "lens): wait for it to end, then try again."
)


def check_data_dir(data_dir: Path = DATA_DIR) -> None:
    """Refuse a `VLVIZ_DATA_DIR` that Gradio would serve whole, or one it cannot return files from."""
    folder = data_dir.resolve()
    gradio_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    if folder == gradio_dir or gradio_dir in folder.parents or folder in gradio_dir.parents:
        raise ValueError(f"VLVIZ_DATA_DIR ({folder}) must not contain or lie inside GRADIO_TEMP_DIR ({gradio_dir}).")
    roots = [Path(tempfile.gettempdir()).resolve(), Path.cwd().resolve()]
    if not any(root == folder or root in folder.parents for root in roots):
        raise ValueError(f"VLVIZ_DATA_DIR ({folder}) must lie inside {roots[0]} or the working directory.")


class SessionBusy(gr.Error):
    """A second call of a kind a session runs one at a time (`Session.exclusive`, a training)."""


@dataclass(frozen=True, eq=False)
class Analysis:
    """A session's analysed pairs with the model that encoded them: what every tab and endpoint reads."""

    encoded: EncodedPairs
    model: VLModel | None  # None for pairs a view link handed over: `Session.model_of` loads theirs by name

    @property
    def pairs(self) -> PairSet:
        return self.encoded.pairs

    @property
    def serial(self) -> int:
        return self.encoded.serial

    @property
    def model_name(self) -> str:
        return self.encoded.model_name


class Session:
    """One browser session's engine: its server-side identity, its analysis and its training runs.

    Kept in a `gr.State` (one object per browser session, never copied), so nothing the client sends (its
    session hash included) ever names a path: a random token, made here, names its folder. It holds the pairs
    last analysed with the model that encoded them (`analysis`, gone `SESSION_TTL_S` after an Analyze, as a
    client's state would be), which every tab reads, and its runs (`runner`), the only checkpoints it may load in
    public mode. It keeps the session to its share: one heavy analysis at a time (`exclusive`), one training at a
    time within a disk budget (`vlviz.ui.runner.Runner`).
    """

    def __init__(self, policy: ModelPolicy) -> None:
        self.token = secrets.token_hex(16)
        self.folder = DATA_DIR / "sessions" / self.token
        self.policy = policy
        self.runner = Runner(self.folder)
        self.last_used = time.monotonic()
        self.closed = False
        self._lock = threading.Lock()
        self._busy: dict[str, str] = {}  # "analysis" -> the message a second such call gets
        self._analysis: tuple[float, Analysis] | None = None  # when it was held, and what

    def __deepcopy__(self, memo: dict) -> Session:
        return self  # gr.State deep-copies values; a session is one object, shared by its events

    # --- the analysis ---------------------------------------------------------------------------
    def hold(self, encoded: EncodedPairs, model: VLModel | None, address: str | None = None) -> Analysis:
        """Make `encoded` (with `model`, which encoded it) the pairs every tab reads, counted by the memory ledger
        against this session (and, on a public server, the client `address`) in place of the previous ones."""
        analysis = Analysis(encoded, model)
        LEDGER.hold(self.token, encoded, address)
        self._analysis = (time.monotonic(), analysis)
        return analysis

    @property
    def analysis(self) -> Analysis | None:
        """The pairs last analysed and their model, or None (none yet, or analysed more than `SESSION_TTL_S` ago)."""
        self.expire()
        return self._analysis[1] if self._analysis else None

    def analyzed(self, why: str) -> Analysis:
        """The session's analysis; when there is none, a refusal ending in `why`."""
        analysis = self.analysis
        if analysis is None:
            raise refusal(f"Analyze a set of pairs first: {why}")
        return analysis

    def model_of(self, analysis: Analysis) -> VLModel:
        """The model that encoded `analysis`: its own, or for pairs a link handed over, the model it names."""
        return analysis.model or self.model_for(analysis.model_name)[0]

    def expire(self) -> None:
        """Drop the analysis once it is `SESSION_TTL_S` old: an API session never closes, and would hold it for ever."""
        if self._analysis is not None and time.monotonic() - self._analysis[0] > SESSION_TTL_S:
            self._analysis = None
            LEDGER.release(self.token)

    # --- models ---------------------------------------------------------------------------------
    def model_for(self, spec: str | None) -> tuple[VLModel, str | None]:
        """The model named by `spec` if this server's policy allows it (cached per process), or the offline
        model with a notice why `spec` could not be loaded. The session's own checkpoints are always allowed."""
        spec = (spec or OFFLINE_SPEC).strip()
        try:
            folder = self.checkpoint(spec)
            if folder is not None:
                return load_model(str(folder), name=spec), None
            self.policy.check(spec)
            return load_model_or_offline(spec)
        except (ValueError, ModelUnavailableError) as error:
            raise refusal(error) from error

    def checkpoint(self, spec: str) -> Path | None:
        """The folder of this session's checkpoint named `spec` ('session run N'), or None when `spec` names none."""
        return self.runner.checkpoint(spec)

    # --- files and slots ------------------------------------------------------------------------
    def export_folder(self, view: str) -> Path:
        """An empty folder for one view's downloads; the previous ones are removed (one set per view)."""
        folder = self.folder / "exports" / view
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.last_used = time.monotonic()
        return folder

    @contextmanager
    def exclusive(self, kind: str, busy: str = ANALYSIS_BUSY) -> Iterator[None]:
        """Hold this session's one slot of `kind` (e.g. "analysis") for the block. Meanwhile another call of
        that kind from this session is refused at once with `busy`, instead of taking a second worker (or
        waiting place) from everyone else."""
        with self._lock:
            if kind in self._busy:
                raise refusal(self._busy[kind], SessionBusy)
            self._busy[kind] = busy
        try:
            yield
        finally:
            with self._lock:
                del self._busy[kind]

    def close(self) -> None:
        """Stop this session's trainings and delete its files; its analysis no longer counts against its budget."""
        self.closed = True
        LEDGER.release(self.token)  # Gradio drops the session's states; links it kept stay until evicted
        self.runner.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class SessionRegistry:
    """Live sessions, so that `demo.unload` and an age sweep can remove their files, and analyses expire.

    Unload tells only the client's session hash, so each session is also listed under the hash of
    the requests it served; the hash never names anything on disk.
    """

    def __init__(self) -> None:
        self._by_hash: dict[str, Session] = {}
        self._all: weakref.WeakSet[Session] = weakref.WeakSet()  # every session Gradio still holds
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    def new(self, policy: ModelPolicy) -> Session:
        self.sweep()
        session = Session(policy)
        with self._lock:
            self._all.add(session)
        return session

    def bind(self, session: Session, request: gr.Request | None) -> None:
        """Note that `session` served this request (for unload), and that it is in use (for the sweep).

        A session that reconnects after its tab seemed closed (a dropped connection) is open again.
        """
        session.last_used, session.closed, session.runner.closed = time.monotonic(), False, False
        if request is not None and request.session_hash:
            with self._lock:
                self._by_hash[request.session_hash] = session

    def end(self, request: gr.Request) -> None:
        """The browser tab closed: delete that session's files now."""
        with self._lock:
            session = self._by_hash.pop(request.session_hash or "", None)
        if session is not None:
            session.close()

    def expire(self) -> None:
        """Drop the analyses held longer than `SESSION_TTL_S` (`Session.expire`)."""
        with self._lock:
            sessions = list(self._all)
        for session in sessions:
            session.expire()

    def sweep(self, max_age_s: float = SESSION_TTL_S, force: bool = False) -> None:
        """Close sessions unused for `max_age_s` and delete session folders that no live session owns."""
        now = time.monotonic()
        if not force and now - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = now
        with self._lock:
            idle = [h for h, s in self._by_hash.items() if now - s.last_used > max_age_s and not s.runner.training]
            sessions = [self._by_hash.pop(h) for h in idle]
            live = {s.token for s in self._by_hash.values()}
        for session in sessions:
            session.close()
        root = DATA_DIR / "sessions"
        for folder in root.iterdir() if root.is_dir() else []:
            if folder.name not in live and time.time() - folder.stat().st_mtime > max_age_s:
                shutil.rmtree(folder, ignore_errors=True)


SESSIONS = SessionRegistry()


KEPT = KeptAnalyses(LEDGER, SESSION_TTL_S)  # the analyses handed to talk pages and view links


def expire_analyses() -> None:
    """Drop what outlived its time: analyses kept for links and talks, and sessions' analyses."""
    KEPT.expire()
    SESSIONS.expire()


@dataclass(frozen=True)
class WantedView:
    """The pair (1-based) and word (0-based) a view link asks the Grounding tab to show first."""

    pair: int | None = None
    word: int | None = None


def pairs_state() -> gr.State:
    """A gr.State for what holds a session's pairs (an analysis, views drawn from it): it expires
    `SESSION_TTL_S` after it was last set, since an API session never closes and Gradio would keep it forever."""
    return gr.State(None, time_to_live=SESSION_TTL_S)


def model_status(model: VLModel, notice: str | None) -> str:
    """One line saying which model runs where, plus any notice."""
    line = f"**Model:** {markdown_code(model.name)} on `{model.device}` ({str(model.dtype).removeprefix('torch.')})"
    return line + (f"\n\n> {markdown_text(notice)}" if notice else "")


def analyze_uploads(
    files: list[str] | None,
    captions_text: str | None,
    model_spec: str | None,
    session: Session,
    own_host: str | None = None,
    address: str | None = None,
) -> tuple[Analysis, str | None]:
    """Read the uploads and encode them with the chosen model: the session's new analysis, and the model's notice.

    Every file must be one of this server's uploads (a URL is downloaded, or read in place when it names
    this server, `own_host`); the decoded images and their embeddings must fit the room the memory ledger
    reserves for this session, checked from the image headers before decoding and from the model's
    widths before encoding; on a public server, `address` (the client's) shares one budget among its sessions.
    """
    model, notice = session.model_for(model_spec)
    paths = [fetch(str(f), own_host) for f in files or []]  # a URL (from an agent) becomes a local file
    with LEDGER.reserve(session.token, address) as room:
        try:
            pairs = pairs_from_dataset_uploads(paths, captions_text, room) or pairs_from_uploads(
                paths, captions_text, memory=room
            )
            room.take(model.encoded_bytes(len(pairs)), f"These {len(pairs)} pairs with {model.name}'s embeddings")
        except InputError as error:
            raise refusal(error) from error
        analysis = session.hold(encode_pair_set(model, pairs), model, address)
    return analysis, notice


def client_address(request: gr.Request | None) -> str | None:
    """The address this server counts a client's memory against (`fair_share.public_address`: None unless public)."""
    return public_address(request, is_public())


def current_tab(event: gr.SelectData) -> str:
    """The label of the tab just selected (kept in a gr.State, so views can tell whether they are in view)."""
    return str(event.value)


def downloads_row(view: str, contents: str) -> tuple[gr.Button, gr.File]:
    """A view's "Prepare downloads" button beside the files it writes (elem ids `VIEW-downloads[-button]`)."""
    with gr.Row():
        prepare = gr.Button("Prepare downloads", scale=1, elem_id=f"{view}-downloads-button")
        files = gr.File(
            label=f"Downloads: {contents}", file_count="multiple", interactive=False, scale=4,
            elem_id=f"{view}-downloads",
        )  # fmt: skip
    return prepare, files


Updates = dict[Component, Any]
"""What a callback returns (or yields): each component to update and its value; the others stay as they are."""
GATE_PARAMETERS = ("gate_session", "gate_drawn", "gate_tab")  # what `first_view_gate` takes after the draw's own


@dataclass(frozen=True)
class SessionStates:
    """The states every tab wires to, made once by the app."""

    session: gr.State  # the `Session`
    analysed: gr.State  # the serial of the session's analysis: Analyze sets it, and its change draws the tab in view
    shown_tab: gr.State  # the label of the tab in view


def draw_on_first_view(
    draw: Callable[..., Updates | Iterator[Updates]], tab: gr.Tab, label: str, states: SessionStates,
    inputs: list[Component], outputs: list[Component], event: dict | None = None,
) -> None:  # fmt: skip
    """Wire `draw` to draw the session's analysis when its tab is selected, and when an Analyze ends while the
    tab is in view, once per analysis: `draw` takes `inputs` (and, as any callback, gr.Request and gr.Progress
    where its signature asks for them) and returns or yields updates of `outputs`.

    `event`: the queue settings (default `ANALYSIS_EVENT`, for views over the whole pair set)."""
    drawn = gr.State(None)  # the serial of the analysis this tab drew
    gate, settings = first_view_gate(draw, label, drawn), event or ANALYSIS_EVENT
    updated = [*outputs, drawn]
    tab.select(gate, [*inputs, states.session, drawn, gr.State(label)], updated, api_visibility="private", **settings)
    states.analysed.change(
        gate, [*inputs, states.session, drawn, states.shown_tab], updated, api_visibility="private", **settings
    )


def first_view_gate(draw: Callable[..., Any], label: str, drawn: gr.State) -> Callable[..., Any]:
    """`draw`, run only when the tab `label` is in view and has not drawn the session's analysis yet (its serial
    then goes to `drawn`), and drawing nothing instead of a refusal when the session is busy: a tab shown while
    an Analyze runs would otherwise toast one, and the Analyze's end draws the tab anyway.

    The gate takes `draw`'s parameters, then the session, the serial drawn and the tab in view
    (`GATE_PARAMETERS`); its signature says so, since Gradio reads it to pass gr.Request and gr.Progress where
    `draw` asks for them."""

    def ready(args: tuple[Any, ...]) -> tuple[list[Any], int | None]:
        """`draw`'s arguments, and the serial to draw (None: nothing to draw)."""
        *values, session, shown, tab = args
        analysis = session.analysis if tab == label else None
        return values, None if analysis is None or analysis.serial == shown else analysis.serial

    if inspect.isgeneratorfunction(draw):

        def gate(*args: Any) -> Iterator[Updates]:
            values, serial = ready(args)
            if serial is None:
                yield gr.skip()
                return
            try:
                for updates in draw(*values):
                    yield updates | {drawn: serial}
            except SessionBusy:
                yield gr.skip()

    else:

        def gate(*args: Any) -> Updates:
            values, serial = ready(args)
            if serial is None:
                return gr.skip()
            try:
                return draw(*values) | {drawn: serial}
            except SessionBusy:
                return gr.skip()

    functools.update_wrapper(gate, draw)
    signature = inspect.signature(draw)
    extra = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in GATE_PARAMETERS]
    gate.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    return gate
