"""Training objectives as small modules that return named terms.

Each loss takes open_clip's output names (`image_features`, `text_features`, `logit_scale`, ...)
so that `loss(**model_out)` works, and returns a dict: keys ending in ``_loss`` are summed by the
trainer, other keys are diagnostics to plot. `LOSSES` is the registry the trainer, the UI and the
tests enumerate. SIMLA's two objectives live in their own modules (`vlviz.psl`, `vlviz.xmm`): they
carry trainable heads and set ``needs_inputs = True`` (see `create_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlviz.consistency import DEFAULT_TEMPERATURE, in_modal_affinities, off_diagonal, row_symmetric_kl
from vlviz.psl import PslLoss
from vlviz.sparc import alignment_weights, grouped_embeddings
from vlviz.xmm import XmmLoss


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


# --- SaCo: sample-wise affinity consistency (vlviz.consistency) ---------------------------------
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
    if distance not in SACO_DISTANCES:
        raise ValueError(f"Unknown SaCo distance {distance!r}; choose one of {', '.join(SACO_DISTANCES)}.")
    image_image, text_text = in_modal_affinities(image_features, text_features)  # (N, N) each
    if image_image.shape[0] < 2:
        raise ValueError("saco_loss needs at least 2 pairs: it compares affinities between samples.")
    image_rows, text_rows = off_diagonal(image_image), off_diagonal(text_text)  # (N, N - 1) each
    if distance == "kl":
        return row_symmetric_kl(image_rows, text_rows, temperature).mean()
    difference = image_rows - text_rows
    return difference.abs().mean() if distance == "l1" else difference.square().mean()


class SacoLoss(nn.Module):
    """SaCo consistency as an add-on term; `inconsistency` (mean |A_I - A_T|) is a diagnostic."""

    def __init__(self, distance: str = "l1", temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__()
        if distance not in SACO_DISTANCES:
            raise ValueError(f"Unknown SaCo distance {distance!r}; choose one of {', '.join(SACO_DISTANCES)}.")
        self.distance = distance
        self.temperature = temperature

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, **_: object
    ) -> dict[str, torch.Tensor]:
        loss = saco_loss(image_features, text_features, self.distance, self.temperature)
        with torch.no_grad():
            inconsistency = loss if self.distance == "l1" else saco_loss(image_features, text_features, "l1")
        return {"saco_loss": loss, "inconsistency": inconsistency.detach()}


# --- SPARC: sparse fine-grained contrastive alignment (vlviz.sparc) -----------------------------
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


class SparcLoss(nn.Module):
    """SPARC's two weighted terms, `global_loss` and `fine_loss` (their sum is `sparc_loss`).

    `needs_tokens` tells the trainer to add `patch_features`, `token_features` and `token_mask`
    to the model's output (`vlviz.sparc.forward_with_tokens`). The global term is CLIP's InfoNCE:
    train with {"sparc": 1} alone for the paper's objective.
    """

    needs_tokens = True

    def __init__(self, global_weight: float = 0.5, fine_weight: float = 1.0) -> None:
        super().__init__()
        self.global_weight = global_weight
        self.fine_weight = fine_weight

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
        fine_term = sparc_fine_grained_loss(token_features, patch_features, token_mask, logit_scale)
        return {"global_loss": self.global_weight * global_term, "fine_loss": self.fine_weight * fine_term}


LOSSES: dict[str, type[nn.Module]] = {
    "clip": ClipLoss,
    "saco": SacoLoss,
    "sparc": SparcLoss,
    "psl": PslLoss,
    "xmm": XmmLoss,
}


def create_loss(name: str, model: nn.Module | None = None, tokenizer: object = None, **kwargs: object) -> nn.Module:
    """A loss module by registry name.

    A loss with ``needs_inputs = True`` works on the batch itself, not only on features: it is
    built for the model it trains with and that model's tokenizer (`cls(model, tokenizer, **kwargs)`,
    which sizes its heads), and the trainer calls it with `pixels`, `ids`, `captions` and `model`.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {', '.join(LOSSES)}.")
    if getattr(LOSSES[name], "needs_inputs", False):
        if model is None or tokenizer is None:
            raise ValueError(f"Loss {name!r} is built for a model: pass model= and tokenizer=.")
        return LOSSES[name](model, tokenizer, **kwargs)
    return LOSSES[name](**kwargs)
