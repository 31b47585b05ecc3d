"""The recipe of the offline model `vlviz-scenes`: a small open_clip CLIP trained from scratch on scenes.

`python -m vlviz build-offline-model` runs it; the Train tab's "fresh model" starts from the same
architecture.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP

from vlviz.data.sources import SceneSource
from vlviz.models.checkpoints import save_checkpoint
from vlviz.training.config import TrainConfig
from vlviz.training.loop import train

# The offline model: an open_clip CLIP small enough to train on two CPU cores, with open_clip's
# own BPE tokenizer. 64 px scenes in 8 px patches give an 8 x 8 patch grid for grounding maps.
SCENES_MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
# How the shipped offline model was trained (`python -m vlviz build-offline-model`).
OFFLINE_MODEL_TRAIN_CONFIG = TrainConfig(
    steps=3000, batch_size=128, lr=5e-4, warmup_steps=100, eval_every=250, losses={"clip": 1.0}
)


def scenes_tokenizer():
    """open_clip's BPE tokenizer at the offline model's context length."""
    return open_clip.get_tokenizer("ViT-B-32", context_length=SCENES_MODEL_CFG["text_cfg"]["context_length"])


def build_offline_model(
    out_dir: str | Path, config: TrainConfig = OFFLINE_MODEL_TRAIN_CONFIG
) -> Iterator[dict[str, float]]:
    """Train the offline `vlviz-scenes` model from scratch and save it (fp16 weights) to `out_dir`.

    Yields the training records; the last one carries the held-out figures of the saved model.
    """
    torch.manual_seed(config.seed)
    model = CLIP(**SCENES_MODEL_CFG, output_dict=True)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    source = SceneSource(SCENES_MODEL_CFG["vision_cfg"]["image_size"], mean, std, held_out=1000)
    yield from train(model, scenes_tokenizer(), source, config)
    save_checkpoint(model, SCENES_MODEL_CFG, out_dir, dtype=torch.float16)
    (Path(out_dir) / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
