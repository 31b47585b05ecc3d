"""CLIP's contrastive loss (Radford et al. 2021): the global image-text alignment every other loss adds to."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlviz.losses.base import Loss


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


class ClipLoss(Loss):
    """CLIP InfoNCE on L2-normalised global features; `logit_scale` (the learned 1/tau) is a diagnostic."""

    terms = ("contrastive_loss",)
    diagnostics = ("logit_scale",)

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, **_: object
    ) -> dict[str, torch.Tensor]:
        loss = clip_contrastive_loss(image_features, text_features, logit_scale)
        return {"contrastive_loss": loss, "logit_scale": logit_scale.detach()}
