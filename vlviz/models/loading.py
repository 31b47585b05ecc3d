"""Load CLIP-style models from any source open_clip knows, with a fast offline fallback.

`load_model(spec)` accepts:
  - ``vlviz-scenes`` : the built-in offline model (shapes and colours, trained by this project);
  - ``NAME:TAG``     : an open_clip architecture with a pretrained tag, e.g. ``ViT-B-32:laion2b_s34b_b79k``;
  - ``NAME:random``  : an open_clip architecture with random weights (tests, training from scratch);
  - ``NAME:FILE``    : an open_clip architecture with weights from a local file;
  - ``hf-hub:org/name`` : an open_clip model on the Hugging Face hub;
  - a folder with ``open_clip_config.json`` and weights (open_clip's local-dir format, also what
    vlviz's trainer writes), or a weights file inside such a folder.

Downloads go through open_clip and huggingface_hub. Before one is tried the hub is probed with a
short timeout, so that an offline machine fails in seconds (the hub client retries for about a
minute otherwise); ``HF_HUB_OFFLINE=1`` skips the probe and lets the hub client use its cache only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from vlviz.data.inputs import return_freed_memory
from vlviz.data.samples import ASSETS_DIR
from vlviz.losses.heads import load_loss_heads
from vlviz.models.checkpoints import load_token_readout
from vlviz.models.encoding import VLModel
from vlviz.models.towers import half_dtype

OFFLINE_SPEC = "vlviz-scenes"
DEFAULT_ONLINE_SPEC = "ViT-B-32:laion2b_s34b_b79k"
OFFLINE_MODEL_DIR = ASSETS_DIR / "models" / OFFLINE_SPEC
GROUNDED_SPEC = "vlviz-scenes-grounded"  # vlviz-scenes trained on to ground words (`vlviz.training.grounded_model`)
BUNDLED_MODELS = {OFFLINE_SPEC: OFFLINE_MODEL_DIR, GROUNDED_SPEC: ASSETS_DIR / "models" / GROUNDED_SPEC}
OFFLINE_NOTICE = (
    "The built-in offline model `vlviz-scenes` knows coloured shapes on a dark background "
    "(circles, squares, triangles, crosses), not photographs: use the bundled scenes to see it work."
)
HUB_PROBE_TIMEOUT_S = 3.0
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded: the message says which one and why."""


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points: the open_clip `model_name` and `pretrained` to create it with."""

    spec: str
    model_name: str
    pretrained: str | None
    needs_hub: bool


def parse_spec(spec: str) -> ModelSource:
    """Turn a user's model spec into an open_clip name and pretrained source, without loading."""
    spec = spec.strip()
    if not spec:
        raise ValueError("Empty model spec: give e.g. 'vlviz-scenes' or 'ViT-B-32:laion2b_s34b_b79k'.")
    if spec in BUNDLED_MODELS:
        if not (BUNDLED_MODELS[spec] / "open_clip_config.json").is_file():
            raise ModelUnavailableError(f"The files of the bundled model {spec} are missing from assets/models.")
        return ModelSource(spec, f"local-dir:{BUNDLED_MODELS[spec]}", None, needs_hub=False)
    if spec.startswith("hf-hub:"):
        return ModelSource(spec, spec, None, needs_hub=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ValueError(f"Folder {path} has no open_clip_config.json: not an open_clip model folder.")
        return ModelSource(spec, f"local-dir:{path.resolve()}", None, needs_hub=False)
    if path.is_file():
        if path.suffix not in _WEIGHT_SUFFIXES:
            raise ValueError(f"{path.name}: expected weights ending in one of {', '.join(_WEIGHT_SUFFIXES)}.")
        if not (path.parent / "open_clip_config.json").is_file():
            raise ValueError(
                f"{path.name} has no open_clip_config.json beside it: give 'ARCHITECTURE:{path}' "
                "(e.g. 'ViT-B-32:/path/weights.pt') so the architecture is known."
            )
        return ModelSource(spec, f"local-dir:{path.parent.resolve()}", None, needs_hub=False)
    name, sep, pretrained = spec.partition(":")
    if name not in open_clip.list_models():
        raise ValueError(f"Unknown model {spec!r}: not a file, a folder, 'hf-hub:...' or an open_clip name.")
    if not sep or pretrained == "random":
        return ModelSource(spec, name, None, needs_hub=False)
    if Path(pretrained).expanduser().is_file():
        return ModelSource(spec, name, str(Path(pretrained).expanduser()), needs_hub=False)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ValueError(f"Unknown pretrained tag {pretrained!r} for {name}; known tags: {', '.join(tags)}.")
    return ModelSource(spec, name, pretrained, needs_hub=True)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: an explicit choice wins, else CUDA, else Apple MPS, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_precision(device: torch.device) -> str:
    """open_clip's name of the precision to load in: `half_dtype`'s half precision on accelerators, else fp32."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(half_dtype(device), "fp32")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds.

    Name resolution can block beyond a socket timeout, so the probe runs in a daemon thread.
    """
    if _hub_offline():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def model_config(model_name: str) -> dict:
    """The open_clip architecture config of a built-in name or a ``local-dir:`` folder (hub models are
    fetched into one first), saved beside any checkpoint trained from it."""
    schema, _, identifier = model_name.partition(":")
    if schema == "local-dir":
        return json.loads((Path(identifier) / "open_clip_config.json").read_text())["model_cfg"]
    return open_clip.get_model_config(model_name)


MAX_SPEC_CHARS = 500
"""Longest model spec accepted (hub names and paths are far shorter); longer text is refused before any lookup."""


def default_cache_budget(device: torch.device) -> int:
    """Bytes of model weights the process cache may hold: `VLVIZ_MODEL_CACHE_GB`, else 4 GB on the CPU and
    40% of the accelerator's memory on CUDA (room left for activations and training)."""
    if os.environ.get("VLVIZ_MODEL_CACHE_GB"):
        return int(float(os.environ["VLVIZ_MODEL_CACHE_GB"]) * 2**30)
    if device.type == "cuda":
        return int(0.4 * torch.cuda.get_device_properties(device).total_memory)
    return 4 * 2**30


def model_bytes(model: torch.nn.Module) -> int:
    """Memory held by a model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class ModelCache:
    """The one process-wide model cache: least recently used first out, bounded by a memory budget.

    Each key has its own lock, so a slow download blocks only the callers of that model; the cache's
    own lock is held only to look up and insert. The model just loaded is kept even when it alone
    exceeds the budget (it is in use); older ones are evicted until the rest fits.
    """

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[tuple[str, str], VLModel] = OrderedDict()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def _lookup(self, key: tuple[str, str]) -> VLModel | None:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def get_or_load(self, key: tuple[str, str], load: Callable[[], VLModel]) -> VLModel:
        """The cached model of `key`, else `load()`'s, inserted; concurrent callers of one key load it once."""
        if (model := self._lookup(key)) is not None:
            return model
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if (model := self._lookup(key)) is not None:
                return model
            model = load()
            with self._lock:
                self._models[key] = model
                budget = self.budget_bytes if self.budget_bytes is not None else default_cache_budget(model.device)
                evicted = 0
                while len(self._models) > 1 and sum(model_bytes(m.model) for m in self._models.values()) > budget:
                    self._models.popitem(last=False)
                    evicted += 1
            if evicted:
                return_freed_memory()  # an evicted model's weights, once no view holds it
            return model

    def keys(self) -> list[tuple[str, str]]:
        """Cached (spec, device) keys, least recently used first."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODEL_CACHE = ModelCache()


def _redact_paths(text: str) -> str:
    """An error message without the server's directories: absolute paths are cut to their last part."""
    return re.sub(r"(?<![\w.-])(?:/[^/\s'\":,]+)+/?", lambda m: os.path.basename(m.group(0).rstrip("/")), text)


def _failure(spec: str, error: BaseException) -> str:
    """One line saying why `spec` failed to load, without internal paths or a traceback."""
    detail = _first_line(error)
    cause = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return f"Cannot load {spec}: {_redact_paths(cause)[:300]}"


def _create(spec: str, source: ModelSource, target: torch.device, name: str | None) -> VLModel:
    """Build the model of `source`; any failure becomes a ModelUnavailableError that holds no half-built model.

    The error is raised outside the `except` block, so neither its cause nor its context (whose traceback
    frames reference the half-built model) outlives this call.
    """
    failure = None
    model_name = fetch_hub_model(source.model_name)  # hf-hub: files downloaded and verified (ModelUnavailableError)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=source.pretrained, device=target, precision=default_precision(target)
        )
        tokenizer = open_clip.get_tokenizer(source.model_name)
        model_cfg = model_config(model_name)  # for hf-hub: the fetched snapshot, no second request
        folder = model_name.removeprefix("local-dir:") if model_name.startswith("local-dir:") else None
        loss_heads = load_loss_heads(folder, model, tokenizer) if folder else {}  # trained PSL / XMM heads
        if folder:
            load_token_readout(model, folder)  # where a grounded checkpoint reads its maps
    except Exception as error:  # open_clip, torch, safetensors and the hub client raise many types
        failure = _failure(spec, error)
    if failure is not None:
        return_freed_memory()  # the half-built model's weights, freed with the error above
        raise ModelUnavailableError(failure)
    model.eval()
    return VLModel(
        spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer, device=target, model_cfg=model_cfg,
        name=name, loss_heads=loss_heads,
    )  # fmt: skip


def load_model(spec: str = OFFLINE_SPEC, device: str | torch.device | None = None, name: str | None = None) -> VLModel:
    """Load (or fetch from the process cache) the model named by `spec` on `device`.

    `name` is what messages and views call the model (default: the spec), e.g. a session's run name
    instead of its folder.

    Raises:
        ValueError: the spec is malformed or names nothing that exists.
        ModelUnavailableError: the weights need a download that cannot happen now, or do not load.
    """
    spec = spec.strip()
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"That model spec is {len(spec)} characters long; specs have at most {MAX_SPEC_CHARS}.")
    target = resolve_device(device)

    def load() -> VLModel:
        source = parse_spec(spec)
        if source.needs_hub and not _hub_offline() and not hub_reachable():
            raise ModelUnavailableError(
                f"Cannot load {spec}: its weights come from the Hugging Face hub, which is not reachable "
                f"from this machine (no answer within {HUB_PROBE_TIMEOUT_S:.0f} s). Set HF_HUB_OFFLINE=1 to "
                "use weights already in your cache, or give a local checkpoint."
            )
        return _create(spec, source, target, name)

    return MODEL_CACHE.get_or_load((spec, str(target)), load)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def load_model_or_offline(spec: str, device: str | torch.device | None = None) -> tuple[VLModel, str | None]:
    """Load `spec`, falling back to the offline model when it cannot be loaded.

    Returns the model and a notice for the user (None when `spec` itself loaded).
    """
    try:
        model = load_model(spec, device)
    except ModelUnavailableError as error:
        return load_model(OFFLINE_SPEC, device), f"{error} Using the offline model instead. {OFFLINE_NOTICE}"
    return model, OFFLINE_NOTICE if spec.strip() == OFFLINE_SPEC else None


# --- hf-hub downloads: fetched and verified here, then loaded by open_clip from disk -----------------------------

HUB_CONFIG_FILE = "open_clip_config.json"
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""The weights open_clip looks for in an ``hf-hub:`` repo, in its order of preference."""


def probe_hub_file(repo_id: str, filename: str = HUB_CONFIG_FILE, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub serves `filename` of `repo_id` whole within `timeout` seconds, else a one-line reason.

    The hub client retries an erroring or silent server for about a minute per file; this one GET, made with the
    client's own endpoint, session and headers, tells an erroring, stalling or wrong server apart in seconds. It
    runs in a daemon thread because name resolution and a stalled body can outlast any socket timeout.
    """
    import httpx2
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    endpoint = constants.ENDPOINT
    url = hf_hub_url(repo_id, filename)
    answered = threading.Event()
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
            with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
                answered.set()
                if response.status_code >= 400:
                    status, code = response.status_code, response.headers.get("X-Error-Code")
                    answer = f"HTTP {status} {response.reason_phrase}".strip()
                    outcome.append(_hub_status_problem(status, code, answer, endpoint, repo_id, filename))
                    return
                response.read()
            outcome.append(None)
        except httpx2.TimeoutException:
            pass  # reported below, as when the thread is still waiting
        except httpx2.ConnectError as error:
            outcome.append(f"cannot connect to the Hugging Face hub at {endpoint} ({error})")
        except httpx2.HTTPError as error:
            outcome.append(f"the hub at {endpoint} broke off while sending {filename} ({error})")
        except Exception as error:  # the hub client's headers, offline mode, a proxy: any cause is the answer
            outcome.append(f"probing the Hugging Face hub at {endpoint} failed ({type(error).__name__}: {error})")

    thread = threading.Thread(target=probe, name="vlviz-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome:
        return outcome[0]
    if answered.is_set():
        return f"the Hugging Face hub at {endpoint} answered but stopped sending {filename} (nothing for {timeout:g} s)"
    return f"the Hugging Face hub at {endpoint} did not answer within {timeout:g} s"


def _hub_status_problem(status: int, code: str | None, answer: str, endpoint: str, repo_id: str, filename: str) -> str:
    """The reason an HTTP error answer from the hub gives, in the user's terms (`code`: the hub's X-Error-Code)."""
    if code == "GatedRepo" or status == 403:
        return f"{repo_id} is gated on the Hugging Face hub ({answer}): accept its terms on the hub, then log in"
    if code == "RepoNotFound" or status == 401:
        return (
            f"the Hugging Face hub at {endpoint} has no repo {repo_id} that you may read ({answer}): check the name, "
            "or log in (`hf auth login`) if it is private"
        )
    if code == "RevisionNotFound":
        return f"{repo_id} on the Hugging Face hub has no such revision ({answer})"
    if code == "EntryNotFound" or status == 404:
        return f"{repo_id} on the Hugging Face hub at {endpoint} has no {filename} ({answer}): not an open_clip repo"
    return f"the Hugging Face hub at {endpoint} answered {answer} for {filename}"


def _hub_error_cause(error: BaseException) -> str:
    """One line naming what went wrong under a hub client error: an HTTP status, a timeout, a broken connection."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None) if isinstance(current, HfHubHTTPError) else None
        if response is not None:
            return f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if isinstance(current, httpx2.TimeoutException):
            return "the server stopped sending data (timed out)"
        if isinstance(current, httpx2.RemoteProtocolError):
            return f"the connection closed before the whole file arrived ({_first_line(current)})"
        if isinstance(current, httpx2.HTTPError):
            return f"{type(current).__name__}: {_first_line(current)}"
        current = current.__cause__ or current.__context__
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def fetch_hub_model(model_name: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str:
    """For ``hf-hub:ORG/NAME``: download (or find in the hub cache) its config and weights, and return
    ``local-dir:SNAPSHOT`` for open_clip to load them from; any other name comes back unchanged.

    Why: open_clip builds a model with random weights when its weights download fails (it only logs a
    warning), and the hub client retries an erroring or silent hub for about a minute per file. Fetching here
    first turns each failure into a ModelUnavailableError naming the spec and the cause (within `timeout`
    seconds for a hub that errors or does not answer), and open_clip then loads exactly the files verified
    here, all from one commit. A download that breaks off leaves no file in the cache (the hub client writes a
    temporary file and renames it only when complete), so the next try starts clean. With HF_HUB_OFFLINE set
    (in the environment now, or when huggingface_hub was imported) only the cache is read.
    """
    if not model_name.startswith("hf-hub:"):
        return model_name
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    repo_id = model_name.removeprefix("hf-hub:")
    offline = constants.HF_HUB_OFFLINE or _hub_offline()
    if not offline and (problem := probe_hub_file(repo_id, HUB_CONFIG_FILE, timeout)) is not None:
        raise ModelUnavailableError(f"Cannot load {model_name}: {problem}.")
    missing = LocalEntryNotFoundError if offline else RemoteEntryNotFoundError
    filename = HUB_CONFIG_FILE
    try:
        config_path = Path(hf_hub_download(repo_id, filename, local_files_only=offline))
        commit = config_path.parent.name  # snapshots/<commit>/open_clip_config.json: the weights of that commit
        for filename in HUB_WEIGHT_FILES:
            try:
                hf_hub_download(repo_id, filename, revision=commit, local_files_only=offline)
            except missing:
                continue
            return f"local-dir:{config_path.parent}"
        where = "its weights are not in the hub cache" if offline else "its repo has no open_clip weights"
        failure = f"{where} ({' or '.join(HUB_WEIGHT_FILES)})"
    except Exception as error:  # the hub client raises HTTP, network, OS and value errors
        if offline and isinstance(error, LocalEntryNotFoundError):
            failure = f"HF_HUB_OFFLINE is set and {filename} was never downloaded to the hub cache"
        else:
            failure = f"downloading {filename} from the Hugging Face hub at {constants.ENDPOINT} failed: "
            failure += _hub_error_cause(error)
    raise ModelUnavailableError(f"Cannot load {model_name}: {failure}.")  # outside `except`: no traceback kept
