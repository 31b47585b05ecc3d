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
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from vlviz.encoding import VLModel

OFFLINE_SPEC = "vlviz-scenes"
DEFAULT_ONLINE_SPEC = "ViT-B-32:laion2b_s34b_b79k"
OFFLINE_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "models" / OFFLINE_SPEC
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
    if spec == OFFLINE_SPEC:
        if not (OFFLINE_MODEL_DIR / "open_clip_config.json").is_file():
            raise ModelUnavailableError(f"The offline model files are missing from {OFFLINE_MODEL_DIR}.")
        return ModelSource(spec, f"local-dir:{OFFLINE_MODEL_DIR}", None, needs_hub=False)
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
    """Half precision on accelerators (bf16 where supported), full precision on the CPU."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "fp32"


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds.

    Name resolution can block beyond a socket timeout, so the probe runs in a daemon thread.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
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


def model_config(source: ModelSource) -> dict:
    """The open_clip architecture config of a source, saved beside any checkpoint trained from it."""
    schema, _, identifier = source.model_name.partition(":")
    if schema == "local-dir":
        return json.loads((Path(identifier) / "open_clip_config.json").read_text())["model_cfg"]
    if schema == "hf-hub":
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(identifier, "open_clip_config.json")).read_text())["model_cfg"]
    return open_clip.get_model_config(source.model_name)


_MODEL_CACHE: dict[tuple[str, str], VLModel] = {}  # the one process-wide cache: (spec, device) -> model
_MODEL_CACHE_LOCK = threading.Lock()


def load_model(spec: str = OFFLINE_SPEC, device: str | torch.device | None = None) -> VLModel:
    """Load (or fetch from the process cache) the model named by `spec` on `device`.

    Raises:
        ValueError: the spec is malformed or names nothing that exists.
        ModelUnavailableError: the weights need a download that cannot happen now.
    """
    target = resolve_device(device)
    key = (spec.strip(), str(target))
    with _MODEL_CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        source = parse_spec(spec)
        offline_env = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        if source.needs_hub and not offline_env and not hub_reachable():
            raise ModelUnavailableError(
                f"Cannot load {spec}: its weights come from the Hugging Face hub, which is not reachable "
                f"from this machine (no answer within {HUB_PROBE_TIMEOUT_S:.0f} s). Set HF_HUB_OFFLINE=1 to "
                "use weights already in your cache, or give a local checkpoint."
            )
        precision = default_precision(target)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                source.model_name, pretrained=source.pretrained, device=target, precision=precision
            )
            tokenizer = open_clip.get_tokenizer(source.model_name)
        except (RuntimeError, OSError) as error:
            raise ModelUnavailableError(f"Cannot load {spec}: {error}") from error
        model.eval()
        loaded = VLModel(
            spec=key[0], model=model, preprocess=preprocess, tokenizer=tokenizer, device=target,
            model_cfg=model_config(source),
        )  # fmt: skip
        _MODEL_CACHE[key] = loaded
        return loaded


def load_model_or_offline(spec: str, device: str | torch.device | None = None) -> tuple[VLModel, str | None]:
    """Load `spec`, falling back to the offline model when it cannot be loaded.

    Returns the model and a notice for the user (None when `spec` itself loaded).
    """
    try:
        model = load_model(spec, device)
    except ModelUnavailableError as error:
        return load_model(OFFLINE_SPEC, device), f"{error} Using the offline model instead. {OFFLINE_NOTICE}"
    return model, OFFLINE_NOTICE if spec.strip() == OFFLINE_SPEC else None
