"""Safe to host, under load: many sessions at once must stay correct, separate and bounded.

Starts the app (`app.py`) as a subprocess on the offline model, with a fresh data dir and Gradio
cache, warms it (one session runs every endpoint once, UMAP and a 2-step training included: its
RSS afterwards is the warm level), then drives it for a bounded time with several concurrent `gradio_client` sessions, each on
its own tagged pairs (file names `cN_scene_XX.png`, captions ending in ` cN`): analyze,
consistency, embedding space (PCA; one UMAP call, timed apart),
grounding, keywords, query, two short trainings (one stopped by its own session), and bad inputs
that must be refused with a clear message. Every response is checked for another session's pairs.
With `--attacker` (the default) the load runs twice, `--seconds` each: first without, then beside a
hostile visitor (`bench.attacks`: every attack of issue 21), so a well-behaved visitor's Analyze p95
with the attacker is compared with its own baseline; the server's RSS is sampled against
`VLVIZ_MEMORY_BUDGET_MB` when set, and well-behaved requests refused with HTTP 503 are counted.
At the end each session closes its heartbeat stream like a browser tab does (the app's
`demo.unload` then deletes its files), and the run waits for the data dir and Gradio's cache
(`delete_cache`, every `--ttl` s) to drain. Prints one JSON object; always exits 0.

    python -m bench.load --clients 8 --seconds 60 --ttl 60
    python -m bench.load --no-attacker  # the load alone, one phase
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT / "assets" / "samples" / "scenes"
OFFLINE_SPEC = "vlviz-scenes"
GENERIC_ERRORS = ("upstream gradio app has raised an exception", "error raised.")
"""gradio_client's messages when the app failed without a clear message (not a `gr.Error`)."""
LOSS_NAMES = (
    "clip",
    "siglip",
    "saco",
    "sparc",
    "psl",
    "xmm",
    "word_region",
)  # vlviz.losses.LOSSES order (not imported: no torch here)
ZERO_SHOT = "the captions' words and the default concepts"
CAPTIONS_ONLY = "the captions' words only"
UMAP = "embedding_space_umap"
SAMPLES_KEPT = 8  # unexpected-error samples and server-log lines kept in the report
BUDGET_SLACK_MB = 500  # the server's RSS may exceed its warm level + its memory budget by this much (issue 21)
MEMORY_BUDGET_MB = 2048  # the server's VLVIZ_MEMORY_BUDGET_MB unless --server-env sets it
SESSION_DISK_MB = 48  # and VLVIZ_SESSION_DISK_MB: three runs of the offline model, so a phase sees the budget act
QUERY_TOP_K = 24  # vlviz.ui.affinity_tab.QUERY_TOP_K (not imported: no torch here)
SLOWDOWN_LIMIT = 3.0  # a well-behaved Analyze p95 beside the attacker, at most this many times its baseline


# ------------------------------------------------------------------------------------ pure helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation), or None for no values: latencies are few."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def is_generic_error(message: str | None) -> bool:
    """Whether an error message says nothing about the input (Gradio's fallback for an uncaught exception)."""
    text = (message or "").strip().lower()
    return text in {"", "error", "none"} or any(generic in text for generic in GENERIC_ERRORS)


def client_tag(index: int) -> str:
    """The word that marks client `index`'s captions and file names (`c3`)."""
    return f"c{index}"


def tagged_caption(caption: str, tag: str) -> str:
    """The caption as client `tag` sends it: its tag is the last word."""
    return f"{caption} {tag}"


def caption_owner(caption: str) -> str | None:
    """The tag a caption was sent with (its last word if it looks like one), else None."""
    words = caption.split()
    return words[-1] if words and re.fullmatch(r"c\d+", words[-1]) else None


def name_owner(name: str) -> str | None:
    """The tag a file name was sent with (`c3_scene_01.png` -> `c3`), else None."""
    match = re.match(r"(c\d+)_", Path(name).name)
    return match.group(1) if match else None


def foreign_items(captions: Iterable[str], names: Iterable[str], tag: str) -> list[str]:
    """Captions and names in a response that do not belong to the session tagged `tag` (a leak, or lost tags)."""
    foreign = [f"caption {c!r}" for c in captions if caption_owner(c) != tag]
    return foreign + [f"name {n!r}" for n in names if name_owner(n) != tag]


CHAINED = ("The above exception was the direct cause", "During handling of the above exception")


def final_exceptions(log: str) -> list[tuple[str, list[str]]]:
    """The last exception of every traceback chain in a log (chained tracebacks count once), with the
    `File ...` lines of its own traceback, innermost last: where it was raised."""
    lines, found = log.splitlines(), []
    pending: tuple[str, list[str]] | None = None
    for i, line in enumerate(lines):
        if line.startswith(CHAINED):
            pending = None  # the chain goes on: its last exception comes later
        elif line.startswith("Traceback"):
            if pending is not None:
                found.append(pending)
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() and lines[j][0] not in " \t"), None)
            frames = [t.strip() for t in lines[i + 1 : end] if t.lstrip().startswith("File ")]
            pending = None if end is None else (lines[end], frames)
    if pending is not None:
        found.append(pending)
    return found


def is_refusal(exception_line: str) -> bool:
    """Whether a traceback ends in a `gr.Error`: the app refused an input with its own message."""
    return exception_line.startswith("gradio.exceptions.Error")


def memory_budget_mb(server_env: dict[str, str], env: dict[str, str]) -> float | None:
    """The server's configured memory budget (`VLVIZ_MEMORY_BUDGET_MB`, given to the server or inherited), or None."""
    value = server_env.get("VLVIZ_MEMORY_BUDGET_MB", env.get("VLVIZ_MEMORY_BUDGET_MB"))
    try:
        return float(value) if value else None
    except ValueError:
        return None


def budget_report(rss_samples: Sequence[int], budget_mb: float | None, warm_mb: float = 0.0) -> dict[str, Any]:
    """Every RSS sample against the warm level + the budget + BUDGET_SLACK_MB: how many went over, and the highest.

    The budget counts what visitors make the server hold (their pairs, kept links); the warm level is the
    process before any visitor (runtime, models, one analysis), which no visitor can grow.
    """
    peak = max(rss_samples, default=0) / 2**20
    limit = None if budget_mb is None else round(warm_mb + budget_mb + BUDGET_SLACK_MB, 1)
    over = None if limit is None else sum(rss / 2**20 > limit for rss in rss_samples)
    return {"budget_mb": budget_mb, "limit_mb": limit, "peak_mb": round(peak, 1), "samples": len(rss_samples),
            "samples_over_limit": over}  # fmt: skip


def p95_ratio(with_attacker: float | None, baseline: float | None) -> float | None:
    """How many times slower a p95 got beside the attacker (None without both figures)."""
    if with_attacker is None or not baseline:
        return None
    return round(with_attacker / baseline, 2)


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in children.read_text().split()]
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (VmRSS), in bytes; 0 once they are gone."""
    total = 0
    for current in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def dir_bytes(path: Path) -> int:
    """Bytes in the regular files under `path` (0 if it does not exist); files may vanish while we walk."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def free_port() -> int:
    """A free loopback TCP port for the server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- bookkeeping


@dataclass
class EndpointStats:
    """One endpoint's figures. Percentiles cover the well-formed requests (failed ones included, timeouts
    too); refusals of bad inputs return early, so they are counted but kept out of the percentiles."""

    latencies: list[float] = field(default_factory=list)
    bad_inputs: int = 0
    expected_errors: int = 0
    unexpected_errors: int = 0

    def summary(self) -> dict[str, Any]:
        rounded = {k: percentile(self.latencies, q) for k, q in (("p50_s", 50), ("p95_s", 95))}
        return {
            "requests": len(self.latencies) + self.bad_inputs,
            **{k: None if v is None else round(v, 3) for k, v in rounded.items()},
            "expected_errors": self.expected_errors,
            "unexpected_errors": self.unexpected_errors,
        }


class Stats:
    """Latencies, errors and leaks of all clients, thread-safe."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointStats] = {}
        self.leaks: list[str] = []
        self.unexpected: list[dict[str, str]] = []
        self.refusals: dict[str, str] = {}  # bad input -> the message it got (first seen)
        self.http_503 = 0  # requests the queue refused as full ("Queue is full", HTTP 503)
        self._lock = threading.Lock()

    def _get(self, endpoint: str) -> EndpointStats:
        return self.endpoints.setdefault(endpoint, EndpointStats())

    def latency(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self._get(endpoint).latencies.append(seconds)

    def bad_input(self, endpoint: str) -> None:
        with self._lock:
            self._get(endpoint).bad_inputs += 1

    def expected(self, endpoint: str, case: str, message: str) -> None:
        with self._lock:
            self._get(endpoint).expected_errors += 1
            self.refusals.setdefault(case, message[:200])

    def unexpected_error(self, endpoint: str, tag: str, reason: str) -> None:
        with self._lock:
            self._get(endpoint).unexpected_errors += 1
            self.http_503 += "queue is full" in reason.lower()
            self.unexpected.append({"endpoint": endpoint, "client": tag, "reason": reason[:300]})

    def leak(self, endpoint: str, tag: str, items: list[str]) -> None:
        with self._lock:
            self.leaks.append(f"{endpoint} for {tag}: {', '.join(items[:3])}")


class Monitor(threading.Thread):
    """Samples the server's RSS and the two folders' sizes every `every` seconds, keeping the peaks."""

    def __init__(self, pid: int, data_dir: Path, cache_dir: Path, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.data_dir, self.cache_dir, self.every = pid, data_dir, cache_dir, every
        self.peak_rss = self.peak_data = self.peak_cache = 0
        self.done = threading.Event()
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, int, int, int]] = []  # (s since start, rss, data, cache)

    def sample(self) -> tuple[int, int, int]:
        rss, data, cache = rss_bytes(self.pid), dir_bytes(self.data_dir), dir_bytes(self.cache_dir)
        self.peak_rss, self.peak_data = max(self.peak_rss, rss), max(self.peak_data, data)
        self.peak_cache = max(self.peak_cache, cache)
        self.timeline.append((time.monotonic() - self.t0, rss, data, cache))
        return rss, data, cache

    def peak_rss_between(self, start: float, end: float) -> int:
        """The highest RSS sampled between two `time.monotonic()` times (0 if none was)."""
        window = (start - self.t0, end - self.t0)
        return max((rss for t, rss, _, _ in list(self.timeline) if window[0] <= t <= window[1]), default=0)

    def every_n_seconds(self, n: float) -> list[dict[str, float]]:
        """The samples thinned to one per `n` seconds, in MB: how memory and disk moved, for the report."""
        kept, next_t = [], 0.0
        for i, (t, rss, data, cache) in enumerate(self.timeline):
            if t >= next_t or i == len(self.timeline) - 1:
                kept.append({"t": round(t), "rss": round(rss / 2**20), "data": round(data / 2**20, 1),
                             "cache": round(cache / 2**20, 1)})  # fmt: skip
                next_t = t + n
        return kept

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()


# ---------------------------------------------------------------------------------------- server


class Server:
    """`app.py` in a subprocess with its own data dir, Gradio cache and port; its log kept in a file."""

    def __init__(self, work: Path, ttl: float, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir, self.cache_dir, self.log_path = work / "data", work / "gradio", work / "server.log"
        self.cache_dir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = os.environ | {
            "VLVIZ_MODEL": OFFLINE_SPEC,
            "HF_HUB_OFFLINE": "1",
            "VLVIZ_DATA_DIR": str(self.data_dir),
            "GRADIO_TEMP_DIR": str(self.cache_dir),
            "VLVIZ_SESSION_TTL_S": str(ttl),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "VLVIZ_PUBLIC": "1",  # a public instance: budgets per address, the model allow-list
            "VLVIZ_ALLOWED_HOSTS": "127.0.0.1",  # and its owner lists its name, so Host and Origin are checked
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until the server answers; raises if it exits or never answers."""
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log_tail(20)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.5)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s: {self.log_tail(20)}")

    def log_tail(self, lines: int) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def server_exceptions(self) -> list[dict[str, Any]]:
        """Each traceback chain in the log that does not end in a `gr.Error` (a refusal shown to the user):
        what failed on the server without a clear message, with its innermost frames."""
        counts: dict[tuple[str, str], int] = {}
        for line, frames in final_exceptions(self.log_path.read_text(errors="replace")):
            if not is_refusal(line):
                where = next((f for f in reversed(frames) if "site-packages/torch" not in f), "")
                counts[line, where] = counts.get((line, where), 0) + 1
        return [{"exception": e, "where": w, "count": n} for (e, w), n in counts.items()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------------------- clients


def scene_captions() -> dict[str, str]:
    with (SCENES / "captions.csv").open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row["caption"] for row in csv.DictReader(handle)}


def corrupt_png(path: Path) -> Path:
    """A PNG cut off after its first bytes: a file an upload may really hold."""
    data = (SCENES / "scene_00.png").read_bytes()
    path.write_bytes(data[:60])
    return path


def slip_zip(path: Path) -> Path:
    """A zip whose entry would unpack outside its folder (`../x.png`)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../x.png", (SCENES / "scene_00.png").read_bytes())
        archive.writestr("ok.png", (SCENES / "scene_01.png").read_bytes())
    return path


def train_settings(steps: int, batch_size: int = 8, lr: float = 1e-4) -> list:
    """The `/train` API's inputs: CLIP loss only, from the offline model, on the scenes."""
    weights = [1.0 if name == "clip" else 0.0 for name in LOSS_NAMES]
    eval_every = min(steps, 200)  # the slider's maximum
    settings = ["offline scenes model", "scenes", "all", steps, batch_size, lr, eval_every, 0, "l1", OFFLINE_SPEC]
    return [*settings, *weights]


class Session:
    """One visitor: its own `gradio_client.Client` (one app session) and its own tagged pairs."""

    def __init__(
        self, index: int, url: str, folder: Path, images: list[str], stats: Stats, timeout: float, seed: int = 0
    ) -> None:
        from gradio_client import Client

        self.tag, self.url, self.stats, self.timeout = client_tag(index), url, stats, timeout
        self.index, self.rng = index, random.Random(seed * 1000 + index)
        folder.mkdir(parents=True)
        captions = scene_captions()
        self.files, self.captions = [], []
        for name in images:
            copy = folder / f"{self.tag}_{name}"
            shutil.copyfile(SCENES / name, copy)
            self.files.append(copy)
            self.captions.append(tagged_caption(captions[name], self.tag))
        self.broken = corrupt_png(folder / f"{self.tag}_broken.png")
        self.slip = slip_zip(folder / f"{self.tag}_slip.zip")
        self.client = Client(url, verbose=False, download_files=False)
        self.runs = 0  # finished or stopped trainings of this session: the next checkpoint is "session run N+1"

    # -- calling

    def request(self, endpoint: str, check: Callable[[Any], list[str]], *args: Any, key: str | None = None,
                timeout: float | None = None) -> Any:  # fmt: skip
        """A request that must succeed: its latency, and any failure or foreign item in its answer, recorded."""
        from gradio_client.exceptions import AppError

        key = key or endpoint
        start = time.monotonic()
        try:
            job = self.client.submit(*args, api_name=f"/{endpoint}")
            result = job.result(timeout=timeout or self.timeout)
        except AppError as error:
            self.stats.latency(key, time.monotonic() - start)
            self.stats.unexpected_error(key, self.tag, f"refused a good request: {error}")
            return None
        except Exception as error:  # timeouts, connection errors: all unexpected
            self.stats.latency(key, time.monotonic() - start)
            self.stats.unexpected_error(key, self.tag, f"{type(error).__name__}: {error}")
            return None
        self.stats.latency(key, time.monotonic() - start)
        try:
            foreign = check(result)
        except Exception as error:
            self.stats.unexpected_error(key, self.tag, f"unexpected answer ({type(error).__name__}: {error})")
            return None
        if foreign:
            self.stats.leak(key, self.tag, foreign)
        return result

    def refused(self, endpoint: str, case: str, *args: Any) -> None:
        """A request that must be refused with a clear message (an AppError that is not Gradio's generic one)."""
        from gradio_client.exceptions import AppError

        try:
            self.client.submit(*args, api_name=f"/{endpoint}").result(timeout=self.timeout)
        except AppError as error:
            message = str(error)
            if is_generic_error(message):
                self.stats.unexpected_error(endpoint, self.tag, f"{case}: generic error {message[:120]!r}")
            else:
                self.stats.expected(endpoint, case, message)
        except Exception as error:
            self.stats.unexpected_error(endpoint, self.tag, f"{case}: {type(error).__name__}: {error}")
        else:
            self.stats.unexpected_error(endpoint, self.tag, f"{case}: accepted")
        finally:
            self.stats.bad_input(endpoint)

    def uploads(self, files: Sequence[Path]) -> list:
        from gradio_client import handle_file

        return [handle_file(str(f)) for f in files]

    # -- the good requests

    def analyze(self, files: Sequence[Path] | None = None, captions: list[str] | None = None) -> None:
        """Analyze this session's pairs (or `files` with `captions`): what every other view then reads."""
        files, captions = files or self.files, captions or self.captions

        def check(result: Any) -> list[str]:
            data = result[5]
            if data["captions"] != captions:
                return foreign_items(data["captions"], data["names"], self.tag) or ["captions differ from those sent"]
            return foreign_items(data["captions"], data["names"], self.tag)

        kind = self.rng.choice(["cosine similarity", "match probability"])
        self.request("analyze", check, self.uploads(files), "\n".join(captions), OFFLINE_SPEC, kind)

    def consistency(self) -> None:
        def check(result: Any) -> list[str]:
            data = result[7]
            top = [c for row in data["top_pairs"] for c in (row["caption i"], row["caption j"])]
            names = [n for row in data["top_pairs"] for n in (row["image i"], row["image j"])]
            return foreign_items(data["captions"] + top, data["names"] + names, self.tag)

        self.analyze()
        order = self.rng.choice(["clustered", "input order"])
        self.request("consistency", check, order, "absolute |A_I − A_T|", 4, 0.1)

    def embedding(self, method: str = "pca", files: Sequence[Path] | None = None, captions: list[str] | None = None,
                  key: str | None = None, timeout: float | None = None) -> None:  # fmt: skip
        def check(result: Any) -> list[str]:
            data = result[6]
            return foreign_items(data["captions"], data["names"], self.tag)

        self.analyze(files, captions)
        self.request(
            "embedding_space", check, method, 5, 0.1, "cosine", 0, self.rng.random() < 0.5, False, key=key,
            timeout=timeout,
        )  # fmt: skip

    def grounding(self) -> None:
        def check(result: Any) -> list[str]:
            data = result[-1]
            return foreign_items([data["text"]], [data["image"]], self.tag)

        pair = self.rng.randint(1, len(self.files))
        self.request("grounding", check, pair, None, "sparc", 0.6, "")

    def keywords(self) -> None:
        def check(result: Any) -> list[str]:
            pairs = result[-1]["pairs"]
            return foreign_items([p["caption"] for p in pairs], [p["image"] for p in pairs], self.tag)

        vocabulary = self.rng.choice([ZERO_SHOT, CAPTIONS_ONLY])
        self.request("keywords", check, 1, "a photo of {}", vocabulary, 5, False)

    def query(self) -> None:
        def check(result: Any) -> list[str]:
            # each item's caption reads "1. c3_scene_04.png  cos 0.812"
            names = [item["caption"].split()[1] for item in result]
            wanted = min(len(self.files), QUERY_TOP_K)
            return foreign_items([], names, self.tag) + ([] if len(result) == wanted else ["wrong count"])

        text = self.captions[self.rng.randrange(len(self.captions))].rsplit(" ", 1)[0]
        self.request("query", check, text)

    def stop_nothing(self) -> None:
        """Stop with no run of its own: must not stop another session's training."""

        def check(result: Any) -> list[str]:
            return [] if result == "No run is training in this session." else [f"stop_training said {result!r}"]

        self.request("stop_training", check)

    def train(self, steps: int, stop_after_step: int | None = None) -> None:
        """A short training; with `stop_after_step`, stopped by this session once it streamed that step."""
        from gradio_client.exceptions import AppError

        number = self.runs + 1
        start = time.monotonic()
        job = self.client.submit(*train_settings(steps), api_name="/train")
        stopped = False
        try:
            if stop_after_step is not None:
                for update in job:
                    records = update[-3]
                    if records and records[-1]["step"] >= stop_after_step:
                        answer = self.request("stop_training", lambda r: [])
                        stopped = True
                        if not (answer and answer.startswith("Stopping")):
                            self.stats.unexpected_error("stop_training", self.tag, f"own stop said {answer!r}")
                        break
            *_, status, records, checkpoint, _chosen = job.result(timeout=self.timeout * 3)
        except AppError as error:
            self.stats.latency("train", time.monotonic() - start)
            self.stats.unexpected_error("train", self.tag, f"refused a good training: {error}")
            return
        except Exception as error:
            self.stats.latency("train", time.monotonic() - start)
            self.stats.unexpected_error("train", self.tag, f"{type(error).__name__}: {error}")
            return
        self.stats.latency("train", time.monotonic() - start)
        verb = "stopped" if stopped else "finished"
        if f"`session run {number}`" not in (status or ""):  # another session's runs would shift the number
            self.stats.unexpected_error("train", self.tag, f"status {str(status)[:160]!r} lacks session run {number}")
        elif f"{verb} after" not in status or not checkpoint:
            self.stats.unexpected_error(
                "train", self.tag, f"expected '{verb} after' and a checkpoint: {status[:160]!r}"
            )
        self.runs += 1

    # -- the bad requests

    def bad_input(self, case: str) -> None:
        caption_text, kind = "\n".join(self.captions), "cosine similarity"
        if case == "mismatched_counts":
            self.refused("analyze", case, self.uploads(self.files[:2]), self.captions[0], OFFLINE_SPEC, kind)
        elif case == "corrupt_image":
            self.refused("analyze", case, self.uploads([self.broken]), self.captions[0], OFFLINE_SPEC, kind)
        elif case == "long_model_spec":
            self.refused("analyze", case, self.uploads(self.files), caption_text, "x" * 600, kind)
        elif case == "zip_slip":
            self.refused("analyze", case, self.uploads([self.slip]), caption_text, OFFLINE_SPEC, kind)
        elif case == "bad_template":
            self.refused("keywords", case, 1, "{0} {1}", CAPTIONS_ONLY, 5, False, OFFLINE_SPEC)
        elif case == "huge_lr":
            self.refused("train", case, *train_settings(2, lr=1e6))
        else:
            raise ValueError(case)

    # -- ending

    def end(self) -> None:
        """Close the session the way a browser tab does: its heartbeat stream ends, and the app runs unload."""
        import httpx

        try:
            with httpx.stream("GET", f"{self.url}gradio_api/heartbeat/{self.client.session_hash}", timeout=10) as s:
                next(s.iter_lines())
        except Exception as error:
            self.stats.unexpected_error("heartbeat", self.tag, f"{type(error).__name__}: {error}")
        self.client.close()


BAD_CASES = ["mismatched_counts", "corrupt_image", "long_model_spec", "zip_slip", "bad_template", "huge_lr"]


def drive(session: Session, deadline: float, role: str, umap_files: list[Path], umap_captions: list[str]) -> None:
    """One client's loop until `deadline`: its special job first (a training, the UMAP call), then rounds of views."""
    try:
        session.analyze()
        if role == "train":
            session.train(steps=20)
        elif role == "train_stop":
            session.train(steps=200, stop_after_step=5)
        elif role == "umap":
            session.embedding("umap", umap_files, umap_captions, key=UMAP, timeout=max(session.timeout, 300))
        bad = itertools.cycle(BAD_CASES[session.index % len(BAD_CASES) :] + BAD_CASES[: session.index % len(BAD_CASES)])
        views = [session.grounding, session.keywords, session.query, session.consistency, session.embedding]
        while time.monotonic() < deadline:
            session.rng.shuffle(views)
            for view in [session.analyze, *views]:
                if time.monotonic() >= deadline:
                    break
                view()
            if time.monotonic() < deadline:
                session.bad_input(next(bad))
            if time.monotonic() < deadline and session.rng.random() < 0.3:
                session.stop_nothing()
    except Exception as error:  # a bug here must show in the report, not kill the thread silently
        session.stats.unexpected_error("bench", session.tag, f"client loop crashed: {type(error).__name__}: {error}")


def image_windows(n_clients: int, size: int, names: list[str]) -> list[list[str]]:
    """Each client's scenes: windows of `size` spread over the set (disjoint when they fit), all distinct."""
    stride = max(1, len(names) // n_clients)
    return [[names[(i * stride + k) % len(names)] for k in range(size)] for i in range(n_clients)]


# ------------------------------------------------------------------------------------------ main


def load_phase(
    sessions: list[Session], roles: list[str], args: argparse.Namespace, umap: tuple[list[Path], list[str]],
    stats: Stats, attacker: Any = None,
) -> float:  # fmt: skip
    """Drive every session (and the attacker, a `bench.attacks.Attacker`) for `args.seconds`, their figures
    going to `stats`; the seconds the phase took, waits for late answers included."""
    for session in sessions:
        session.stats = stats
    start = time.monotonic()
    deadline = start + args.seconds
    threads = [
        threading.Thread(target=drive, args=(s, deadline, role, *umap), daemon=True) for s, role in zip(sessions, roles)
    ]
    for thread in threads:
        thread.start()
    attack_threads = attacker.start(deadline) if attacker else []
    for thread in threads + attack_threads:
        thread.join(max(1.0, deadline + args.request_timeout * 3 - time.monotonic()))
    stuck = [s.tag for s, t in zip(sessions, threads) if t.is_alive()]
    for tag in stuck:
        stats.unexpected_error("bench", tag, "client still waiting long after the deadline")
    return time.monotonic() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio_client's telemetry thread reads this
    work = Path(tempfile.mkdtemp(prefix="vlviz-load-"))
    defaults = {"VLVIZ_MEMORY_BUDGET_MB": str(MEMORY_BUDGET_MB), "VLVIZ_SESSION_DISK_MB": str(SESSION_DISK_MB)}
    server_env = defaults | dict(item.split("=", 1) for item in args.server_env)
    arsenal_ready = None
    if args.attacker:
        from bench import attacks  # imports this module: not at the top

        arsenal_ready = attacks.start_arsenal(work, int(args.tar_bomb_gib * 2**30))  # written while the server warms up
    stats = Stats()
    server = Server(work, args.ttl, server_env)
    timeline: dict[str, float] = {}
    phase_stats: dict[str, Stats] = {}
    phases_s: dict[str, list[float]] = {}
    attacker = None
    try:
        timeline["server_ready_s"] = server.wait_ready()
        monitor = Monitor(server.process.pid, server.data_dir, server.cache_dir)
        _, data_start, cache_start = monitor.sample()
        start = time.monotonic()

        names = sorted(scene_captions())
        warm = Session(99, server.url, work / "clients" / "warmup", names[:6], stats, args.request_timeout)
        # Warm means every code path ran once (6 pairs: UMAP needs 5): the model loaded, numba compiled UMAP.
        # What the load adds beyond that, and keeps after its sessions end, is what a host would see grow.
        warm.analyze()
        for call in (warm.consistency, warm.embedding, warm.grounding, warm.keywords, warm.query):
            call()
        if not args.no_umap:
            warm.embedding("umap")
        warm.train(2)
        warm.end()
        stats.endpoints.clear()  # warm-up latencies (model load, first encode, numba's compile) are not load
        timeline["warmup_s"] = time.monotonic() - start
        warm_rss = rss_bytes(server.process.pid)
        monitor.start()

        windows = image_windows(args.clients, args.pairs, names)
        connect_start = time.monotonic()
        sessions = [
            Session(i, server.url, work / "clients" / client_tag(i), windows[i], stats, args.request_timeout, args.seed)
            for i in range(args.clients)
        ]
        timeline["clients_connect_s"] = time.monotonic() - connect_start
        roles = ["train", "train_stop", "umap"][: args.clients] + ["views"] * max(0, args.clients - 3)
        if args.no_umap and "umap" in roles:
            roles[roles.index("umap")] = "views"
        umap_session = sessions[min(2, args.clients - 1)]
        umap_names = names[:6]  # UMAP needs 5 pairs or more; the copies carry that client's tag
        umap_files = []
        for name in umap_names:
            copy = work / "clients" / "umap" / f"{umap_session.tag}_{name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SCENES / name, copy)
            umap_files.append(copy)
        umap_captions = [tagged_caption(scene_captions()[n], umap_session.tag) for n in umap_names]

        for phase in ["baseline", "attacker"] if args.attacker else ["load"]:
            phase_stats[phase] = stats if not phase_stats else Stats()  # the first phase keeps the warm-up's samples
            if phase == "attacker":
                attacker = attacks.Attacker(
                    server.url, server.cache_dir, server.data_dir, arsenal_ready(), args.request_timeout,
                    args.attack_rounds, server.process.pid, monitor.peak_rss_between,
                )  # fmt: skip
            phase_start = time.monotonic() - monitor.t0
            seconds = load_phase(sessions, roles, args, (umap_files, umap_captions), phase_stats[phase], attacker)
            timeline[f"{phase}_s"] = seconds
            phases_s[phase] = [round(phase_start), round(phase_start + seconds)]

        for session in sessions:
            session.end()
        if attacker:
            attacker.end()
        drain_start = time.monotonic()
        rss, data_end, cache_end = monitor.sample()
        while time.monotonic() - drain_start < args.ttl * 2.5:
            if data_end <= data_start and cache_end <= cache_start:
                break
            time.sleep(1.0)
            rss, data_end, cache_end = monitor.sample()
        timeline["drain_s"] = time.monotonic() - drain_start
        monitor.done.set()
        final_rss = rss
    finally:
        server.stop()
        server_errors = server.server_exceptions()  # after the stop: failed background tasks print then
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    mb = 2**20
    all_stats = list(phase_stats.values())
    leaks = [leak for s in all_stats for leak in s.leaks]
    unexpected = sum(e.unexpected_errors for s in all_stats for e in s.endpoints.values())
    http_503 = sum(s.http_503 for s in all_stats)
    summaries = {phase: {n: s.endpoints[n].summary() for n in sorted(s.endpoints)} for phase, s in phase_stats.items()}
    budget = budget_report(
        [rss for _, rss, _, _ in monitor.timeline], memory_budget_mb(server_env, dict(os.environ)), warm_rss / 2**20
    )
    attack = attacker.report() if attacker else None
    targets = {
        "no_unexpected_errors": unexpected == 0 and (attack is None or attack["unexpected_errors"] == 0),
        "no_leaks": not leaks and (attack is None or attack["cross_session_leaks"] == 0),
        "rss_within_300mb_of_warm": final_rss - warm_rss < 300 * mb,
        "data_dir_back_to_start": data_end <= data_start,
        "gradio_cache_back_to_start": cache_end <= cache_start,
        "no_http_503_for_visitors": http_503 == 0,
        "rss_within_budget_plus_500mb": None if budget["budget_mb"] is None else budget["samples_over_limit"] == 0,
    }
    p95 = None
    if attack is not None:
        p95 = {
            "without_attacker": summaries["baseline"].get("analyze", {}).get("p95_s"),
            "with_attacker": summaries["attacker"].get("analyze", {}).get("p95_s"),
        }
        p95["ratio"] = p95_ratio(p95["with_attacker"], p95["without_attacker"])
        targets |= {
            "no_server_files_read": attack["server_files_read"] == 0,
            "no_unescaped_html": attack["unescaped_html"] == 0,
            "every_attack_refused_or_held": attack["refused_or_held"] == len(attack["attacks"]),
            "analyze_p95_within_3x_baseline": p95["ratio"] is not None and p95["ratio"] <= SLOWDOWN_LIMIT,
        }
    return {
        "endpoints": summaries[list(phase_stats)[-1]],
        "endpoints_without_attacker": summaries.get("baseline"),
        "analyze_p95_s": p95,
        "attacker": attack,
        "http_503_for_visitors": http_503,
        "rss_mb": {
            "warm": round(warm_rss / mb, 1),
            "peak": round(max(monitor.peak_rss, warm_rss) / mb, 1),
            "final": round(final_rss / mb, 1),
            "final_minus_warm": round((final_rss - warm_rss) / mb, 1),
        },
        "rss_vs_budget": budget,
        "timeline_mb": monitor.every_n_seconds(10),
        "phases_s": phases_s,
        "disk_bytes": {
            "data_dir": {"start": data_start, "peak": monitor.peak_data, "end": data_end},
            "gradio_cache": {"start": cache_start, "peak": monitor.peak_cache, "end": cache_end},
        },
        "cross_session_leaks": len(leaks),
        "leak_samples": leaks[:SAMPLES_KEPT],
        "unexpected_error_samples": [u for s in all_stats for u in s.unexpected][:SAMPLES_KEPT],
        "refusal_messages": {k: v for s in all_stats for k, v in s.refusals.items()},
        "server_exceptions": server_errors[:SAMPLES_KEPT],
        "timeline_s": {k: round(v, 1) for k, v in timeline.items()},
        "kept_dir": str(work) if args.keep else None,
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "ttl": args.ttl,
            "pairs_per_client": args.pairs,
            "request_timeout_s": args.request_timeout,
            "umap": not args.no_umap,
            "attacker": args.attacker,
            "attack_rounds": args.attack_rounds,
            "tar_bomb_gib": args.tar_bomb_gib,
            "server_env": args.server_env,
            "cpus": os.cpu_count(),
        },
        "notes": [
            f"{UMAP} is the single UMAP call under load (warm-up compiled numba first); it is not in embedding_space's p95.",
            "p50/p95 cover well-formed requests (failures and timeouts included); refusals of bad inputs are "
            "counted in requests and expected_errors but kept out of the percentiles.",
            "train latency is the whole run (submit to last update); stop_training includes the own-session stop.",
            "server_exceptions: tracebacks in the server log that do not end in a gr.Error (read after the stop, "
            "when Gradio prints its failed background tasks).",
            "Warm-up (every endpoint once: model load, first encode, numba compile) is excluded from the latencies.",
            "Results are not downloaded by the clients (download_files=False): the load is the server's.",
            "With the attacker: 'endpoints' is the phase beside it, 'endpoints_without_attacker' the baseline phase "
            "before it (same sessions, same --seconds); phases_s places both on timeline_mb's clock.",
            "Attack outcomes: refused / held are good; accepted (a bomb went off: slow, or RSS up > 300 MB; no "
            "budget met), unescaped html, leak, server file read, unexpected error are not; 'not run' when the "
            "phase ended first. cross_session_leaks and http_503_for_visitors count the well-behaved sessions.",
            f"rss_vs_budget: every sample after the warm-up against the warm RSS + VLVIZ_MEMORY_BUDGET_MB (default "
            f"{MEMORY_BUDGET_MB}) + {BUDGET_SLACK_MB} MB.",
        ],
        "targets_met": targets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent sessions (threads)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds of load in each phase")
    parser.add_argument("--ttl", type=float, default=60, help="VLVIZ_SESSION_TTL_S: cache sweep period and age")
    parser.add_argument("--pairs", type=int, default=3, help="image-caption pairs per client")
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds before a request is a failure")
    parser.add_argument("--no-umap", action="store_true", help="skip the one UMAP call (numba compiles for ~20-90 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra server env")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server log, data, cache) and say where")
    parser.add_argument(
        "--attacker", action=argparse.BooleanOptionalAction, default=True,
        help="a baseline phase, then one beside a hostile visitor running every attack of issue 21",
    )  # fmt: skip
    parser.add_argument("--attack-rounds", type=int, default=4, help="rounds of analyze + link + talk on 200 PNGs")
    parser.add_argument("--tar-bomb-gib", type=float, default=4, help="zeros in the tar.gz bomb's non-image member")
    args = parser.parse_args()
    try:
        result = run(args)
    except Exception as error:  # still one JSON object: a benchmark that could not run says why
        result = {"error": f"{type(error).__name__}: {error}", "targets_met": {}}
    print(json.dumps(result, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
