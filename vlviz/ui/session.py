"""What every tab shares: the sample sets, reading the user's pairs, and loading the chosen model.

Callbacks here are thin adapters: they call the library and turn its `ValueError`s into
`gr.Error`s, which Gradio shows as a message (and returns to API clients) without touching what is
already on screen.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from vlviz.encoding import VLModel
from vlviz.inputs import InputError, PairSet, pairs_from_uploads
from vlviz.models import DEFAULT_ONLINE_SPEC, OFFLINE_SPEC, ModelUnavailableError, load_model_or_offline

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
SAMPLES = {"scenes": ASSETS_DIR / "samples" / "scenes", "photos": ASSETS_DIR / "samples" / "photos"}
MODEL_CHOICES = [OFFLINE_SPEC, DEFAULT_ONLINE_SPEC, "ViT-B-16:openai", "ViT-B-16-SigLIP:webli", "RN50:openai"]
TABLE_SUFFIXES = (".csv", ".json")


def sample_files(name: str) -> tuple[list[str], str]:
    """A bundled sample set as upload values: its image paths and its captions, one per line."""
    folder = SAMPLES[name]
    with (folder / "captions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [str(folder / row["file"]) for row in rows], "\n".join(row["caption"] for row in rows)


def read_pairs(files: list[str] | None, captions_text: str | None) -> PairSet:
    """The user's pairs from uploaded files (images, zips, a caption table) and caption lines."""
    paths = [str(f) for f in files or []]
    tables = [p for p in paths if p.lower().endswith(TABLE_SUFFIXES)]
    images = [p for p in paths if not p.lower().endswith(TABLE_SUFFIXES)]
    if len(tables) > 1:
        raise InputError(f"{len(tables)} caption tables uploaded: give at most one CSV or JSON file.")
    if not images:
        raise InputError("No images yet: upload images (or a zip of them), or pick a sample set.")
    return pairs_from_uploads(images, captions_text, tables[0] if tables else None)


def model_for(spec: str | None) -> tuple[VLModel, str | None]:
    """The model named by `spec` (cached per process), or the offline model with a notice why."""
    try:
        return load_model_or_offline((spec or OFFLINE_SPEC).strip())
    except (ValueError, ModelUnavailableError) as error:
        raise gr.Error(str(error)) from error


def model_status(model: VLModel, notice: str | None) -> str:
    """One line saying which model runs where, plus any notice."""
    line = f"**Model:** `{model.spec}` on `{model.device}` ({str(model.dtype).removeprefix('torch.')})"
    return line + (f"\n\n> {notice}" if notice else "")


@dataclass(frozen=True)
class EncodedPairs:
    """The user's pairs with their global embeddings and the notices worth showing."""

    pairs: PairSet
    image_features: torch.Tensor  # (N, D), L2-normalised
    text_features: torch.Tensor  # (N, D), L2-normalised
    model: VLModel
    notices: list[str]


def encoded_pairs(files: list[str] | None, captions_text: str | None, model_spec: str | None) -> EncodedPairs:
    """Read the pairs and encode them; the model caches embeddings by content, so tabs re-read cheaply."""
    try:
        pairs = read_pairs(files, captions_text)
    except InputError as error:
        raise gr.Error(str(error)) from error
    model, notice = model_for(model_spec)
    notices = [*pairs.notices, *([notice] if notice else [])]
    notices += [
        f"Caption {i + 1} ({pairs.names[i]}) is longer than the model's {model.context_length} tokens and was truncated."
        for i in model.truncated_captions(pairs.captions)
    ]
    return EncodedPairs(pairs, model.encode_images(pairs.images), model.encode_texts(pairs.captions), model, notices)


def export_folder(request: gr.Request | None, view: str) -> Path:
    """An empty folder for one view's downloads in this browser session; the previous files are removed.

    Gradio copies returned files into its own cache, so only the latest set needs to stay here. The
    session id comes from the client, so it is hashed before it names a folder.
    """
    session = (request.session_hash if request is not None else None) or "no-session"
    folder = Path(tempfile.gettempdir()) / "vlviz-exports" / hashlib.sha256(session.encode()).hexdigest()[:16] / view
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
