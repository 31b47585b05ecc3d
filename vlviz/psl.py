"""SIMLA's pseudo-keyword prediction, PSL (Khan et al., ECCV 2022), on a dual encoder's image embedding.

A concept head (one linear layer on the L2-normalised global image embedding) predicts, over a
vocabulary of words, which ones describe the image: a multi-label problem trained with binary
cross-entropy. The targets mix the caption's keywords (`vlviz.keywords`: the text tower's
last-layer attention from the pooled token, SIMLA's vote) with the soft predictions of a momentum
(EMA) copy of the head, ALBEF-style distillation:

    target = (1 - alpha) * keywords + alpha * sigmoid(ema_head(image)),
    ema_head <- momentum * ema_head + (1 - momentum) * head      (after every optimiser step)

so the momentum head can add words the caption left out (SIMLA's pseudo-labels). Letters in shape
comments: B pairs, D joint dimensions, V vocabulary words.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlviz.keywords import KEEP, PER_HEAD, default_concepts, keywords_from_attention, mention_matrix, pooled_attention
from vlviz.tokens import token_layout

MOMENTUM = 0.995  # SIMLA
ALPHA = 0.4  # SIMLA's distillation weight
ALPHA_RAMP_STEPS = 100  # SIMLA ramps alpha up over its first epoch; an endless scene stream has no epochs


def joint_dim(model: nn.Module) -> int:
    """The dimension of an open_clip model's joint embedding space."""
    output_dim = getattr(model.visual, "output_dim", None)
    if output_dim is None:
        raise ValueError(
            f"Cannot tell the embedding size of {type(model).__name__}: its image tower has no output_dim."
        )
    return int(output_dim)


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """ema <- momentum * ema + (1 - momentum) * online, parameter by parameter (a lerp towards the online weights)."""
    for target, source in zip(ema.parameters(), online.parameters(), strict=True):
        target.lerp_(source.detach(), 1.0 - momentum)


class PslLoss(nn.Module):
    """PSL as a loss term: `psl_loss` (BCE), with `precision_at_k`, `targets_per_caption` and `alpha` to plot.

    `needs_inputs`: built for the model and tokenizer (the head is sized to the joint space) and
    called with the batch's `ids` and `captions` and the `model`, whose text tower's attention
    selects the keywords (no gradient flows through the selection).

    Args:
        model: the open_clip model being trained (only its sizes are read here).
        tokenizer: the tokenizer of its captions (to merge BPE pieces into words).
        vocabulary: the words the head predicts (default: `assets/concepts.txt`); single lowercase words.
        momentum: of the EMA head (SIMLA: 0.995).
        alpha: weight of the EMA head's soft targets (SIMLA: 0.4).
        alpha_ramp_steps: alpha rises linearly from 0 over this many steps (0: no ramp).
        per_head, keep: SIMLA's keyword vote (top 4 per head, keep 5).
        content_words_only: leave stop words out of the keyword candidates.
        precision_k: k of the logged precision@k, the share of the top-k predicted words that the caption contains.
    """

    needs_inputs = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        vocabulary: Sequence[str] | None = None,
        momentum: float = MOMENTUM,
        alpha: float = ALPHA,
        alpha_ramp_steps: int = ALPHA_RAMP_STEPS,
        per_head: int = PER_HEAD,
        keep: int = KEEP,
        content_words_only: bool = False,
        precision_k: int = 3,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        words = list(
            dict.fromkeys(
                w.strip().lower() for w in (default_concepts() if vocabulary is None else vocabulary) if w.strip()
            )
        )
        if not words:
            raise ValueError("The PSL vocabulary is empty: give at least one word.")
        self.vocabulary = words
        self.tokenizer = tokenizer
        self.momentum, self.alpha, self.alpha_ramp_steps = momentum, alpha, alpha_ramp_steps
        self.per_head, self.keep, self.content_words_only = per_head, keep, content_words_only
        self.precision_k = min(precision_k, len(words))
        # Everything needed to rebuild this module around its saved state (vlviz.train.save_loss_heads).
        self.options = {
            "vocabulary": words, "momentum": momentum, "alpha": alpha, "alpha_ramp_steps": alpha_ramp_steps,
            "per_head": per_head, "keep": keep, "content_words_only": content_words_only, "precision_k": precision_k,
        }  # fmt: skip
        self.head = nn.Linear(joint_dim(model), len(words))
        # Start every word at the share of the vocabulary a caption's keywords fill (RetinaNet's prior
        # initialisation), with zero weights: the momentum head then averages only what was learned,
        # not its random start, and its first soft targets are small rather than 0.5 for every word.
        prior = min(keep / len(words), 0.5)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(prior / (1 - prior)))
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_alpha(self) -> float:
        """alpha, ramped linearly over the first `alpha_ramp_steps` optimiser steps."""
        if self.alpha_ramp_steps <= 0:
            return self.alpha
        return self.alpha * min(1.0, int(self.steps) / self.alpha_ramp_steps)

    def targets(
        self, ids: torch.Tensor, captions: Sequence[str], model: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V) hard targets (the caption's keywords in the vocabulary) and (B, V) words the caption contains."""
        layout = token_layout(self.tokenizer, list(captions))
        found = keywords_from_attention(
            pooled_attention(model, ids), layout, self.per_head, self.keep, self.content_words_only
        )
        keywords = mention_matrix(found.keywords, self.vocabulary).to(ids.device)
        return keywords.float(), mention_matrix(layout.words, self.vocabulary).to(ids.device)

    def forward(
        self, image_features: torch.Tensor, ids: torch.Tensor, captions: Sequence[str], model: nn.Module, **_: object
    ) -> dict[str, torch.Tensor]:
        keywords, mentioned = self.targets(ids, captions, model)  # (B, V) each
        logits = self.head(image_features)  # (B, V)
        alpha = self.current_alpha()
        with torch.no_grad():
            soft = torch.sigmoid(self.ema_head(image_features.detach()))  # (B, V) the momentum head's pseudo-labels
        target = (1 - alpha) * keywords + alpha * soft
        loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        with torch.no_grad():
            top = logits.topk(self.precision_k, dim=-1).indices  # (B, k)
            precision = mentioned.gather(1, top).float().mean()
        return {
            "psl_loss": loss,
            f"precision_at_{self.precision_k}": precision,
            "targets_per_caption": keywords.sum(1).mean(),
            "alpha": torch.tensor(alpha),
        }

    def after_step(self) -> None:
        """Move the momentum head towards the trained head; count the step (for the alpha ramp)."""
        ema_update(self.ema_head, self.head, self.momentum)
        self.steps += 1

    @torch.no_grad()
    def concept_probabilities(self, image_features: torch.Tensor) -> torch.Tensor:
        """The momentum head's probability of each vocabulary word for L2-normalised image embeddings: (N, D) -> (N, V)."""
        weight = self.ema_head.weight
        return torch.sigmoid(self.ema_head(image_features.to(weight.device, weight.dtype)))
