"""Word-region contrast: vlviz's own fine-grained loss, a cross-image variant of SPARC's (not the paper's method).

SPARC contrasts each token's language-grouped vision embedding with the *same caption's* other tokens.
That is satisfied without reading the image: both towers carry position embeddings, so tying token
position l to a fixed image place p(l) makes every c_l distinct (measured on scenes as peak stability,
`vlviz.grounding.maps.peak_stability`). Here each caption token is grouped over *every image of the batch*
with SPARC's own alignment weights (Eqs. 2-5), and the token must pick out its own image's group
among them: a fixed place holds the same kind of content in every image, so only following the
named content lowers the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlviz.grounding.sparc import alignment_weights, grouped_embeddings
from vlviz.losses.base import Loss
from vlviz.losses.clip import clip_contrastive_loss

# The largest B x B x T x max(P, D) tensor a step may build (each such tensor is 1 GiB in float32); the
# offline model (T 32, P 64, D 128) fits batch 256 under it, a ViT-B/16 (T 77, P 196, D 512) batch 82.
MAX_CROSS_CELLS = 2**28


def cross_image_grouped_embeddings(
    token_emb: torch.Tensor, patch_emb: torch.Tensor, threshold: float | None = None
) -> torch.Tensor:
    """c[i, j, l] = sum_p a_lp v_jp: token l of caption i grouped over image j's patches, (B, B, T, D).

    The weights a are SPARC's alignment weights of caption i's tokens against image j's patches
    (min-max over patches, zero below `threshold`, 1/P by default, rows renormalised), so the diagonal
    i == j is exactly `grouped_embeddings(alignment_weights(token_emb, patch_emb), patch_emb)`.
    """
    batch, length, dim = token_emb.shape
    n_patches = patch_emb.shape[1]
    tokens = token_emb[:, None].expand(batch, batch, length, dim).reshape(batch * batch, length, dim)
    patches = patch_emb[None].expand(batch, batch, n_patches, dim).reshape(batch * batch, n_patches, dim)
    grouped = grouped_embeddings(alignment_weights(tokens, patches, threshold), patches)  # (B * B, T, D)
    return grouped.reshape(batch, batch, length, dim)


def word_region_loss(
    token_emb: torch.Tensor,
    patch_emb: torch.Tensor,
    token_mask: torch.Tensor,
    inverse_temperature: torch.Tensor | float,
    threshold: float | None = None,
) -> torch.Tensor:
    """Cross-entropy of each real token of caption i over the batch's images j, target j == i.

    logits[i, l, j] = inverse_temperature * t_il . c_ijl (both L2-normalised; c from
    `cross_image_grouped_embeddings`); the loss is averaged over the valid tokens of the batch, as
    SPARC's fine-grained loss is. One direction only (a token chooses among images), since an image
    has no token of its own to choose with.

    Args:
        token_emb: (B, T, D) projected token embeddings, not normalised.
        patch_emb: (B, P, D) projected patch embeddings, not normalised.
        token_mask: (B, T), 1 (True) at real tokens, 0 at padding.
        inverse_temperature: 1 / tau, e.g. open_clip's `logit_scale` (already exponentiated).
        threshold: the alignment weights' sparsity threshold sigma in [0, 1]; None for SPARC's 1/P.
    """
    batch, length = token_mask.shape
    per_pair = length * max(patch_emb.shape[1], token_emb.shape[-1])  # cells of one (caption, image) pair
    if batch * batch * per_pair > MAX_CROSS_CELLS:
        largest = math.isqrt(MAX_CROSS_CELLS // per_pair)
        raise ValueError(
            f"The word-region loss compares every caption with every image of the batch: at batch {batch} with "
            f"{length} tokens and {patch_emb.shape[1]} patches that is more memory than a run may take. Use a "
            f"batch of at most {largest}."
        )
    grouped = F.normalize(cross_image_grouped_embeddings(token_emb, patch_emb, threshold), dim=-1)  # (B, B, T, D)
    tokens = F.normalize(token_emb, dim=-1)
    logits = torch.einsum("ild,ijld->ilj", tokens, grouped).float() * inverse_temperature  # (B, T, B)
    labels = torch.arange(batch, device=logits.device).repeat_interleave(length)  # row (i, l) -> image i
    loss = F.cross_entropy(logits.reshape(batch * length, batch), labels, reduction="none")
    weight = token_mask.reshape(-1).to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1)


@dataclass(frozen=True)
class WordRegionConfig:
    global_weight: float = 0.5  # as SPARC's lambda_g, so the two compare at equal weights
    fine_weight: float = 1.0  # as SPARC's lambda_f default in vlviz
    # The alignment weights' sparsity threshold on min-max values; None: SPARC's 1/P (keeps most patches).
    # A higher one (e.g. 0.5) groups only the patches near the peak, so the peak itself must hold the word.
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1] (min-max values do), got {self.threshold}")


class WordRegionLoss(Loss):
    """vlviz's word-region contrast: CLIP's global InfoNCE plus `word_region_loss`, one temperature for both.

    Not SPARC: SPARC's within-caption contrast is `LOSSES["sparc"]`. This one is measured against it
    in `bench.grounding` ("word-region (vlviz)"). Memory grows as B^2 * T * P for the weights.
    """

    Config = WordRegionConfig
    needs_tokens = True
    terms = ("global_loss", "word_region_loss")

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        patch_features: torch.Tensor,
        token_features: torch.Tensor,
        token_mask: torch.Tensor,
        **_: object,
    ) -> dict[str, torch.Tensor]:
        global_term = clip_contrastive_loss(image_features, text_features, logit_scale)
        fine_term = word_region_loss(token_features, patch_features, token_mask, logit_scale, self.config.threshold)
        return {
            "global_loss": self.config.global_weight * global_term,
            "word_region_loss": self.config.fine_weight * fine_term,
        }
