"""A session's training runs: the engine behind the Train tab and the talk page's live run.

The `Runner` owns a session's runs (LLaMA-Factory's engine, in one process): it numbers them and trains one
at a time, keeps their files within a disk budget, stops them, and names their checkpoints ('session run N') for
the other tabs. `Runner.train` is the monitor: a generator that drives `vlviz.training.runs.Run.records()` (the
trainer, which appends every evaluation to the run's ``metrics.jsonl``) and turns its records into `RunUpdate`s,
which the Train tab draws. Nothing here draws or speaks to the browser.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from vlviz.data.inputs import PairSet, megabytes
from vlviz.training.config import NonFiniteLossError, TrainConfig
from vlviz.training.evaluation import is_evaluation
from vlviz.training.probe import ProbeMeasurement
from vlviz.training.runs import Run, prepare_run

CHECKPOINT_PREFIX = "session run "  # the model spec of a checkpoint a session trained: "session run 2"
SESSION_DISK_BYTES = int(float(os.environ.get("VLVIZ_SESSION_DISK_MB", 256)) * 2**20)
"""A session's runs folder at most; a new run first removes the session's oldest runs (`Runner.make_room`)."""
RUNS_DISK_BYTES = int(float(os.environ.get("VLVIZ_RUNS_DISK_MB", 4096)) * 2**20)
"""Every session's runs together at most; past it new runs are refused, never made room for with others' files."""
STREAM_EVERY = 5  # steps between updates (evaluations always update)
METRICS_LINE_BYTES = 4096  # an evaluation's line in metrics.jsonl, with room to spare (about 0.8 KB)


class RunnerBusy(Exception):
    """A second training of a session that trains one at a time; the message says which run holds the slot."""


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (0 when it does not exist); files removed meanwhile count 0."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@dataclass
class SessionRun:
    """One training run of a session: what it is, its step records, and its checkpoint once it ended."""

    number: int
    name: str  # "run 1: clip×1 + saco×0.5"
    start: str  # what loads as its start model: a spec, or this session's checkpoint folder
    start_name: str  # what the start model is called (a spec, or 'session run N')
    data: str
    records: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None  # its weights file; None while it trains, and once removed to make room

    @property
    def spec(self) -> str:
        """The model spec the other tabs load its checkpoint by: 'session run N'."""
        return f"{CHECKPOINT_PREFIX}{self.number}"


@dataclass(frozen=True)
class RunUpdate:
    """What the monitor reports: the run as it is now, a status line (Markdown), and at evaluations the probe."""

    run: SessionRun
    status: str
    probe: ProbeMeasurement | None = None
    notices: tuple[str, ...] = ()  # things to tell before it trains (a loss that is not the model's, removed runs)


class Runner:
    """A session's runs under `folder`/runs: one trains at a time, numbered here, within a disk budget.

    The run number comes from here, not from the client's copy of the run list, which a second start can
    read before the first one adds to it: two runs would share a name, a folder and a stop flag.
    """

    _disk_lock = threading.Lock()  # one run at a time, process-wide, measures the disk and reserves its room
    _reserved: ClassVar[dict[Path, int]] = {}  # runs folder -> the bytes its run in progress will write

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "runs"
        self.runs: list[SessionRun] = []
        self.stops: dict[str, threading.Event] = {}  # what trains now (a run's name, "talk") -> its stop flag
        self.evicted: set[str] = set()  # 'session run N' removed to make room for newer runs
        self._lock = threading.Lock()
        self._number = 0  # the number of the session's last run
        self._training: str | None = None  # the message a second training gets while one trains
        self.closed = False  # the session ended: what its runs still write goes when they end

    @property
    def training(self) -> bool:
        """Whether a run of this session trains now (a session that trains is never swept)."""
        return bool(self.stops)

    def run_folder(self, number: int) -> Path:
        return self.folder / f"run-{number}"

    def checkpoint(self, spec: str) -> Path | None:
        """The folder of this session's checkpoint named `spec` ('session run N'), or None when `spec` names none."""
        if spec in self.evicted:
            raise ValueError(
                f"{spec} is no longer stored: it made room for this session's newer runs (a session keeps "
                f"{megabytes(SESSION_DISK_BYTES)} of runs, VLVIZ_SESSION_DISK_MB)."
            )
        run = next((run for run in self.runs if run.spec == spec and run.checkpoint is not None), None)
        if run is None:
            return None
        if not run.checkpoint.parent.is_dir():
            raise ValueError(f"{spec} is no longer stored: sessions' files are removed after some hours unused.")
        return run.checkpoint.parent

    def finished(self, chosen: list[str] | None = None) -> SessionRun:
        """The last finished run among `chosen` names (all of them when none are chosen)."""
        done = [run for run in self.runs if run.checkpoint and (not chosen or run.name in chosen)]
        if not done:
            raise ValueError("No finished run: train (or stop) a run first.")
        return done[-1]

    def close(self) -> None:
        """The session ended: stop its runs; each removes its files when it ends (`train`)."""
        self.closed = True
        self.stop()

    def stop(self) -> bool:
        """Ask this session's runs (and no one else's) to stop after their current step; whether any trains."""
        flags = list(self.stops.values())
        for flag in flags:
            flag.set()
        return bool(flags)

    @contextmanager
    def watching(self, key: str, run: Run) -> Iterator[None]:
        """Keep `run`'s stop flag under `key` while the block trains it, so `stop` reaches it."""
        self.stops[key] = run.stop
        try:
            yield
        finally:
            self.stops.pop(key, None)

    def train(
        self, start: str, start_name: str, data: str | PairSet, config: TrainConfig, label: str
    ) -> Iterator[RunUpdate]:
        """Prepare and train the session's next run from `start` (a spec, or this session's checkpoint folder) on
        `data`, streaming `RunUpdate`s: one when it is ready, one every `STREAM_EVERY` steps and at evaluations,
        one at the end; the run's checkpoint then joins the session as `SessionRun.spec`.

        Raises:
            RunnerBusy: The session already trains a run.
            ValueError: Bad settings, a run larger than the disk budget, or a run whose loss turned non-finite.
        """
        with self._slot() as number:
            name = f"run {number}: {label}"
            run = prepare_run(start, data, config, self.run_folder(number))
            removed = self.make_room(run_bytes(run))
            for old in self.runs:  # runs removed to make room keep their curves, not their checkpoints
                if old.spec in self.evicted:
                    old.checkpoint = None
            entry = SessionRun(number, name, start, start_name, run.data)
            self.runs.append(entry)
            preparing = f"**{name}**: preparing on `{run.context.device}`…" + (f"\n\n> {removed}" if removed else "")
            yield RunUpdate(entry, preparing, notices=(*run.notices, *([removed] if removed else [])))
            yield from self._monitor(run, entry)

    def _monitor(self, run: Run, entry: SessionRun) -> Iterator[RunUpdate]:
        """Drive `run`, turning its records into updates; at the end its checkpoint joins the session."""
        try:
            with self.watching(entry.name, run):
                for record in run.records():
                    entry.records.append(record)
                    evaluated = is_evaluation(record)
                    if record["step"] % STREAM_EVERY == 0 or evaluated:
                        loss = f", loss {record['total_loss']:.3f}" if "total_loss" in record else ""
                        status = f"**{entry.name}**: step {record['step']} / {run.config.steps}{loss}"
                        probe = run.probe_measurement(record["step"]) if evaluated else None
                        yield RunUpdate(entry, status, probe)
        except NonFiniteLossError as error:
            stopped = f"**{entry.name}** stopped: {error} No checkpoint was saved."
            yield RunUpdate(entry, stopped, notices=(str(error),))
            return
        finally:
            if self.closed:  # the session ended while this run trained: its files go too
                shutil.rmtree(self.folder, ignore_errors=True)
        if self.closed:
            return
        entry.checkpoint = run.checkpoint
        verb = "stopped" if run.stop.is_set() else "finished"
        done = entry.records[-1]["step"]
        yield RunUpdate(
            entry,
            f"**{entry.name}** {verb} after {done} steps. Download the checkpoint below, or load it as `{entry.spec}`.",
        )

    @contextmanager
    def _slot(self) -> Iterator[int]:
        """Hold this session's one training slot and the next run number for the block; a run that wrote no
        folder (its preparation failed) gives its number back."""
        with self._lock:
            if self._training is not None:
                raise RunnerBusy(self._training)
            number = self._number = self._number + 1
            self._training = f"This session is already training run {number}; stop it or wait for it to end."
        try:
            yield number
        finally:
            with self._lock:
                self._training = None
                if not self.run_folder(number).exists():
                    self._number = number - 1
            with Runner._disk_lock:
                Runner._reserved.pop(self.folder, None)

    def make_room(self, needed: int) -> str | None:
        """Reserve `needed` bytes for the run about to start, removing this session's oldest runs while its runs
        would pass `SESSION_DISK_BYTES`; a notice of what went, or None.

        Removing beats refusing: a session cannot delete runs itself, so a refusal would end its training
        until its files expire (hours), while the old runs' curves stay on screen and a checkpoint can be
        downloaded before the next run. A run larger than the whole budget, or one that would take every
        session's runs past `RUNS_DISK_BYTES`, is refused (ValueError) and nothing is removed: one session
        never makes room with another's files. Every folder here is a finished run: one trains at a time.
        """
        if needed > SESSION_DISK_BYTES:
            raise ValueError(
                f"This run needs about {megabytes(needed)} of disk; a session keeps at most "
                f"{megabytes(SESSION_DISK_BYTES)} of runs (VLVIZ_SESSION_DISK_MB)."
            )
        with Runner._disk_lock:
            old = sorted(self.folder.glob("run-*"), key=lambda folder: int(folder.name.removeprefix("run-")))
            sizes = [folder_bytes(folder) for folder in old]
            kept = len(old)
            while sum(sizes[len(old) - kept :]) + needed > SESSION_DISK_BYTES:
                kept -= 1
            everyone = sum(folder_bytes(folder) for folder in self.folder.parent.parent.glob("*/runs"))
            reserved = sum(size for runs, size in Runner._reserved.items() if runs != self.folder)
            if everyone - sum(sizes) + reserved + sum(sizes[len(old) - kept :]) + needed > RUNS_DISK_BYTES:
                raise ValueError(
                    f"The server's disk for training runs is full (all sessions together keep at most "
                    f"{megabytes(RUNS_DISK_BYTES)}, VLVIZ_RUNS_DISK_MB): try again when other sessions' runs expire."
                )
            removed = old[: len(old) - kept]
            for folder in removed:
                shutil.rmtree(folder, ignore_errors=True)
                self.evicted.add(CHECKPOINT_PREFIX + folder.name.removeprefix("run-"))
            Runner._reserved[self.folder] = needed
        if not removed:
            return None
        names = ", ".join(folder.name.replace("-", " ") for folder in removed)
        return (
            f"To keep this session's runs within {megabytes(SESSION_DISK_BYTES)} (VLVIZ_SESSION_DISK_MB), the "
            f"files of {names} were removed; the curves stay, the checkpoints are gone."
        )


def run_bytes(run: Run) -> int:
    """About what a run writes: its fp32 weights, its losses' heads, and a metrics line per evaluation."""
    tensors = [*run.model.state_dict().values()]
    tensors += [value for loss in (run.losses or {}).values() for value in loss.state_dict().values()]
    evaluations = run.config.steps // run.config.eval_every + 2
    return sum(t.numel() * t.element_size() for t in tensors) + evaluations * METRICS_LINE_BYTES
