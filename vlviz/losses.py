"""Training objectives as small modules that return named terms.

Each loss takes open_clip's output names (`image_features`, `text_features`, `logit_scale`, ...)
so that `loss(**model_out)` works, and returns a dict: keys ending in ``_loss`` are summed by the
trainer, other keys are diagnostics to plot. `LOSSES` is the registry the trainer, the UI and the
tests enumerate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def clip_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of N pairs (Radford et al. 2021, Eq. in Fig. 3).

    logits = s * I T^T, (N, N); the loss is the mean of the cross-entropies of rows (image -> text)
    and columns (text -> image) against the diagonal.
    """
    logits = logit_scale * image_features @ text_features.T  # (N, N)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ClipLoss(nn.Module):
    """CLIP InfoNCE on L2-normalised global features."""

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, **_: object
    ) -> dict[str, torch.Tensor]:
        loss = clip_contrastive_loss(image_features, text_features, logit_scale)
        return {"contrastive_loss": loss, "logit_scale": logit_scale.detach()}


LOSSES: dict[str, type[nn.Module]] = {"clip": ClipLoss}


def create_loss(name: str, **kwargs: object) -> nn.Module:
    """A loss module by registry name."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {', '.join(LOSSES)}.")
    return LOSSES[name](**kwargs)
