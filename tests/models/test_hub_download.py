"""The `hf-hub:` download path, tested for real against a fake hub on 127.0.0.1 (tests/hub_server.py).

The offline model's files are served as the repo `vlviz/scenes-test`: a first load downloads them, a second load
with HF_HUB_OFFLINE uses the cache without a request, and a hub that errors, stalls or truncates a download gives
a clear ModelUnavailableError quickly and leaves no broken cache entry.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE and its timeouts when it is imported, so each test
sets both the environment and `huggingface_hub.constants` (see `point_hub_client_at`).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError
from PIL import Image

from tests.conftest import SCENES_DIR
from tests.hub_server import COMMIT, FakeHub
from vlviz.models import loading as models
from vlviz.models.loading import (
    HUB_PROBE_TIMEOUT_S,
    OFFLINE_MODEL_DIR,
    OFFLINE_SPEC,
    ModelUnavailableError,
    load_model,
    load_model_or_offline,
)

REPO = "vlviz/scenes-test"
SPEC = f"hf-hub:{REPO}"
CONFIG, WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"
SLACK_S = 1.5  # beyond the probe timeout: thread start, the TCP probe, two shared CPU cores


def _load_model_fetches_hub_files() -> bool:
    """Whether load_model calls `fetch_hub_model` (the lead's change); the tests marked `needs_fetch` need it."""
    fetch = getattr(models, "fetch_hub_model", None)
    return fetch is not None and re.search(r"(?<!def )\bfetch_hub_model\(", inspect.getsource(models)) is not None


needs_fetch = pytest.mark.skipif(
    not _load_model_fetches_hub_files(),
    reason="load_model does not call vlviz.models.loading.fetch_hub_model yet: without it open_clip retries for minutes "
    "and loads random weights after a broken download",
)


def clear_model_cache() -> None:
    """Empty vlviz's process-wide model cache, whatever its current name."""
    clear = getattr(models, "clear_model_cache", None)
    if callable(clear):
        clear()
        return
    for name in ("MODEL_CACHE", "_MODEL_CACHE"):
        cache = getattr(models, name, None)
        if cache is not None:
            cache.clear()


def point_hub_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Send the hub client to `endpoint` with a fresh cache under `hf_home`, online, without token or telemetry.

    The environment is what a new process would read; `huggingface_hub.constants` is what this one already read.
    """
    hub_cache = hf_home / "hub"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",  # else the first request of a process is GET /api/agent-harnesses
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",  # never send a developer's token, even to 127.0.0.1
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    host = endpoint.split("//", 1)[1].split(":", 1)[0]
    constants = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": hf_constants.HF_URL_HOSTS | {host},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_ETAG_TIMEOUT": 2,
        "HF_HUB_DOWNLOAD_TIMEOUT": 2,
    }
    for name, value in constants.items():
        monkeypatch.setattr(hf_constants, name, value)


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, as a process started with it would see it (vlviz reads the environment, the hub client
    its constants)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-home" / "hub"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> Iterator[FakeHub]:
    """The offline model's files served as `hf-hub:vlviz/scenes-test`, with the hub client and vlviz pointed at it."""
    with FakeHub({REPO: {name: OFFLINE_MODEL_DIR / name for name in (CONFIG, WEIGHTS)}}) as server:
        point_hub_client_at(monkeypatch, server.url, hub_cache.parent)
        clear_model_cache()
        yield server
    clear_model_cache()


def scene_embeddings(model: models.VLModel) -> torch.Tensor:
    images = [Image.open(SCENES_DIR / f"scene_0{i}.png").convert("RGB") for i in range(3)]
    return model.encode_images(images).float().cpu()


@pytest.fixture(scope="module")
def offline_embeddings() -> torch.Tensor:
    """What the bundled offline model makes of three scenes: the hub copy must give the same."""
    return scene_embeddings(load_model(OFFLINE_SPEC, device="cpu"))


def timed_failure(spec: str) -> tuple[str, float]:
    """The message of the ModelUnavailableError loading `spec` raises, and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as caught:
        load_model(spec, device="cpu")
    return str(caught.value), time.monotonic() - start


def assert_clear(message: str) -> None:
    assert message.startswith(f"Cannot load {SPEC}: "), message
    assert "Traceback" not in message and "\n" not in message, message


def test_the_fake_hub_speaks_the_hub_file_api(hub: FakeHub, hub_cache: Path) -> None:
    """The client's own calls work against the fake: metadata headers, a download, and typed 404s."""
    metadata = get_hf_file_metadata(hf_hub_url(REPO, CONFIG))
    config = (OFFLINE_MODEL_DIR / CONFIG).read_bytes()
    assert (metadata.commit_hash, metadata.etag) == (COMMIT, hashlib.sha256(config).hexdigest())
    assert metadata.size == len(config) and metadata.xet_file_data is None
    path = Path(hf_hub_download(REPO, CONFIG))
    assert path.read_bytes() == config and path.is_relative_to(hub_cache)
    assert path.parent == hub_cache / "models--vlviz--scenes-test" / "snapshots" / COMMIT
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "open_clip_pytorch_model.bin")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("vlviz/no-such-repo", CONFIG)


def test_first_load_downloads_the_repo_and_matches_the_offline_model(
    hub: FakeHub, offline_embeddings: torch.Tensor
) -> None:
    model = load_model(SPEC, device="cpu")
    downloads = hub.downloads()
    assert f"/{REPO}/resolve/main/{CONFIG}" in downloads
    assert sum(path.endswith(f"/{WEIGHTS}") for path in downloads) == 1  # the weights, downloaded once
    assert all("/resolve/" in request.path for request in hub.requests)  # the file API only: no /api calls
    assert model.spec == SPEC and model.model_cfg["embed_dim"] == 128
    assert torch.allclose(scene_embeddings(model), offline_embeddings, atol=1e-6)


def test_a_second_load_with_hf_hub_offline_uses_the_cache_without_a_request(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, offline_embeddings: torch.Tensor
) -> None:
    load_model(SPEC, device="cpu")
    assert hub.downloads()
    clear_model_cache()
    hub.clear()
    go_offline(monkeypatch)
    model = load_model(SPEC, device="cpu")
    assert hub.requests == []
    assert torch.allclose(scene_embeddings(model), offline_embeddings, atol=1e-6)


@needs_fetch
def test_an_erroring_hub_gives_a_clear_error_within_seconds(hub: FakeHub) -> None:
    hub.mode = "error"
    message, elapsed = timed_failure(SPEC)
    assert_clear(message)
    assert "HTTP 500" in message and hub.url in message, message
    assert elapsed < HUB_PROBE_TIMEOUT_S, f"{elapsed:.2f} s"


@needs_fetch
@pytest.mark.parametrize("mode", ["stall", "stall-body"])
def test_a_stalling_hub_gives_a_clear_error_within_the_probe_timeout(hub: FakeHub, mode: str) -> None:
    hub.mode = mode
    message, elapsed = timed_failure(SPEC)
    assert_clear(message)
    expected = "did not answer within 3 s" if mode == "stall" else f"stopped sending {CONFIG}"
    assert expected in message and hub.url in message, message
    assert HUB_PROBE_TIMEOUT_S - 0.1 < elapsed < HUB_PROBE_TIMEOUT_S + SLACK_S, f"{elapsed:.2f} s"


@needs_fetch
def test_a_truncated_download_fails_clearly_and_leaves_no_broken_cache_entry(
    hub: FakeHub, hub_cache: Path, offline_embeddings: torch.Tensor
) -> None:
    hub.mode = "truncated"
    message, _ = timed_failure(SPEC)
    assert_clear(message)
    assert f"downloading {WEIGHTS}" in message and "closed before the whole file arrived" in message, message
    repo_cache = hub_cache / "models--vlviz--scenes-test"
    assert not [p.name for p in repo_cache.rglob("*") if p.name.endswith(".incomplete")]
    assert not list((repo_cache / "snapshots").rglob(WEIGHTS))
    for blob in (repo_cache / "blobs").iterdir():  # what is cached is whole: a blob is named by its sha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name

    hub.mode = "normal"
    model = load_model(SPEC, device="cpu")
    assert torch.allclose(scene_embeddings(model), offline_embeddings, atol=1e-6)
    (weights,) = (repo_cache / "snapshots").rglob(WEIGHTS)
    assert weights.read_bytes() == (OFFLINE_MODEL_DIR / WEIGHTS).read_bytes()


@needs_fetch
def test_a_download_that_stalls_midway_fails_after_the_hub_clients_retries_and_caches_nothing(
    hub: FakeHub, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the probe, a stalled weights download is bounded by the hub client: 6 tries of HF_HUB_DOWNLOAD_TIMEOUT
    plus 1 s each (about 65 s at its default of 10 s), which vlviz cannot shorten per call."""
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    hub.mode = "stall-weights"
    message, elapsed = timed_failure(SPEC)
    assert_clear(message)
    assert f"downloading {WEIGHTS}" in message and "stopped sending data" in message, message
    assert elapsed < 6 * (0.5 + 1) + 3, f"{elapsed:.2f} s"
    repo_cache = hub_cache / "models--vlviz--scenes-test"
    assert not [p.name for p in repo_cache.rglob("*") if p.name.endswith(".incomplete")]
    assert not list((repo_cache / "snapshots").rglob(WEIGHTS))


@needs_fetch
def test_load_model_or_offline_falls_back_when_the_hub_errors(hub: FakeHub) -> None:
    hub.mode = "error"
    model, notice = load_model_or_offline(SPEC, device="cpu")
    assert model.spec == OFFLINE_SPEC
    assert notice is not None and f"Cannot load {SPEC}" in notice and "HTTP 500" in notice
    assert "offline model" in notice


@needs_fetch
def test_hf_hub_offline_with_nothing_cached_fails_clearly_without_a_request(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    go_offline(monkeypatch)
    message, elapsed = timed_failure(SPEC)
    assert_clear(message)
    assert "HF_HUB_OFFLINE" in message and CONFIG in message, message
    assert hub.requests == [] and elapsed < 2


@needs_fetch
def test_a_repo_the_hub_does_not_have_is_named_in_the_error(hub: FakeHub) -> None:
    message, elapsed = timed_failure("hf-hub:vlviz/no-such-repo")
    assert message.startswith("Cannot load hf-hub:vlviz/no-such-repo: "), message
    assert "has no repo vlviz/no-such-repo" in message and "HTTP 404" in message, message
    assert elapsed < 2
