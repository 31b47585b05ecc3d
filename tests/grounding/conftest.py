"""Models the map-method tests share: seeded small ViTs, a random ViT-B-16 and the shipped offline model."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from torch import nn

from vlviz.models.encoding import VLModel
from vlviz.models.loading import OFFLINE_SPEC, load_model


def seeded_clip(cfg: dict, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**cfg).eval()


def random_pixels(model: nn.Module, batch: int, seed: int = 1) -> torch.Tensor:
    side = model.visual.image_size[0]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit_b16() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16").eval()  # random init: no weights are downloaded


@pytest.fixture(scope="module")
def offline_model() -> VLModel:
    return load_model(OFFLINE_SPEC, device="cpu")
