"""SPARC's objective (Bica et al., ICML 2024): CLIP's global loss plus a fine-grained, within-sample one.

The alignment weights and grouped embeddings are `vlviz.grounding.sparc`'s (Eqs. 2-5); this module contrasts
each token's language-grouped vision embedding with the sample's tokens (the paper's Appendix C).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlviz.grounding.sparc import alignment_weights, grouped_embeddings
from vlviz.losses.base import Loss
from vlviz.losses.clip import clip_contrastive_loss

# --- SPARC: sparse fine-grained contrastive alignment (vlviz.grounding.sparc) -----------------------------
# A column the softmax must ignore: exp(MIN - max) == 0 exactly, and the value stays finite, so a
# padding row (whose own target column is masked) gives a finite loss that the mask then zeroes.
_MASKED_LOGIT = torch.finfo(torch.float32).min


def sparc_fine_grained_loss(
    token_emb: torch.Tensor,
    patch_emb: torch.Tensor,
    token_mask: torch.Tensor,
    inverse_temperature: torch.Tensor | float,
) -> torch.Tensor:
    """SPARC's fine-grained loss (Bica et al. 2024), as in the paper's Appendix C pseudo-code.

    Within each sample, the language-grouped vision embeddings c_l (Eq. 5 with the weights of
    Eqs. 2-4) and the tokens t_l are L2-normalised; logits[b, l, k] = inverse_temperature * c_l . t_k.
    Both directions are cross-entropies over the sample's own tokens with target l: rows c_l
    against columns t_k (vision to language) and rows t_l against columns c_k (language to vision).
    Padding columns are masked out of the softmax and padding rows out of the average, which is
    sum(loss * mask) / sum(mask) over the valid tokens of the whole batch. Returns the mean of the
    two directions (the paper's 1/2, as in the global loss). No stop-gradients.

    Args:
        token_emb: (B, T, D) projected token embeddings, not normalised.
        patch_emb: (B, P, D) projected patch embeddings, not normalised.
        token_mask: (B, T), 1 (True) at real tokens, 0 at padding.
        inverse_temperature: 1 / tau, e.g. open_clip's `logit_scale` (already exponentiated).
    """
    grouped = grouped_embeddings(alignment_weights(token_emb, patch_emb), patch_emb)  # (B, T, D)
    grouped, tokens = F.normalize(grouped, dim=-1), F.normalize(token_emb, dim=-1)
    mask = token_mask.bool()
    logits = torch.einsum("bld,bkd->blk", grouped, tokens).float() * inverse_temperature  # (B, T, T): c_l . t_k
    batch, length = mask.shape
    labels = torch.arange(length, device=logits.device).repeat(batch)  # target l for row l of every sample
    weight = mask.reshape(-1).to(logits.dtype)
    directional = []
    for rows_by_columns in (logits, logits.transpose(1, 2)):  # vision -> language, language -> vision
        masked = rows_by_columns.masked_fill(~mask[:, None, :], _MASKED_LOGIT)  # padding columns
        loss = F.cross_entropy(masked.reshape(batch * length, length), labels, reduction="none")  # (B * T,)
        directional.append((loss * weight).sum() / weight.sum().clamp_min(1))
    return (directional[0] + directional[1]) / 2


def sparc_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    token_emb: torch.Tensor,
    patch_emb: torch.Tensor,
    token_mask: torch.Tensor,
    inverse_temperature: torch.Tensor | float,
    global_weight: float = 0.5,
    fine_weight: float = 1.0,
) -> torch.Tensor:
    """SPARC's objective: lambda_g * global InfoNCE + lambda_f * fine-grained loss, one temperature for both.

    The global term is CLIP's symmetric InfoNCE on the model's own L2-normalised global features;
    lambda_g = 0.5 as in the paper, lambda_f = 1 (the paper sweeps it over {0.5, 1, 5, 10}).
    """
    global_term = clip_contrastive_loss(image_features, text_features, inverse_temperature)
    fine_term = sparc_fine_grained_loss(token_emb, patch_emb, token_mask, inverse_temperature)
    return global_weight * global_term + fine_weight * fine_term


GLOBAL_POOLINGS = ("model", "mean")


def mean_pooled_features(
    patch_emb: torch.Tensor, token_emb: torch.Tensor, token_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised means of the patch embeddings and of the real tokens' embeddings: (B, D), (B, D).

    SPARC's `global_pooling="mean"`: the global term then sees the very embeddings the fine-grained
    term groups, so patches must carry what the caption says for the global loss to fall.
    """
    weights = token_mask.to(token_emb.dtype)[..., None]  # (B, T, 1)
    text = (token_emb * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    return F.normalize(patch_emb.mean(dim=1), dim=-1), F.normalize(text, dim=-1)


@dataclass(frozen=True)
class SparcConfig:
    global_weight: float = 0.5  # lambda_g, the paper's value
    fine_weight: float = 1.0  # lambda_f; the paper sweeps {0.5, 1, 5, 10} and does not name one (vlviz's default)
    # Where the global term's embeddings come from; the paper does not say. "model" (vlviz's default):
    # the model's own pooled features (class token / end-of-text); "mean": means of the patch and token embeddings.
    global_pooling: str = "model"

    def __post_init__(self) -> None:
        if self.global_pooling not in GLOBAL_POOLINGS:
            raise ValueError(f"global_pooling must be one of {GLOBAL_POOLINGS}, got {self.global_pooling!r}")


class SparcLoss(Loss):
    """SPARC's two weighted terms, `global_loss` and `fine_loss` (their sum is `sparc_loss`).

    `needs_tokens`: the trainer adds `patch_features`, `token_features` and `token_mask` to the
    model's output. The global term is CLIP's InfoNCE: train with {"sparc": 1} alone for the
    paper's objective. With `global_pooling="mean"` the global term contrasts mean-pooled patch
    and token embeddings instead of the model's pooled features (an option: the paper is silent).
    """

    Config = SparcConfig
    needs_tokens = True
    terms = ("global_loss", "fine_loss")

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
        if self.config.global_pooling == "mean":
            image_features, text_features = mean_pooled_features(patch_features, token_features, token_mask)
        global_term = clip_contrastive_loss(image_features, text_features, logit_scale)
        fine_term = sparc_fine_grained_loss(token_features, patch_features, token_mask, logit_scale)
        return {
            "global_loss": self.config.global_weight * global_term,
            "fine_loss": self.config.fine_weight * fine_term,
        }
