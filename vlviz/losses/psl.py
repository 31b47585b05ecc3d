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
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlviz.keywords import KEEP, PER_HEAD, default_concepts, keywords_from_attention, mention_matrix, pooled_attention
from vlviz.losses.base import Loss
from vlviz.tokens import token_layout
from vlviz.towers import joint_dim

MOMENTUM = 0.995  # SIMLA
ALPHA = 0.4  # SIMLA's distillation weight
ALPHA_RAMP_STEPS = 100  # SIMLA ramps alpha up over its first epoch; an endless scene stream has no epochs


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """ema <- momentum * ema + (1 - momentum) * online, parameter by parameter (a lerp towards the online weights)."""
    for target, source in zip(ema.parameters(), online.parameters(), strict=True):
        target.lerp_(source.detach(), 1.0 - momentum)


@dataclass(frozen=True)
class PslConfig:
    """PSL's options; SIMLA's values where it gives them."""

    vocabulary: tuple[str, ...] | None = None  # the words the head predicts (None: `assets/concepts.txt`)
    momentum: float = MOMENTUM  # of the EMA head (SIMLA: 0.995)
    alpha: float = ALPHA  # weight of the EMA head's soft targets (SIMLA: 0.4)
    alpha_ramp_steps: int = ALPHA_RAMP_STEPS  # alpha rises linearly from 0 over this many steps (0: no ramp)
    per_head: int = PER_HEAD  # SIMLA's keyword vote: top 4 per head ...
    keep: int = KEEP  # ... keep 5
    content_words_only: bool = False  # leave stop words out of the keyword candidates
    precision_k: int = 3  # k of the logged precision@k: the share of the top-k predicted words the caption contains

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.vocabulary is not None:  # JSON gives a list; single lowercase words, each once
            words = tuple(dict.fromkeys(w.strip().lower() for w in self.vocabulary if w.strip()))
            if not words:
                raise ValueError("The PSL vocabulary is empty: give at least one word.")
            object.__setattr__(self, "vocabulary", words)


class PslLoss(Loss):
    """PSL as a loss term: `psl_loss` (BCE), with `precision_at_k`, `targets_per_caption` and `alpha` to plot.

    `needs_inputs`: built for the model and tokenizer (the head is sized to the joint space) and
    called with the batch's `ids` and `captions` and the `model`, whose text tower's attention
    selects the keywords (no gradient flows through the selection). Options: `PslConfig`; the
    config kept (and saved with the head) names the vocabulary's words.
    """

    Config = PslConfig
    needs_inputs = True
    terms = ("psl_loss",)
    diagnostics = ("precision_at_3", "targets_per_caption", "alpha")
    shares = ("precision_at_3",)
    towers = ("image",)  # the keywords are read from the text tower without gradients

    def __init__(self, model: nn.Module, tokenizer: Callable[..., torch.Tensor], **options: Any) -> None:
        super().__init__(**options)
        if self.config.vocabulary is None:
            self.config = replace(self.config, vocabulary=default_concepts())
        config = self.config
        self.vocabulary = list(config.vocabulary)
        self.tokenizer = tokenizer
        self.precision_k = min(config.precision_k, len(self.vocabulary))
        self.head = nn.Linear(joint_dim(model), len(self.vocabulary))
        # Start every word at the share of the vocabulary a caption's keywords fill (RetinaNet's prior
        # initialisation), with zero weights: the momentum head then averages only what was learned,
        # not its random start, and its first soft targets are small rather than 0.5 for every word.
        prior = min(config.keep / len(self.vocabulary), 0.5)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(prior / (1 - prior)))
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_alpha(self) -> float:
        """alpha, ramped linearly over the first `alpha_ramp_steps` optimiser steps."""
        alpha, ramp = self.config.alpha, self.config.alpha_ramp_steps
        return alpha if ramp <= 0 else alpha * min(1.0, int(self.steps) / ramp)

    def targets(
        self, ids: torch.Tensor, captions: Sequence[str], model: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V) hard targets (the caption's keywords in the vocabulary) and (B, V) words the caption contains."""
        layout = token_layout(self.tokenizer, list(captions))
        found = keywords_from_attention(
            pooled_attention(model, ids), layout, self.config.per_head, self.config.keep, self.config.content_words_only
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
        ema_update(self.ema_head, self.head, self.config.momentum)
        self.steps += 1

    @torch.no_grad()
    def concept_probabilities(self, image_features: torch.Tensor) -> torch.Tensor:
        """The momentum head's probability of each vocabulary word for L2-normalised image embeddings: (N, D) -> (N, V)."""
        weight = self.ema_head.weight
        return torch.sigmoid(self.ema_head(image_features.to(weight.device, weight.dtype)))
