"""A plain contrastive trainer for open_clip models on scenes, and the offline model it builds.

`train` is a generator: it yields one record per step (and evaluation figures every
`eval_every` steps) and stops early when its `stop` event is set, so a command line, a notebook or
a UI tab can all drive it. It knows nothing of any UI.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from safetensors.torch import save_file

from vlviz.affinity import affinity, caption_recall_at_1, recall_at_k, retrieval_ranks
from vlviz.data.scenes import generate_scenes
from vlviz.losses import create_loss

# The offline model: an open_clip CLIP small enough to train on two CPU cores, with open_clip's
# own BPE tokenizer. 64 px scenes in 8 px patches give an 8 x 8 patch grid for grounding maps.
SCENES_MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
HELD_OUT_SEED = 1_000_000  # scenes for evaluation come from seeds no training stream uses


@dataclass
class TrainConfig:
    steps: int = 3000  # optimiser steps
    batch_size: int = 128  # pairs per step (the contrastive negatives)
    lr: float = 5e-4  # peak AdamW learning rate
    weight_decay: float = 0.1  # on weight matrices only, not on norms, biases or the logit scale
    warmup_steps: int = 100  # linear warm-up, then cosine decay to zero
    grad_clip: float = 1.0  # maximum global gradient norm
    eval_every: int = 250  # evaluate on the held-out scenes every this many steps
    eval_size: int = 1000  # held-out scenes
    seed: int = 0  # initialisation and data order
    losses: dict[str, float] = field(default_factory=lambda: {"clip": 1.0})  # registry name -> weight

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be at least 2 (contrastive losses need negatives), got {self.batch_size}"
            )
        if not self.losses:
            raise ValueError("Give at least one loss, e.g. {'clip': 1.0}.")


def scene_pixels(images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """uint8 (N, S, S, 3) scenes -> normalised (N, 3, S, S) floats, as open_clip's preprocess would.

    Scenes are rendered at the model's input size, so resizing and cropping are the identity.
    """
    preprocess_cfg = getattr(model.visual, "preprocess_cfg", {})
    mean = torch.tensor(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=images.device)
    std = torch.tensor(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD), device=images.device)
    pixels = images.permute(0, 3, 1, 2).float() / 255
    return (pixels - mean[:, None, None]) / std[:, None, None]


def scene_stream(batch_size: int, seed: int, image_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless batches of fresh scenes, one generator seed per step: (uint8 images, captions)."""
    step = 0
    while True:
        batch = generate_scenes(batch_size, seed=seed * 1_000_003 + step, image_size=image_size)
        yield torch.from_numpy(batch.images), batch.captions
        step += 1


@torch.inference_mode()
def evaluate(model: torch.nn.Module, tokenizer, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Retrieval on a held-out set: image -> text R@1 (identical captions count as hits) and text -> image R@1."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    image_features = torch.cat(
        [F.normalize(model.encode_image(scene_pixels(chunk.to(device), model)), dim=-1) for chunk in images.split(256)]
    )
    text_features = torch.cat(
        [
            F.normalize(model.encode_text(tokenizer(list(chunk)).to(device)), dim=-1)
            for chunk in (captions[i : i + 256] for i in range(0, len(captions), 256))
        ]
    )
    similarity = affinity(image_features, text_features)
    _, text_to_image = retrieval_ranks(similarity)
    model.train(was_training)
    return {
        "image_to_text_r1": caption_recall_at_1(similarity, captions),
        "text_to_image_r1": recall_at_k(text_to_image, 1),
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only, as open_clip's trainer does."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name
        (no_decay if exclude else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    model: torch.nn.Module,
    tokenizer,
    config: TrainConfig,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, float]]:
    """Train `model` on endless scenes; yield a record per step, with held-out figures every `eval_every`."""
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    image_size = model.visual.image_size[0]
    held_out = generate_scenes(config.eval_size, seed=HELD_OUT_SEED, image_size=image_size)
    held_out_images = torch.from_numpy(held_out.images)
    losses = {name: (create_loss(name).to(device), weight) for name, weight in config.losses.items()}
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    batches = scene_stream(config.batch_size, config.seed, image_size)
    for step in range(config.steps):
        if stop is not None and stop.is_set():
            return
        images, captions = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        out = model(scene_pixels(images.to(device), model), tokenizer(captions).to(device))
        terms: dict[str, torch.Tensor] = {}
        for name, (loss, weight) in losses.items():
            for key, value in loss(**out).items():
                terms[f"{name}/{key}"] = value * weight if key.endswith("_loss") else value
        total = sum(value for key, value in terms.items() if key.endswith("_loss"))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        record = {"step": step + 1, "lr": lr_at(step), "total_loss": float(total.detach())}
        record.update({key: float(value.detach()) for key, value in terms.items()})
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            record.update(evaluate(model, tokenizer, held_out_images, held_out.captions))
        yield record


def save_checkpoint(
    model: torch.nn.Module, model_cfg: dict, out_dir: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Write `model` in open_clip's local-dir format (config JSON + safetensors), atomically.

    Each file is written to a temporary name and renamed, so a crash never leaves a half file.
    `vlviz.load_model(out_dir)` and `open_clip.create_model("local-dir:" + out_dir)` load it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    for name, write in (
        ("open_clip_model.safetensors", lambda path: save_file(state, path)),
        ("open_clip_config.json", lambda path: Path(path).write_text(json.dumps(config, indent=2))),
    ):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


def build_offline_model(out_dir: str | Path, config: TrainConfig | None = None) -> Iterator[dict[str, float]]:
    """Train the offline `vlviz-scenes` model from scratch and save it (fp16 weights) to `out_dir`.

    Yields the training records; the last one carries the held-out figures of the saved model.
    """
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    model = CLIP(**SCENES_MODEL_CFG, output_dict=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=SCENES_MODEL_CFG["text_cfg"]["context_length"])
    yield from train(model, tokenizer, config)
    save_checkpoint(model, SCENES_MODEL_CFG, out_dir, dtype=torch.float16)
    (Path(out_dir) / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
