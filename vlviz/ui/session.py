"""What every tab shares: the session's server-side space, its analysed pairs, and loading the chosen model.

Callbacks here are thin adapters: they call the library and turn its `ValueError`s into
`gr.Error`s, which Gradio shows as a message (and returns to API clients) without touching what is
already on screen.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from vlviz.data.formats import pairs_from_dataset_uploads
from vlviz.data.inputs import InputError, pairs_from_uploads
from vlviz.encoding import EncodedPairs, VLModel, encode_pair_set
from vlviz.models import DEFAULT_ONLINE_SPEC, OFFLINE_SPEC, ModelUnavailableError, load_model, load_model_or_offline
from vlviz.policy import ModelPolicy
from vlviz.ui.agents import fetch

MODEL_CHOICES = [OFFLINE_SPEC, DEFAULT_ONLINE_SPEC, "ViT-B-16:openai", "ViT-B-16-SigLIP:webli", "RN50:openai"]
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
CHECKPOINT_PREFIX = "session run "  # the model spec of a checkpoint this session trained: "session run 2"


def check_data_dir(data_dir: Path = DATA_DIR) -> None:
    """Refuse a `VLVIZ_DATA_DIR` that Gradio would serve whole, or one it cannot return files from."""
    folder = data_dir.resolve()
    gradio_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    if folder == gradio_dir or gradio_dir in folder.parents or folder in gradio_dir.parents:
        raise ValueError(f"VLVIZ_DATA_DIR ({folder}) must not contain or lie inside GRADIO_TEMP_DIR ({gradio_dir}).")
    roots = [Path(tempfile.gettempdir()).resolve(), Path.cwd().resolve()]
    if not any(root == folder or root in folder.parents for root in roots):
        raise ValueError(f"VLVIZ_DATA_DIR ({folder}) must lie inside {roots[0]} or the working directory.")


class SessionSpace:
    """One browser session's server-side identity: a random token, made here, names its folder.

    Kept in a `gr.State`, so nothing the client sends (its session hash included) ever names a
    path; it also holds the session's trained checkpoints (the only paths it may load in public
    mode) and the stop flags of its running trainings.
    """

    def __init__(self, policy: ModelPolicy) -> None:
        self.token = secrets.token_hex(16)
        self.folder = DATA_DIR / "sessions" / self.token
        self.policy = policy
        self.checkpoints: dict[str, Path] = {}  # "session run N" -> checkpoint folder
        self.stop_flags: dict[str, threading.Event] = {}  # run name -> its stop event, while it trains
        self.last_used = time.monotonic()
        self.closed = False

    def __deepcopy__(self, memo: dict) -> SessionSpace:
        return self  # gr.State deep-copies values; a session is one object, shared by its events

    def export_folder(self, view: str) -> Path:
        """An empty folder for one view's downloads; the previous ones are removed (one set per view)."""
        folder = self.folder / "exports" / view
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.last_used = time.monotonic()
        return folder

    def run_folder(self, number: int) -> Path:
        self.last_used = time.monotonic()
        return self.folder / "runs" / f"run-{number}"

    def checkpoint(self, spec: str) -> Path | None:
        """The folder of this session's checkpoint named `spec`, or None when `spec` names none."""
        folder = self.checkpoints.get(spec)
        if folder is not None and not folder.is_dir():
            raise ValueError(f"{spec} is no longer stored: sessions' files are removed after some hours unused.")
        return folder

    def close(self) -> None:
        """Stop this session's trainings and delete its files."""
        self.closed = True
        for flag in list(self.stop_flags.values()):
            flag.set()
        shutil.rmtree(self.folder, ignore_errors=True)


class SessionRegistry:
    """Live sessions, so that `demo.unload` and an age sweep can remove their files.

    Unload tells only the client's session hash, so each session is also listed under the hash of
    the requests it served; the hash never names anything on disk.
    """

    def __init__(self) -> None:
        self._by_hash: dict[str, SessionSpace] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    def new(self, policy: ModelPolicy) -> SessionSpace:
        self.sweep()
        return SessionSpace(policy)

    def bind(self, space: SessionSpace, request: gr.Request | None) -> None:
        """Note that `space` served this request (for unload), and that it is in use (for the sweep).

        A session that reconnects after its tab seemed closed (a dropped connection) is open again.
        """
        space.last_used, space.closed = time.monotonic(), False
        if request is not None and request.session_hash:
            with self._lock:
                self._by_hash[request.session_hash] = space

    def end(self, request: gr.Request) -> None:
        """The browser tab closed: delete that session's files now."""
        with self._lock:
            space = self._by_hash.pop(request.session_hash or "", None)
        if space is not None:
            space.close()

    def sweep(self, max_age_s: float = SESSION_TTL_S, force: bool = False) -> None:
        """Close sessions unused for `max_age_s` and delete session folders that no live session owns."""
        now = time.monotonic()
        if not force and now - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = now
        with self._lock:
            idle = [h for h, s in self._by_hash.items() if now - s.last_used > max_age_s and not s.stop_flags]
            spaces = [self._by_hash.pop(h) for h in idle]
            live = {s.token for s in self._by_hash.values()}
        for space in spaces:
            space.close()
        root = DATA_DIR / "sessions"
        for folder in root.iterdir() if root.is_dir() else []:
            if folder.name not in live and time.time() - folder.stat().st_mtime > max_age_s:
                shutil.rmtree(folder, ignore_errors=True)


SESSIONS = SessionRegistry()

MAX_KEPT_ANALYSES = 64  # analyses kept for links (talks, views), all sessions together; the oldest go first


class KeptAnalyses:
    """Analyses handed from an app session to another page (a talk, a view link): token -> (analysis, model spec).

    The token is made here (random, 128 bits) and only ever looked up; entries are bounded and expire with sessions.
    """

    def __init__(self, capacity: int = MAX_KEPT_ANALYSES, ttl_s: float = SESSION_TTL_S) -> None:
        self._kept: OrderedDict[str, tuple[float, EncodedPairs, str]] = OrderedDict()
        self._capacity, self._ttl_s = capacity, ttl_s
        self._lock = threading.Lock()

    def put(self, analysis: EncodedPairs, model_spec: str) -> str:
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._kept[token] = (time.monotonic(), analysis, model_spec)
            while len(self._kept) > self._capacity:
                self._kept.popitem(last=False)
        return token

    def get(self, token: str | None) -> tuple[EncodedPairs, str] | None:
        """The analysis under `token`, or None (unknown, expired, or no token): a dictionary lookup, nothing else."""
        if not token:
            return None
        with self._lock:
            entry = self._kept.get(token)
            if entry is None or time.monotonic() - entry[0] > self._ttl_s:
                self._kept.pop(token, None)
                return None
            return entry[1], entry[2]


KEPT = KeptAnalyses()  # the analyses handed to talk pages and view links


@dataclass(frozen=True)
class WantedView:
    """The pair (1-based) and word (0-based) a view link asks the Grounding tab to show first."""

    pair: int | None = None
    word: int | None = None


def model_for(spec: str | None, space: SessionSpace) -> tuple[VLModel, str | None]:
    """The model named by `spec` if this server's policy allows it (cached per process), or the offline
    model with a notice why `spec` could not be loaded. The session's own checkpoints are always allowed."""
    spec = (spec or OFFLINE_SPEC).strip()
    try:
        folder = space.checkpoint(spec)
        if folder is not None:
            return load_model(str(folder), name=spec), None
        space.policy.check(spec)
        return load_model_or_offline(spec)
    except (ValueError, ModelUnavailableError) as error:
        raise gr.Error(str(error)) from error


def model_status(model: VLModel, notice: str | None) -> str:
    """One line saying which model runs where, plus any notice."""
    line = f"**Model:** `{model.name}` on `{model.device}` ({str(model.dtype).removeprefix('torch.')})"
    return line + (f"\n\n> {notice}" if notice else "")


def analyze_uploads(
    files: list[str] | None, captions_text: str | None, model_spec: str | None, space: SessionSpace
) -> tuple[EncodedPairs, VLModel, str | None]:
    """Read the uploads and encode them with the chosen model: the session's analysis, the model, its notice."""
    paths = [fetch(str(f)) for f in files or []]  # a URL (from an agent) becomes a local file
    try:
        pairs = pairs_from_dataset_uploads(paths, captions_text) or pairs_from_uploads(paths, captions_text)
    except InputError as error:
        raise gr.Error(str(error)) from error
    model, notice = model_for(model_spec, space)
    return encode_pair_set(model, pairs), model, notice


def analyzed(analysis: EncodedPairs | None, why: str) -> EncodedPairs:
    """The pairs Analyze encoded in this session; when there are none yet, a message ending in `why`."""
    if analysis is None:
        raise gr.Error(f"Analyze a set of pairs first: {why}")
    return analysis


def first_view(analysis: EncodedPairs | None, drawn: int | None, visible: bool) -> bool:
    """Whether a tab should draw now: it is in view and has not drawn the pairs last analyzed yet."""
    return visible and analysis is not None and drawn != analysis.serial


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


def draw_on_first_view(
    draw: Callable[..., object], tab: gr.Tab, label: str, analysis: gr.State, current: gr.State,
    inputs: list[gr.components.Component], outputs: list[gr.components.Component], event: dict | None = None,
) -> None:  # fmt: skip
    """Wire `draw` (its last input: the tab in view) to run when its tab is selected, and when an Analyze
    finishes while the tab is in view; `draw` skips when it already shows the pairs last analyzed.

    `event`: the queue settings (default `ANALYSIS_EVENT`, for views over the whole pair set)."""
    settings = event or ANALYSIS_EVENT
    tab.select(draw, [*inputs, gr.State(label)], outputs, api_visibility="private", **settings)
    analysis.change(draw, [*inputs, current], outputs, api_visibility="private", **settings)
