"""SigLIP's sigmoid loss (Zhai et al. 2023): the global loss of models with a sigmoid head (a learned `logit_bias`).

Continuing such a model with CLIP's softmax InfoNCE would leave its bias untrained and its sigmoid
match probabilities untrained too; this loss trains the model the way it was pre-trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlviz.losses.base import Loss

NEEDS_SIGMOID_HEAD = (
    "The siglip loss needs a model with a sigmoid head (a logit_bias, e.g. ViT-B-16-SigLIP); "
    "this model has none: use the clip loss instead."
)


def siglip_sigmoid_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over a batch of N pairs (Zhai et al. 2023, Eq. 1 and Algorithm 1).

    logits z = t * I T^T + b, (N, N); labels y = 2 * eye(N) - 1 (+1 for a matching pair, -1 else);
    loss = -sum_ij log sigmoid(y_ij z_ij) / N: every pair is its own binary problem, summed over
    the N^2 pairs and divided by N (not N^2), as open_clip's `SigLipLoss` does in one process.
    """
    logits = logit_scale * image_features @ text_features.T + logit_bias  # (N, N)
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


class SiglipLoss(Loss):
    """The sigmoid loss on L2-normalised global features; `logit_scale` (t) and `logit_bias` (b) are diagnostics."""

    terms = ("sigmoid_loss",)
    diagnostics = ("logit_scale", "logit_bias")

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        **_: object,
    ) -> dict[str, torch.Tensor]:
        if logit_bias is None:
            raise ValueError(NEEDS_SIGMOID_HEAD)
        loss = siglip_sigmoid_loss(image_features, text_features, logit_scale, logit_bias)
        return {"sigmoid_loss": loss, "logit_scale": logit_scale.detach(), "logit_bias": logit_bias.detach()}
