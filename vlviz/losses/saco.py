"""SaCo's sample-wise affinity consistency as a training term (Wu et al., CVPR 2024; see `vlviz.metrics.consistency`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlviz.losses.base import Loss
from vlviz.metrics.consistency import DEFAULT_TEMPERATURE, in_modal_affinities, off_diagonal, row_symmetric_kl

SACO_DISTANCES = ("l1", "l2", "kl")


def saco_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    distance: str = "l1",
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """SaCo's affinity-consistency loss on L2-normalised features (Wu et al., CVPR 2024).

    With A_I = I I^T and A_T = T T^T (N, N), over the N(N-1) pairs i != j:
      - ``l1`` (default): mean |A_I[i, j] - A_T[i, j]|;
      - ``l2``: mean (A_I[i, j] - A_T[i, j])^2 (CyCLIP's in-modal cyclic loss, NeurIPS 2022, up to
        averaging over i != j rather than all pairs; not SaCo's published form);
      - ``kl``: mean over rows of KL(p_i || q_i) + KL(q_i || p_i), p_i and q_i the softmaxes of the
        off-diagonal rows of A_I and A_T at `temperature`.
    The paper's exact distance is not public: these are vlviz's options, defaults per SEEDS.md.
    Gradients reach both modalities; no stop-gradient.
    """
    _check_distance(distance)
    image_image, text_text = in_modal_affinities(image_features, text_features)  # (N, N) each
    if image_image.shape[0] < 2:
        raise ValueError("saco_loss needs at least 2 pairs: it compares affinities between samples.")
    image_rows, text_rows = off_diagonal(image_image), off_diagonal(text_text)  # (N, N - 1) each
    if distance == "kl":
        return row_symmetric_kl(image_rows, text_rows, temperature).mean()
    difference = image_rows - text_rows
    return difference.abs().mean() if distance == "l1" else difference.square().mean()


def _check_distance(distance: str) -> None:
    if distance not in SACO_DISTANCES:
        raise ValueError(f"Unknown SaCo distance {distance!r}; choose one of {', '.join(SACO_DISTANCES)}.")


@dataclass(frozen=True)
class SacoConfig:
    distance: str = "l1"  # one of SACO_DISTANCES; the paper's is not public (vlviz's default, SEEDS.md)
    temperature: float = DEFAULT_TEMPERATURE  # of the row softmaxes, for ``kl`` only (vlviz's choice)

    def __post_init__(self) -> None:
        _check_distance(self.distance)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class SacoLoss(Loss):
    """SaCo consistency as an add-on term; `inconsistency` (mean |A_I - A_T|) is a diagnostic."""

    Config = SacoConfig
    terms = ("saco_loss",)
    diagnostics = ("inconsistency",)

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, **_: object
    ) -> dict[str, torch.Tensor]:
        distance = self.config.distance
        loss = saco_loss(image_features, text_features, distance, self.config.temperature)
        with torch.no_grad():
            inconsistency = loss if distance == "l1" else saco_loss(image_features, text_features, "l1")
        return {"saco_loss": loss, "inconsistency": inconsistency.detach()}
