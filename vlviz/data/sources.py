"""Training data sources: endless scenes, or a finite set of image-caption pairs with a held-out split.

A source hands the trainer ready-to-use batches (normalised pixels on the model's device and their
captions) and a fixed held-out split for evaluation that is never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlviz.data.scenes import CaptionStyle, SceneBatch, caption_style, generate_scenes

HELD_OUT_SEED = 1_000_000  # scenes for evaluation come from seeds no training stream uses


def normalise_uint8(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), as open_clip's ToTensor + Normalize."""
    pixels = images.permute(0, 3, 1, 2).float() / 255
    mean_t = torch.tensor(mean, device=images.device)[:, None, None]
    std_t = torch.tensor(std, device=images.device)[:, None, None]
    return (pixels - mean_t) / std_t


@dataclass(frozen=True)
class HeldOut:
    """The evaluation split: normalised pixels (N, 3, H, W) on the CPU, captions, and scene ground truth if any."""

    pixels: torch.Tensor
    captions: list[str]
    scenes: SceneBatch | None = None


class SceneSource:
    """Endless fresh scenes rendered at the model's input size; a held-out set from a reserved seed.

    Training and held-out captions share one caption style (`vlviz.data.scenes.CAPTION_STYLES`):
    the held-out figures measure the captions the run trains on.
    """

    name = "scenes"

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        held_out: int = 1000,
        captions: str | CaptionStyle = "template",
    ) -> None:
        self.image_size, self.mean, self.std = image_size, mean, std
        self.captions = caption_style(captions)
        scenes = generate_scenes(held_out, seed=HELD_OUT_SEED, image_size=image_size, captions=self.captions)
        self.held_out = HeldOut(normalise_uint8(torch.from_numpy(scenes.images), mean, std), scenes.captions, scenes)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        scenes = generate_scenes(
            batch_size, seed=seed * 1_000_003 + step, image_size=self.image_size, captions=self.captions
        )
        return normalise_uint8(torch.from_numpy(scenes.images), self.mean, self.std), scenes.captions


class PairSource:
    """A finite set of pairs, preprocessed once; a seeded held-out split; batches sampled without replacement per epoch."""

    name = "pairs"

    def __init__(
        self,
        images: list[Image.Image],
        captions: list[str],
        preprocess: Callable[[Image.Image], torch.Tensor],
        held_out_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions.")
        if not 0 < held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        n_held = max(1, round(len(images) * held_out_fraction))
        if len(images) - n_held < 2:
            raise ValueError(f"{len(images)} pairs are too few to train on: keep at least 2 after a held-out split.")
        order = np.random.default_rng(seed).permutation(len(images))
        pixels = torch.stack([preprocess(image) for image in images])  # once, not per step
        held, train = order[:n_held], order[n_held:]
        self.held_out = HeldOut(pixels[held], [captions[i] for i in held])
        self.pixels, self.captions = pixels[train], [captions[i] for i in train]

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        if batch_size > len(self):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(self)} training pairs.")
        per_epoch = len(self) // batch_size
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        chosen = order[index * batch_size : (index + 1) * batch_size]
        return self.pixels[chosen], [self.captions[i] for i in chosen.tolist()]
