"""Safe to host: server-made session folders, nothing served but what callbacks return, one policy
message for every refused model, failed loads that leave nothing behind, a bounded model cache,
and sessions' files removed when they end."""

from __future__ import annotations

import gc
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import open_clip
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import vlviz.ui.session as session
from tests.browser import SCENES
from tests.conftest import SCENE_CAPTIONS, free_port
from vlviz.losses import LOSSES
from vlviz.models.loading import OFFLINE_SPEC, ModelCache, ModelUnavailableError, load_model
from vlviz.models.policy import ModelNotAllowedError, ModelPolicy, is_public
from vlviz.ui import build_app, launch_kwargs
from vlviz.ui.request_limits import MAX_REQUEST_BYTES

TOKEN_FOLDER = re.compile(r"[0-9a-f]{32}")


def _train_settings(steps: int, lr: float = 1e-4) -> list:
    weights = [1.0 if name == "clip" else 0.0 for name in LOSSES]
    return ["offline scenes model", "scenes", "all", steps, 8, lr, steps, 0, "l1", OFFLINE_SPEC, *weights]


def _analyze(client: Client, spec: str = OFFLINE_SPEC, n: int = 2) -> tuple:
    files = sorted(SCENES.glob("scene_*.png"))[:n]
    captions = "\n".join(SCENE_CAPTIONS[f.name] for f in files)
    return client.predict(
        [handle_file(str(f)) for f in files], captions, spec, "cosine similarity", api_name="/analyze"
    )


# --------------------------------------------------------------------------------------- identities


def test_a_hostile_session_hash_never_names_a_folder(app_url: str, tmp_path: Path) -> None:
    escape = tmp_path / "escaped"
    client = Client(app_url, verbose=False)
    client.session_hash = f"../../../../../..{escape}"  # what main turned into RUNS_DIR / hash / run-N
    *_, status, _records, checkpoint, _chosen = client.predict(*_train_settings(steps=1), api_name="/train")
    assert "finished after 1 steps" in status
    assert not escape.exists()
    space = session.SESSIONS._by_hash[client.session_hash]
    assert TOKEN_FOLDER.fullmatch(space.folder.name) and space.folder.parent == session.DATA_DIR / "sessions"
    assert (space.folder / "runs" / "run-1" / "checkpoint.safetensors").is_file()
    assert client.session_hash not in status and str(session.DATA_DIR) not in status
    assert Path(checkpoint).is_file()  # offered as a download


def test_only_returned_files_are_served(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    client.predict(*_train_settings(steps=1), api_name="/train")
    run = session.SESSIONS._by_hash[client.session_hash].folder / "runs" / "run-1"
    for name in ("checkpoint.safetensors", "metrics.jsonl", "run_config.json"):
        response = httpx.get(f"{app_url}gradio_api/file={run / name}")
        assert response.status_code == 403, name  # main served the whole runs folder to anyone


def test_a_request_body_past_its_bound_is_refused_unread(app_url: str) -> None:
    """Gradio reads an API call's JSON whole: a body of a few GB ended the app. Past 16 MB it is refused at once."""
    join = f"{app_url.rstrip('/')}/gradio_api/queue/join"
    refused = httpx.post(join, content=b"{" + b" " * (MAX_REQUEST_BYTES + 1) + b"}", timeout=30)
    assert refused.status_code == 413 and "MB this server accepts in one request" in refused.text
    assert httpx.post(f"{app_url.rstrip('/')}/gradio_api/upload", files={"files": ("a.txt", b"a")}).status_code == 200


def test_stop_stops_only_the_sessions_own_runs(app_url: str) -> None:
    trainer, other = Client(app_url, verbose=False), Client(app_url, verbose=False)
    job = trainer.submit(*_train_settings(steps=40), api_name="/train")
    for update in job:
        if update[-3] and update[-3][-1]["step"] >= 2:
            assert other.predict(api_name="/stop_training") == "No run is training in this session."
            break
    status = job.result()[-4]
    assert "finished after 40 steps" in status


def test_unload_removes_the_sessions_files(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    _analyze(client)
    client.predict("cosine similarity", 1, api_name="/affinity_downloads")  # files are written on request
    folder = session.SESSIONS._by_hash[client.session_hash].folder
    assert (folder / "exports" / "affinity" / "affinity.json").is_file()
    # A browser keeps this stream open; closing it is how Gradio learns the tab closed (and runs unload).
    with httpx.stream("GET", f"{app_url}gradio_api/heartbeat/{client.session_hash}", timeout=10) as stream:
        next(stream.iter_lines())
    deadline = time.monotonic() + 20
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not folder.exists()


def test_the_age_sweep_removes_idle_sessions_and_orphaned_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(session, "DATA_DIR", tmp_path)
    registry = session.SessionRegistry()
    idle, busy = (registry.new(ModelPolicy(False, ())) for _ in range(2))
    for number, space in enumerate((idle, busy)):
        space.export_folder("affinity")
        registry.bind(space, SimpleNamespace(session_hash=f"hash-{number}"))
    busy.runner.stops["run 1"] = threading.Event()  # training: never swept
    orphan = tmp_path / "sessions" / ("0" * 32)  # left by an earlier process
    orphan.mkdir(parents=True)
    registry.sweep(max_age_s=-1, force=True)
    assert not idle.folder.exists() and idle.closed
    assert busy.folder.exists() and not orphan.exists()
    registry.bind(idle, SimpleNamespace(session_hash="hash-0"))  # it came back (a dropped connection)
    assert not idle.closed and idle.export_folder("affinity").is_dir()


# ------------------------------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    ("env", "server_name", "public"),
    [
        ({}, None, False),
        ({}, "127.0.0.1", False),
        ({}, "localhost", False),
        ({}, "::1", False),
        ({}, "0.0.0.0", True),
        ({"GRADIO_SERVER_NAME": "0.0.0.0"}, None, True),
        ({"VLVIZ_PUBLIC": "1"}, None, True),
        ({"SPACE_ID": "someone/vlviz"}, None, True),
        ({"VLVIZ_PUBLIC": "0", "GRADIO_SERVER_NAME": "0.0.0.0"}, None, False),  # the owner's explicit choice
    ],
)
def test_public_mode(env: dict, server_name: str | None, public: bool) -> None:
    assert is_public(server_name, env) is public


def test_allow_list_comes_from_the_environment_plus_the_start_model() -> None:
    env = {"VLVIZ_PUBLIC": "1", "VLVIZ_ALLOWED_MODELS": " RN50:openai , ViT-B-32:openai"}
    policy = ModelPolicy.from_env(["vlviz-scenes"], env=env, always=["hf-hub:org/start"])
    assert policy.allowed == ("hf-hub:org/start", "RN50:openai", "ViT-B-32:openai")
    policy.check("RN50:openai")
    with pytest.raises(ModelNotAllowedError, match="VLVIZ_ALLOWED_MODELS"):
        policy.check("vlviz-scenes")
    ModelPolicy.from_env(["vlviz-scenes"], env={}).check("anything: local servers load every spec")


@pytest.fixture(scope="module")
def public_app_url() -> Iterator[str]:
    demo = build_app(OFFLINE_SPEC, initial_sample=None, policy=ModelPolicy(public=True, allowed=(OFFLINE_SPEC,)))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_a_public_server_gives_every_refused_spec_one_message(public_app_url: str, tiny_vit_dir: Path) -> None:
    client = Client(public_app_url, verbose=False)
    messages = []
    for spec in (str(tiny_vit_dir), str(tiny_vit_dir / "open_clip_model.safetensors"), "/no/such/path", "RN50:random"):
        with pytest.raises(AppError) as error:
            _analyze(client, spec)
        messages.append(str(error.value).replace(spec, "SPEC"))
    assert len(set(messages)) == 1 and "VLVIZ_ALLOWED_MODELS" in messages[0]
    assert _analyze(client)[5]["model"] == OFFLINE_SPEC


def test_a_public_server_loads_the_sessions_own_checkpoints(public_app_url: str) -> None:
    client = Client(public_app_url, verbose=False)
    client.predict(*_train_settings(steps=1), api_name="/train")
    assert _analyze(client, "session run 1")[5]["model"] == "session run 1"
    with pytest.raises(AppError, match="not one of the models"):
        _analyze(Client(public_app_url, verbose=False), "session run 1")  # another session has no such run


# ------------------------------------------------------------------------------------- inputs, API


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: _analyze(c, "x" * 5000), "at most 500"),
        (lambda c: c.predict("a" * 5000, api_name="/query"), "at most 1000"),
        (
            lambda c: c.predict(1, "{0} and {1}", "the captions' words only", 5, True, api_name="/keywords"),
            "exactly one",
        ),
        (lambda c: c.predict(*_train_settings(steps=2, lr=1e6), api_name="/train"), "lr"),
    ],
)
def test_bad_free_text_and_settings_get_clear_messages(app_url: str, call, message: str) -> None:
    client = Client(app_url, verbose=False)
    _analyze(client)
    with pytest.raises(AppError, match=message):
        call(client)


def test_events_have_bounded_concurrency_and_a_bounded_queue() -> None:
    from vlviz.ui import QUEUE_SIZE
    from vlviz.ui.session import ANALYSIS_CONCURRENCY
    from vlviz.ui.train_tab import MAX_TRAININGS

    demo = build_app(OFFLINE_SPEC, initial_sample=None)
    limits = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values() if fn.api_name}
    assert limits["analyze"][1] == ANALYSIS_CONCURRENCY >= 2  # a large Analyze leaves room for small ones
    assert limits["analyze"][0] == limits["consistency"][0] == limits["embedding_space"][0]
    assert limits["train"] == ("train", MAX_TRAININGS)
    assert limits["stop_training"][1] is None  # never waits behind a training
    assert demo._queue.max_size == QUEUE_SIZE


# ---------------------------------------------------------------------------------- model loading


def _live_clip_models() -> int:
    gc.collect()
    return sum(type(o) is open_clip.model.CLIP for o in gc.get_objects())  # type(): no attribute lookups


@pytest.mark.parametrize("weights", [b"not a checkpoint" * 64, b"\x80\x02garbage"])
def test_failed_loads_leave_nothing_behind(tmp_path: Path, tiny_arch_name: str, weights: bytes) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(weights)
    spec = f"{tiny_arch_name}:{path}"
    before = _live_clip_models()
    for _ in range(3):
        with pytest.raises(ModelUnavailableError) as error:
            load_model(spec, device="cpu")
        message = str(error.value)
        assert message.startswith(f"Cannot load {spec}: ") and "Traceback" not in message
        assert error.value.__cause__ is None and error.value.__context__ is None
    del error
    assert _live_clip_models() == before


def test_failed_loads_of_a_large_model_return_their_memory(tmp_path: Path) -> None:
    """ViT-B-32 holds about 600 MB of fp32 weights; main kept every half-built one."""
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x00" * 1024)

    def rss() -> int:
        gc.collect()
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    for _ in range(2):  # the first failure warms allocator pools and open_clip's registries
        with pytest.raises(ModelUnavailableError):
            load_model(f"ViT-B-32:{path}", device="cpu")
    warm = rss()
    for _ in range(4):
        with pytest.raises(ModelUnavailableError):
            load_model(f"ViT-B-32:{path}", device="cpu")
    assert rss() - warm < 300 * 2**20


class _Stub(SimpleNamespace):
    """A cached entry with a real weight tensor of `megabytes`."""

    def __init__(self, megabytes: int) -> None:
        super().__init__(model=torch.nn.Linear(megabytes * 2**18, 1, bias=False), device=torch.device("cpu"))


def test_the_model_cache_evicts_least_recently_used_beyond_its_budget() -> None:
    cache = ModelCache(budget_bytes=10 * 2**20)
    for key in "abc":
        cache.get_or_load((key, "cpu"), lambda: _Stub(4))
    assert cache.keys() == [("b", "cpu"), ("c", "cpu")]  # a went first: 12 MB > 10 MB
    cache.get_or_load(("b", "cpu"), lambda: pytest.fail("b is cached"))
    cache.get_or_load(("d", "cpu"), lambda: _Stub(4))
    assert cache.keys() == [("b", "cpu"), ("d", "cpu")]  # c was the least recently used
    cache.get_or_load(("huge", "cpu"), lambda: _Stub(20))
    assert cache.keys() == [("huge", "cpu")]  # kept while in use, alone


def test_a_slow_load_blocks_only_callers_of_that_model() -> None:
    cache, release = ModelCache(budget_bytes=2**30), threading.Event()

    def slow() -> _Stub:
        release.wait(10)
        return _Stub(1)

    loads = []
    waiters = [
        threading.Thread(target=lambda: loads.append(cache.get_or_load(("slow", "cpu"), slow))) for _ in range(2)
    ]
    for thread in waiters:
        thread.start()
    start = time.monotonic()
    cache.get_or_load(("fast", "cpu"), lambda: _Stub(1))
    assert time.monotonic() - start < 1 and not loads
    release.set()
    for thread in waiters:
        thread.join(10)
    assert len(loads) == 2 and loads[0] is loads[1]  # loaded once for both callers


def test_the_data_dir_is_never_one_gradio_serves_whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    session.check_data_dir(tmp_path / "vlviz")
    with pytest.raises(ValueError, match="must not contain or lie inside GRADIO_TEMP_DIR"):
        session.check_data_dir(tmp_path / "gradio" / "vlviz")
    with pytest.raises(ValueError, match="must lie inside"):
        session.check_data_dir(Path("/var/vlviz-data"))
