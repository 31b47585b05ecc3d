"""The hostile visitor of `bench.load` (issue 21): each attack of the issue, run beside the well-behaved sessions.

A browser calls any event of the page, private ones included ("Link to this view", "Open as a talk", a
page load with link parameters), by its `fn_index` through `/gradio_api/queue/join`; `RawSession` does
the same, with its own session hash, uploads and raw FileData paths, as a hostile client would. The
attack files are made once before the server starts, in a child process (the bombs are large in its
memory for a moment, never in the bench's), and deleted with the run's folder.

Each attack ends in one outcome: `refused` (a clear message) or `held` (answered, no harm seen) are what
a hardened server gives; `accepted` (a bomb went off, a budget was not there), `unescaped html`, `leak`,
`server file read` and `unexpected error` (Gradio's generic message, a crash, no answer) are not.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import secrets
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.load import OFFLINE_SPEC, ROOT, SCENES, dir_bytes, is_generic_error, rss_bytes, train_settings

REFUSED, HELD, NOT_RUN = "refused", "held", "not run"
ACCEPTED, HTML, LEAK = "accepted", "unescaped html", "leak"
FILE_READ, UNEXPECTED = "server file read", "unexpected error"
SEVERITY = [REFUSED, HELD, NOT_RUN, ACCEPTED, UNEXPECTED, HTML, LEAK, FILE_READ]
"""Outcomes from best to worst: an attack of several cases reports its worst."""
GOOD = {REFUSED, HELD}
SLOW_S = 30.0  # a bomb refused or answered after this long was read through first: it went off
RISE_MB = 300.0  # a bomb that raised the server's RSS by more than this was materialised
KEPT_RISE_MB = 1000.0  # the kept analyses of attack 3 may hold about one 200-image analysis, not more
QUEUE_FLOOD = 64  # analyze events one session puts in the queue at once (the app's default queue size)
SHORT_RUNS = 40  # most one-step trainings of the disk attack
HTML_TAGS = re.compile(r"<\s*(img|video|audio|form|input|iframe|script|object|embed)\b", re.IGNORECASE)
PAYLOADS = [
    'a red circle <img src="http://127.0.0.1:9/pixel.png">',
    'a blue square <video src="http://127.0.0.1:9/clip.mp4" autoplay></video>',
    'a green triangle <form action="http://127.0.0.1:9/"><input type=password name=p></form>',
]
FORGED = {"Host": "evil.example", "Origin": "http://evil.example"}
MCP_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}
MB = 2**20


# ------------------------------------------------------------------------------------ pure helpers


def worst(outcomes: Iterable[str]) -> str:
    """The worst of several cases' outcomes (`not run` when there are none)."""
    return max(outcomes, key=SEVERITY.index, default=NOT_RUN)


@dataclass
class Answer:
    """One call's end: its outputs, or the app's error message, or no answer at all (`failure`)."""

    data: list[Any] | None = None
    error: str | None = None  # the app's message (a refusal), or Gradio's generic one for an uncaught exception
    failure: str | None = None  # no answer: HTTP status, timeout, connection error
    logs: list[str] = field(default_factory=list)  # gr.Warning / gr.Info messages shown on the way
    seconds: float = 0.0

    def text(self) -> str:
        """Everything the client was shown, as one string to search for secrets and server paths."""
        return json.dumps([self.data, self.error, self.failure, self.logs], default=str)

    def summary(self) -> str:
        if self.failure:
            return self.failure[:160]
        return f"refused: {self.error[:160]!r}" if self.error is not None else "answered"


ATTACKER_ADDRESS = "127.0.0.2"
"""The attacker's raw sessions connect from here (all of 127/8 is loopback on Linux), the visitors from 127.0.0.1:
a public server counts memory and queue places per address, as it would for a stranger on the internet."""


def classify(
    answer: Answer, *, hidden: Sequence[str] = (), leaks: Sequence[str] = (), if_answered: str = HELD,
    if_no_answer: str = UNEXPECTED, if_generic: str = UNEXPECTED,
) -> str:  # fmt: skip
    """An answer's outcome: a secret in it is a server file read, a server path in it a leak (whatever else it
    says); then a clear refusal, Gradio's generic error (`if_generic`), an answer (`if_answered`), or none (`if_no_answer`)."""
    text = answer.text()
    if any(secret in text for secret in hidden):
        return FILE_READ
    if any(marker in text for marker in leaks):
        return LEAK
    if answer.failure is not None:
        return if_no_answer
    if answer.error is not None:
        return if_generic if is_generic_error(answer.error) else REFUSED
    return if_answered


def cost_outcome(outcome: str, seconds: float, rise_mb: float) -> str:
    """A bomb refused or answered only after reading it through (slow, or RSS up by hundreds of MB) went off."""
    if outcome in GOOD and (seconds > SLOW_S or rise_mb > RISE_MB):
        return ACCEPTED
    return outcome


def probe_outcome(existing: Answer, missing: Answer, names: Sequence[str]) -> str:
    """The folder-existence probe: the answers for an existing and a missing folder must not differ (their
    names masked), else they tell which folders the server has."""
    masked = []
    for answer in (existing, missing):
        text = answer.summary() if answer.error is None else answer.error
        for name in names:
            text = text.replace(name, "PROBE")
        masked.append(text)
    if masked[0] != masked[1]:
        return LEAK
    return worst([classify(existing), classify(missing)])


def disk_outcome(runs: int, sizes: Sequence[int | None], refusal: str | None) -> tuple[str, str]:
    """Short trainings in one session: a clear refusal, or a runs folder smaller than the runs it was given
    (its oldest removed), is a disk budget at work; every run kept is none met (yet). `sizes`: the folder's
    bytes after each run (None where it could not be told apart from another session's, as `run-1`)."""
    known = [(run, size) for run, size in enumerate(sizes, start=1) if size is not None]
    detail = f"{runs} runs, the session's runs folder at {max((s for _, s in known), default=0) / MB:.0f} MB at most"
    if refusal is not None:
        return (UNEXPECTED if is_generic_error(refusal) else REFUSED), f"{detail}; then {refusal[:150]!r}"
    if len(known) < 2:
        return NOT_RUN, f"{detail}: too few runs told apart to see a budget"
    (first_run, first_size), (last_run, last_size) = known[0], known[-1]
    if last_size < 0.75 * first_size / first_run * last_run:
        return HELD, f"{detail}, {last_size / MB:.0f} MB at the end: its oldest runs were removed"
    return ACCEPTED, f"{detail}: every run kept, no disk budget met"


def unescaped_html(outputs: Sequence[Any] | None) -> list[str]:
    """The text outputs (Markdown, HTML, or an update of one) holding a live tag from `PAYLOADS`.
    Figures (dicts of plotly JSON) are skipped: plotly draws their text, it does not render HTML."""
    found = []
    for value in outputs or []:
        if isinstance(value, dict) and isinstance(value.get("value"), str):
            value = value["value"]
        if isinstance(value, str) and HTML_TAGS.search(value):
            found.append(value[:160])
    return found


def escape_path(cache_dir: Path, target: Path) -> str:
    """A FileData path that names `cache_dir` (Gradio's upload folder, so its check passes) but reaches
    `target` outside it once `{..,..}` is brace-expanded: `CACHE/{..,..}/private/secret.tar`."""
    relative = Path(os.path.relpath(target, cache_dir))
    if relative.parts[0] != "..":
        raise ValueError(f"{target} lies inside {cache_dir}: nothing to escape")
    return str(cache_dir / "{..,..}" / Path(*relative.parts[1:]))


def file_data(path: str, name: str | None = None) -> dict[str, Any]:
    """The FileData a browser sends for a file (any path: the server must check it)."""
    return {"path": path, "orig_name": name or Path(path).name, "meta": {"_type": "gradio.FileData"}}


@dataclass(frozen=True)
class Endpoint:
    """One event of the page: its `fn_index` and which of its inputs are gr.State (the server fills those)."""

    fn_index: int
    states: tuple[bool, ...]

    def fill(self, args: Sequence[Any]) -> list[Any]:
        """The event's data: `args` in the non-State positions (as gradio_client takes them), None in the others."""
        given = iter(args)
        return [None if state else next(given, None) for state in self.states]


def endpoints(config: dict[str, Any]) -> dict[str, Endpoint]:
    """Every event of an app's `/config` by its api_name (private events have one too: the function's name)."""
    types = {component["id"]: component.get("type") for component in config["components"]}
    return {
        dependency["api_name"]: Endpoint(dependency["id"], tuple(types.get(i) == "state" for i in dependency["inputs"]))
        for dependency in config["dependencies"]
        if dependency.get("api_name")
    }


def host_outcome(status: int) -> str:
    """A request with a forged Host or Origin: refused (400, 403, 421; 404 where nothing is served) or served
    (a DNS-rebinding page's way in)."""
    if status in (400, 403, 404, 421):
        return REFUSED
    return ACCEPTED if status < 400 else UNEXPECTED


# ------------------------------------------------------------------------------------ attack files


class Zeros:
    """A file object of `size` zero bytes, made as they are read: a 4 GiB tar member costs no memory to write."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_zero_targz(path: Path, member_bytes: int) -> Path:
    """A .tar.gz whose first member is `member_bytes` of zeros (not an image: a reader skips it, by
    decompressing it), then one good pair: gzip shrinks zeros about 1000 times, 4 GiB to about 4 MB."""
    with tarfile.open(path, "w:gz", compresslevel=6) as archive:
        info = tarfile.TarInfo("0000.bin")
        info.size = member_bytes
        archive.addfile(info, Zeros(member_bytes))
        _add(archive, "0001.png", (SCENES / "scene_00.png").read_bytes())
        _add(archive, "0001.txt", b"a shape after the zeros")
    return path


def write_png_tar(path: Path, count: int = 200, side: int = 1024) -> Path:
    """A webdataset tar of `count` flat-coloured PNGs of `side`² with captions: a few KB each compressed,
    `side`² x 3 bytes each decoded (200 of 1024²: about 1.4 MB holding 600 MB of pixels)."""
    from PIL import Image

    with tarfile.open(path, "w") as archive:
        for i in range(count):
            buffer = io.BytesIO()
            Image.new("RGB", (side, side), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buffer, "PNG")
            _add(archive, f"{i:04d}.png", buffer.getvalue())
            _add(archive, f"{i:04d}.txt", f"a plain colour field number {i}".encode())
    return path


def write_caption_bomb(path: Path, caption_bytes: int, codec: str = "zstd") -> Path:
    """A parquet of one pair whose caption is `caption_bytes` of one letter: zstd keeps it to a few KB."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    letters = pa.py_buffer(np.full(caption_bytes, ord("a"), dtype=np.uint8))
    offsets = pa.py_buffer(np.array([0, caption_bytes], dtype=np.int32))
    caption = pa.Array.from_buffers(pa.string(), 1, [None, offsets, letters])
    image = pa.array([(SCENES / "scene_00.png").read_bytes()], pa.binary())
    table = pa.table({"image": image, "caption": caption})
    pq.write_table(table, path, compression=codec, write_statistics=False, use_dictionary=False)
    return path


def write_cells_bomb(path: Path, cells: int, cell_bytes: int, codec: str = "zstd") -> Path:
    """A parquet of `cells` pairs sharing one dictionary-encoded caption of `cell_bytes`: stored once, and
    `cells` times that once a reader turns the column into Python strings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    letters = pa.py_buffer(np.full(cell_bytes, ord("b"), dtype=np.uint8))
    offsets = pa.py_buffer(np.array([0, cell_bytes], dtype=np.int32))
    word = pa.Array.from_buffers(pa.string(), 1, [None, offsets, letters])
    caption = pa.DictionaryArray.from_arrays(pa.array([0] * cells, pa.int32()), word)
    image = pa.array([(SCENES / "scene_01.png").read_bytes()] * cells, pa.binary())
    pq.write_table(
        pa.table({"image": image, "caption": caption}), path, compression=codec, write_statistics=False,
        use_dictionary=True, dictionary_pagesize_limit=2 * cell_bytes,
    )  # fmt: skip
    return path


def write_private_files(folder: Path, secret: str) -> tuple[Path, Path]:
    """A tar and a parquet outside Gradio's folder, each naming `secret`: no answer may ever show it.
    The parquet holds an image path, not an image: a reader that refuses it must not quote it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "secret.tar", "w") as archive:
        _add(archive, "private.png", (SCENES / "scene_02.png").read_bytes())
        _add(archive, "private.txt", f"the private caption {secret}".encode())
    table = pa.table({"image": [f"/{secret}/photo.png"], "caption": [f"a private row {secret}"]})
    pq.write_table(table, folder / "secret.parquet")
    return folder / "secret.tar", folder / "secret.parquet"


@dataclass(frozen=True)
class Arsenal:
    """The attack files: the private ones planted outside Gradio's folder, the probes' folder names, the bombs."""

    secret: str
    private_tar: Path
    private_parquet: Path
    probe_names: tuple[str, str]  # an existing folder beside Gradio's, and a missing one of the same length
    caption_bomb: Path
    cells_bomb: Path
    png_tar: Path
    zero_targz: Path


def write_bombs(folder: str, tar_bomb_bytes: int) -> None:
    """The large attack files, written in a child process (`start_arsenal`): a parquet bomb holds its caption
    while written, and the tar.gz takes about 20 s of CPU."""
    where = Path(folder)
    write_caption_bomb(where / "caption_bomb.parquet", 400 * MB)
    write_cells_bomb(where / "cells_bomb.parquet", 16, 60 * MB)
    write_png_tar(where / "pngs.tar")
    write_zero_targz(where / "zeros.tar.gz", tar_bomb_bytes)


def start_arsenal(work: Path, tar_bomb_bytes: int) -> Callable[[], Arsenal]:
    """Plant the private files in `work` now and start writing the bombs in a child process; returns a call
    that waits for them (the server and its warm-up start meanwhile)."""
    secret = f"vlviz-secret-{secrets.token_hex(8)}"
    private_tar, private_parquet = write_private_files(work / "private", secret)
    probes = (f"probe-{secrets.token_hex(6)}", f"probe-{secrets.token_hex(6)}")
    (work / probes[0]).mkdir()
    folder = work / "attacks"
    folder.mkdir()
    code = f"from bench.attacks import write_bombs; write_bombs({str(folder)!r}, {tar_bomb_bytes})"
    log = (folder / "build.log").open("wb")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> Arsenal:
        if child.wait() != 0:
            raise RuntimeError(f"writing the attack files failed: {(folder / 'build.log').read_text()[-500:]}")
        log.close()
        names = ("caption_bomb.parquet", "cells_bomb.parquet", "pngs.tar", "zeros.tar.gz")
        return Arsenal(secret, private_tar, private_parquet, probes, *(folder / name for name in names))

    return ready


class PrivateHost:
    """A web server on a loopback port standing for a private address (a router, a cloud metadata service):
    it serves the private tar, so an app that fetches from it shows the secret, and it counts the fetches."""

    def __init__(self, served: Path) -> None:
        data, counter = served.read_bytes(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                counter.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.hits = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def end_session(url: str, session_hash: str) -> None:
    """Close a session as a browser tab does: its heartbeat stream ends, and the app's unload runs."""
    import httpx

    with (
        contextlib.suppress(Exception),
        httpx.stream("GET", f"{url}gradio_api/heartbeat/{session_hash}", timeout=10) as s,
    ):
        next(s.iter_lines())


# ------------------------------------------------------------------------------------ a raw client


class RawSession:
    """A browser's session over HTTP: its own session hash, uploads, and any event of the page by its
    `fn_index`, with the query parameters a page URL carries (a link's `?pairs=`, a talk's `?story=`)."""

    def __init__(self, url: str, api: dict[str, Endpoint], timeout: float) -> None:
        import httpx

        self.url, self.api, self.timeout = url, api, timeout
        self.session_hash = secrets.token_hex(8)
        transport = httpx.HTTPTransport(local_address=ATTACKER_ADDRESS)  # the server tells it from the visitors
        self.http = httpx.Client(transport=transport, timeout=httpx.Timeout(30.0, read=max(timeout, 30.0)))

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a file as the page does; its FileData (a path in Gradio's folder)."""
        with path.open("rb") as handle:
            response = self.http.post(f"{self.url}gradio_api/upload", files={"files": (path.name, handle)})
        response.raise_for_status()
        return file_data(response.json()[0], path.name)

    def submit(self, name: str, args: Sequence[Any], query: dict[str, str] | None = None) -> str:
        """Put one event in the queue; its event id. Raises RuntimeError when the queue refuses it (HTTP 503...)."""
        endpoint = self.api.get(name)
        if endpoint is None:
            raise RuntimeError(f"the app has no event named {name!r}")
        body = {"data": endpoint.fill(args), "fn_index": endpoint.fn_index, "session_hash": self.session_hash,
                "event_data": None, "trigger_id": None}  # fmt: skip
        url = f"{self.url}gradio_api/queue/join" + (f"?{urlencode(query)}" if query else "")
        response = self.http.post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:160]}")
        return response.json()["event_id"]

    def collect(self, events: Sequence[str], timeout: float | None = None) -> dict[str, Answer]:
        """Read this session's event stream until every event in `events` ends or `timeout` passes
        (closing the stream then makes the server drop what has not started)."""
        import httpx

        start = time.monotonic()
        deadline = start + (timeout or self.timeout)
        answers = {event: Answer() for event in events}
        pending = set(events)
        url = f"{self.url}gradio_api/queue/data"
        try:
            with self.http.stream("GET", url, params={"session_hash": self.session_hash}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        self._note(json.loads(line[5:]), answers, pending, time.monotonic() - start)
                    if not pending or time.monotonic() > deadline:
                        break
        except (httpx.HTTPError, json.JSONDecodeError) as error:
            for event in pending:
                answers[event].failure = f"{type(error).__name__}: {error}"
        for event in pending:
            answers[event].failure = answers[event].failure or f"no answer within {timeout or self.timeout:.0f} s"
            answers[event].seconds = time.monotonic() - start
        return answers

    @staticmethod
    def _note(message: dict[str, Any], answers: dict[str, Answer], pending: set[str], seconds: float) -> None:
        answer = answers.get(message.get("event_id") or "")
        kind = message.get("msg")
        if kind == "unexpected_error":
            for event in list(pending):
                answers[event].failure = f"stream error: {message.get('message')}"
                pending.discard(event)
        elif answer is None:
            return
        elif kind == "log":
            answer.logs.append(str(message.get("log")))
        elif kind == "process_completed":
            output = message.get("output") or {}
            if message.get("success"):
                answer.data = output.get("data")
            else:
                answer.error = str(output.get("error"))
            answer.seconds = seconds
            pending.discard(message["event_id"])

    def call(self, name: str, args: Sequence[Any], query: dict[str, str] | None = None,
             timeout: float | None = None) -> Answer:  # fmt: skip
        """One event, waited for."""
        start = time.monotonic()
        try:
            event = self.submit(name, args, query)
        except Exception as error:
            return Answer(failure=f"{type(error).__name__}: {error}", seconds=time.monotonic() - start)
        return self.collect([event], timeout)[event]

    def analyze(self, files: Sequence[dict[str, Any]] | Sequence[str], captions: str = "",
                model: str = OFFLINE_SPEC, timeout: float | None = None) -> Answer:  # fmt: skip
        return self.call("analyze", [list(files), captions, model, "cosine similarity"], timeout=timeout)

    def end(self) -> None:
        end_session(self.url, self.session_hash)
        self.http.close()


# ------------------------------------------------------------------------------------ the attacker


class Attacker:
    """The hostile visitor: four threads of attacks (files and leaks, memory, CPU and queue, trainings),
    started with the attack phase; each starts no new attack after the phase's deadline."""

    def __init__(self, url: str, cache_dir: Path, data_dir: Path, arsenal: Arsenal, timeout: float, rounds: int,
                 pid: int, rss_peak: Callable[[float, float], int]) -> None:  # fmt: skip
        """`pid`: the server's; `rss_peak(start, end)`: its highest sampled RSS between two monotonic times."""
        import httpx

        self.url, self.cache_dir, self.data_dir, self.arsenal = url, cache_dir, data_dir, arsenal
        self.timeout, self.rounds, self.pid, self.rss_peak = timeout, rounds, pid, rss_peak
        self.private_host = PrivateHost(arsenal.private_tar)
        self.api = endpoints(httpx.get(f"{url}config", timeout=30).json())
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.sessions: list[RawSession] = []
        self.clients: list[Any] = []
        self.deadline = 0.0
        self._lock = threading.Lock()
        self.groups: dict[str, list[tuple[str, Callable[[], tuple[str, str]]]]] = {
            "files": [
                ("1_path_escape_tar", lambda: self.path_escape(arsenal.private_tar)),
                ("1_path_escape_parquet", lambda: self.path_escape(arsenal.private_parquet)),
                ("1_folder_probe", self.folder_probe),
                ("8_bare_server_paths", self.bare_paths),
                ("8_private_address_urls", self.private_urls),
                ("8_foreign_host_file_url", self.foreign_host_file_url),
                ("8_forged_host_origin", self.forged_host),
                ("7_html_in_captions", self.html_captions),
                ("7_talk_token_in_link", self.talk_token_in_link),
            ],
            "memory": [
                ("2_parquet_long_caption", lambda: self.bomb(arsenal.caption_bomb)),
                ("2_parquet_dictionary_cells", lambda: self.bomb(arsenal.cells_bomb)),
                ("3_png_tar_kept_analyses", self.kept_analyses),
            ],
            "cpu": [
                ("4_tar_zero_member_x3", self.tar_bombs),
                ("4_queue_flood", self.queue_flood),
                ("4_query_many_images", self.query_many),
            ],
            "trainings": [
                ("5_two_trainings_one_session", self.two_trainings),
                ("5_many_short_trainings", self.short_trainings),
            ],
        }

    # -- running

    def start(self, deadline: float) -> list[threading.Thread]:
        self.deadline = deadline
        threads = [threading.Thread(target=self._run, args=(group,), daemon=True) for group in self.groups.values()]
        for thread in threads:
            thread.start()
        return threads

    def _run(self, group: list[tuple[str, Callable[[], tuple[str, str]]]]) -> None:
        for name, attack in group:
            if time.monotonic() >= self.deadline:
                self._record(name, NOT_RUN, "the phase ended before it started", 0.0)
                continue
            start = time.monotonic()
            try:
                outcome, detail = attack()
            except Exception as error:  # a bench bug or an unforeseen answer: reported, never a crash
                outcome, detail = UNEXPECTED, f"attack crashed: {type(error).__name__}: {error}"
            self._record(name, outcome, detail, time.monotonic() - start)

    def _record(self, name: str, outcome: str, detail: str, seconds: float) -> None:
        with self._lock:
            self.outcomes[name] = {"outcome": outcome, "detail": detail[:400], "seconds": round(seconds, 1)}

    def session(self) -> RawSession:
        session = RawSession(self.url, self.api, self.timeout)
        with self._lock:
            self.sessions.append(session)
        return session

    def end(self) -> None:
        """End every session the attacker opened, so that their files go as a closed tab's do."""
        for session in self.sessions:
            session.end()
        for client in self.clients:
            end_session(self.url, client.session_hash)
            client.close()
        self.private_host.close()

    def report(self) -> dict[str, Any]:
        """Per attack its outcome; counts of the bad ones (every attack of the groups is listed)."""
        names = [name for group in self.groups.values() for name, _ in group]
        attacks = {n: self.outcomes.get(n, {"outcome": NOT_RUN, "detail": "still running", "seconds": None})
                   for n in names}  # fmt: skip
        count = Counter(attack["outcome"] for attack in attacks.values())
        return {
            "attacks": attacks,
            "unexpected_errors": count[UNEXPECTED],
            "cross_session_leaks": count[LEAK],
            "server_files_read": count[FILE_READ],
            "unescaped_html": count[HTML],
            "accepted": count[ACCEPTED],
            "not_run": count[NOT_RUN],
            "refused_or_held": count[REFUSED] + count[HELD],
        }

    def _rise_mb(self, start: float, base: int) -> float:
        """How far the server's RSS rose above `base` since `start` (sampled peak, or now)."""
        return (max(self.rss_peak(start, time.monotonic()), rss_bytes(self.pid)) - base) / MB

    # -- 1: paths outside the upload folder

    def path_escape(self, target: Path) -> tuple[str, str]:
        """A FileData path in Gradio's folder that brace expansion takes to a private file beside it."""
        answer = self.session().analyze([file_data(escape_path(self.cache_dir, target))])
        return classify(answer, hidden=[self.arsenal.secret], leaks=[str(target)]), answer.summary()

    def folder_probe(self) -> tuple[str, str]:
        """The same escape through an existing and a missing folder: the answers must not tell them apart."""
        session, private = self.session(), self.arsenal.private_tar
        answers = []
        for name in self.arsenal.probe_names:  # CACHE/{..,..}/probe-x/{..,..}/private/secret.tar
            folder = escape_path(self.cache_dir, private.parent.parent / name)  # a plain `..` would be collapsed
            path = f"{folder}/{{..,..}}/{private.parent.name}/{private.name}"  # by Gradio, never walked
            answers.append(session.analyze([file_data(path, private.name)]))
        outcome = probe_outcome(answers[0], answers[1], self.arsenal.probe_names)
        return outcome, f"existing: {answers[0].summary()} | missing: {answers[1].summary()}"

    # -- 8: URLs, bare paths, forged headers

    def _cases(self, cases: dict[str, list[Any]], **kwargs: Any) -> tuple[str, str]:
        """Several analyze calls, each with its own `files`; the worst outcome and each case's answer."""
        session, outcomes, details = self.session(), [], []
        for label, files in cases.items():
            answer = session.analyze(files, "a shape")
            outcomes.append(classify(answer, hidden=[self.arsenal.secret], **kwargs))
            details.append(f"{label}: {outcomes[-1]} ({answer.summary()[:90]})")
        return worst(outcomes), "; ".join(details)

    def bare_paths(self) -> tuple[str, str]:
        """Server paths as files: a string and an own `file=` URL get vlviz's message. A forged FileData outside
        the upload folder is refused by Gradio before vlviz sees it, with `error: null` (Gradio shows only an
        AppError's message; no hook precedes its check): refused, counted apart, not an unexpected error."""
        private = str(self.arsenal.private_tar)
        outcome, detail = self._cases({
            "string path": [private],
            "own file= URL": [f"{self.url}gradio_api/file={private}"],
        })  # fmt: skip
        forged = self._cases({"FileData path (Gradio's own check)": [file_data(private)]}, if_generic=REFUSED)
        return worst([outcome, forged[0]]), f"{detail}; {forged[1]} (Gradio's check: no message)"

    def private_urls(self) -> tuple[str, str]:
        """URLs of a private address (the PrivateHost) in several spellings: none may be fetched."""
        hosts = ["127.0.0.1", "[::1]", "localhost.", "2130706433", "0x7f000001", "127.1", "[::ffff:127.0.0.1]"]
        port = self.private_host.port
        outcome, detail = self._cases({host: [f"http://{host}:{port}/secret.tar"] for host in hosts})
        if self.private_host.hits:
            outcome = worst([outcome, ACCEPTED])
        return outcome, f"{self.private_host.hits} fetches reached the private host; {detail}"

    def foreign_host_file_url(self) -> tuple[str, str]:
        """A `…/gradio_api/file=` URL of another host naming an upload here: it must not be read in place."""
        uploaded = self.session().upload(SCENES / "scene_03.png")["path"]
        return self._cases({"evil.invalid": [f"http://evil.invalid/gradio_api/file={uploaded}"]}, if_answered=ACCEPTED)

    def forged_host(self) -> tuple[str, str]:
        """DNS rebinding: a page elsewhere reaches the local app under its own name (Host) and origin, and
        drives its MCP endpoint from its own origin."""
        import httpx

        statuses = {path: httpx.get(f"{self.url}{path}", headers=FORGED, timeout=30).status_code
                    for path in ("", "config", "gradio_api/info")}  # fmt: skip
        mcp = httpx.post(f"{self.url}gradio_api/mcp/", json=MCP_INITIALIZE, timeout=30,
                         headers={"Origin": FORGED["Origin"], "Accept": "application/json, text/event-stream"})  # fmt: skip
        statuses["gradio_api/mcp/ (Origin only)"] = mcp.status_code
        return worst(host_outcome(s) for s in statuses.values()), f"HTTP statuses {statuses}"

    # -- 7: leaks through links, talks and captions

    def _scenes(self, session: RawSession, count: int) -> list[dict[str, Any]]:
        return [session.upload(SCENES / f"scene_{i:02d}.png") for i in range(count)]

    def html_captions(self) -> tuple[str, str]:
        """Captions carrying tags that fetch (img, video) or ask for a password (form): the talk must escape them."""
        session = self.session()
        analyzed = session.analyze(self._scenes(session, len(PAYLOADS)), "\n".join(PAYLOADS))
        if analyzed.data is None:
            return classify(analyzed), f"analyze: {analyzed.summary()}"
        talk = session.call("open_as_talk", [])
        token = re.search(r"story=([\w-]+)", json.dumps(talk.data)) if talk.data else None
        if token is None:
            return classify(talk, if_answered=UNEXPECTED), f"open_as_talk gave no token: {talk.summary()}"
        opened = self.session().call("open_talk", [], query={"story": token.group(1)})
        live = unescaped_html((analyzed.data or []) + (opened.data or []))
        if live:
            return HTML, f"{len(live)} outputs with live tags, e.g. {live[0]!r}"
        return classify(opened), f"talk page: {opened.summary()}"

    def talk_token_in_link(self) -> tuple[str, str]:
        """A talk of this session's own checkpoint, its token opened as a view link by another session: the
        checkpoint's folder (a server path naming this session's token) must not reach that session."""
        owner = self.session()
        trained = owner.call("train", train_settings(2), timeout=self.timeout * 3)
        if trained.failure or trained.error is not None:
            return classify(trained), f"training: {trained.summary()}"
        analyzed = owner.analyze(self._scenes(owner, 2), "a red circle\na blue square", model="session run 1")
        talk = owner.call("open_as_talk", []) if analyzed.data is not None else analyzed
        token = re.search(r"story=([\w-]+)", json.dumps(talk.data)) if talk.data else None
        if token is None:
            return classify(talk, if_answered=UNEXPECTED), f"no talk token: {talk.summary()}"
        opened = self.session().call("restore_view", [], query={"pairs": token.group(1), "tab": "affinity"})
        leaks = [str(self.data_dir), "/sessions/"]
        return classify(opened, leaks=leaks), f"link with the talk token: {opened.summary()}"

    # -- 2, 3: memory

    def bomb(self, path: Path) -> tuple[str, str]:
        """A small file that decompresses to hundreds of MB: refused before it is materialised, or bounded."""
        session = self.session()
        start, base = time.monotonic(), rss_bytes(self.pid)
        answer = session.analyze([session.upload(path)], timeout=self.timeout)
        rise = self._rise_mb(start, base)
        outcome = cost_outcome(classify(answer, if_no_answer=ACCEPTED), answer.seconds, rise)
        return outcome, f"{path.stat().st_size / 1024:.0f} KB file: {answer.summary()}; RSS +{rise:.0f} MB"

    def kept_analyses(self) -> tuple[str, str]:
        """200 large PNGs analysed and kept by links and talks, round after round, then by two more sessions."""
        start, base = time.monotonic(), rss_bytes(self.pid)
        main = self.session()
        tar = main.upload(self.arsenal.png_tar)
        answers = []
        for _ in range(self.rounds):
            answers.append(main.analyze([tar], timeout=self.timeout * 2))
            answers += [main.call("view_link", [None, None]), main.call("open_as_talk", [])]
        for _ in range(2):
            other = self.session()
            answers += [other.analyze([other.upload(self.arsenal.png_tar)], timeout=self.timeout * 2),
                        other.call("view_link", [None, None])]  # fmt: skip
        rise = self._rise_mb(start, base)
        outcomes = [classify(a) for a in answers]
        detail = f"{len(answers)} calls, {outcomes.count(REFUSED)} refused; RSS +{rise:.0f} MB at the peak"
        if REFUSED in outcomes:
            detail += f"; first refusal {answers[outcomes.index(REFUSED)].error[:120]!r}"
        if worst(outcomes) not in GOOD:
            return worst(outcomes), detail
        if REFUSED in outcomes:
            return REFUSED, detail  # a memory budget said no
        return (ACCEPTED if rise > KEPT_RISE_MB else HELD), detail

    # -- 4: CPU and the queue

    def tar_bombs(self) -> tuple[str, str]:
        """Three tar.gz files with a non-image member of GiBs of zeros, at once from three sessions."""
        results: list[Answer] = [Answer() for _ in range(3)]

        def one(i: int) -> None:
            session = self.session()
            try:
                results[i] = session.analyze([session.upload(self.arsenal.zero_targz)], timeout=self.timeout)
            except Exception as error:
                results[i] = Answer(failure=f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.timeout + 60)
        outcomes = [cost_outcome(classify(a, if_no_answer=ACCEPTED), a.seconds, 0.0) for a in results]
        return worst(outcomes), "; ".join(f"{a.seconds:.0f} s {a.summary()[:100]}" for a in results)

    def queue_flood(self) -> tuple[str, str]:
        """One session puts QUEUE_FLOOD analyze events in the queue at once: it must not take every waiting slot."""
        session = self.session()
        scene = session.upload(SCENES / "scene_04.png")
        events, refused_at_join = [], []
        for _ in range(QUEUE_FLOOD):
            try:
                events.append(session.submit("analyze", [[scene], "a shape", OFFLINE_SPEC, "cosine similarity"]))
            except RuntimeError as error:
                refused_at_join.append(str(error))
        answers = list(session.collect(events, timeout=min(self.timeout, 90)).values())  # then dropped
        outcomes = [classify(a, if_no_answer=HELD) for a in answers]  # still waiting: its own events, not a fault
        detail = (f"{len(events)} queued, {len(refused_at_join)} refused at join, {outcomes.count(REFUSED)} refused, "
                  f"{sum(a.data is not None for a in answers)} answered")  # fmt: skip
        if refused_at_join:
            detail += f"; join said {refused_at_join[0][:100]!r}"
        if worst(outcomes) not in GOOD:
            return worst(outcomes), detail
        return (REFUSED if refused_at_join or REFUSED in outcomes else ACCEPTED), detail

    def query_many(self) -> tuple[str, str]:
        """`/query` on 200 analysed pairs: it should return the top few, not re-encode and send every image."""
        session = self.session()
        analyzed = session.analyze([session.upload(self.arsenal.png_tar)], timeout=self.timeout * 2)
        if analyzed.data is None:
            return classify(analyzed), f"analyze of 200 pairs: {analyzed.summary()}"
        answers = [session.call("query", ["a plain colour field"]) for _ in range(3)]
        bad = worst(classify(a) for a in answers)
        if bad not in GOOD:
            return bad, answers[-1].summary()
        counts = [len(a.data[0]) if a.data and isinstance(a.data[0], list) else None for a in answers]
        seconds = ", ".join(f"{a.seconds:.1f}" for a in answers)
        every = any(count is not None and count >= 200 for count in counts)
        return (ACCEPTED if every else HELD), f"returned {counts} images in {seconds} s"

    # -- 5: trainings

    def _client(self) -> Any:
        from gradio_client import Client

        client = Client(self.url, verbose=False, download_files=False)
        with self._lock:
            self.clients.append(client)
        return client

    def two_trainings(self) -> tuple[str, str]:
        """Two trainings started at once in one session: one refused or queued, never both as the same run."""
        from gradio_client.exceptions import AppError

        client = self._client()
        jobs = [client.submit(*train_settings(10), api_name="/train") for _ in range(2)]
        statuses, outcomes = [], []
        for job in jobs:
            try:
                statuses.append(str(job.result(timeout=self.timeout * 3)[-4]))
                outcomes.append(HELD)
            except AppError as error:
                statuses.append(f"refused: {str(error)[:120]}")
                outcomes.append(UNEXPECTED if is_generic_error(str(error)) else REFUSED)
            except Exception as error:
                statuses.append(f"{type(error).__name__}: {error}"[:160])
                outcomes.append(UNEXPECTED)
        numbers = [re.search(r"session run (\d+)", s) for s in statuses]
        same = all(numbers) and numbers[0].group(1) == numbers[1].group(1)  # type: ignore[union-attr]
        outcome = worst(outcomes)
        if outcome == HELD and same:
            outcome = ACCEPTED
        collided = " (the same run number: they collided)" if same else ""
        return outcome, " | ".join(s[:150] for s in statuses) + collided

    def short_trainings(self) -> tuple[str, str]:
        """One-step trainings one after another until the phase ends: a session's runs need a disk budget
        (a refusal, or its oldest runs removed), seen in this session's own runs folder."""
        from gradio_client.exceptions import AppError

        client = self._client()
        runs, sizes, refusal = 0, [], None
        while runs < SHORT_RUNS and time.monotonic() < self.deadline and refusal is None:
            try:
                client.submit(*train_settings(1), api_name="/train").result(timeout=self.timeout)
            except AppError as error:
                refusal = str(error)
                continue
            except Exception as error:
                return UNEXPECTED, f"after {runs} runs: {type(error).__name__}: {error}"
            runs += 1
            folders = list(self.data_dir.glob(f"sessions/*/runs/run-{runs}"))
            sizes.append(dir_bytes(folders[0].parent) if len(folders) == 1 else None)
        return disk_outcome(runs, sizes, refusal)
