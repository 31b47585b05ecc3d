"""SIMLA's pseudo-keyword prediction, PSL (Khan et al., ECCV 2022), on a dual encoder's image embedding.

A concept head (one linear layer on the L2-normalised global image embedding) predicts, over a
vocabulary of words, which ones describe the image: a multi-label problem trained with binary
cross-entropy. The targets mix the caption's keywords (`vlviz.keywords`: the text tower's
last-layer attention from the pooled token, SIMLA's vote) with the soft predictions of a momentum
(EMA) copy of the head, ALBEF-style distillation:

    target = (1 - alpha) * keywords + alpha * sigmoid(ema_head(image)),
    ema_head <- momentum * ema_head + (1 - momentum) * head      (after every optimiser step)

so the momentum head can add words the caption left out (SIMLA's pseudo-labels).

The vocabulary (`vocabulary_source`). SIMLA predicts the keywords over its tokenizer's whole
vocabulary, so every voted token is a target. vlviz's default, "captions", predicts over the words
the data contains: every content word (`is_concept_word`: no stop word, number or punctuation) of
the training captions gets an output slot when first seen, up to `capacity`, as XMM's output slots
do for tokens. A word the training captions never contain could only learn "absent" in SIMLA's
full-vocabulary head, so leaving it out loses no positive target, and the head stays small (a
49,408-way BPE head, or 33,000 whole-word tokens, would outweigh the offline model). Words are
whole words as the caption spells them (plurals included), not BPE pieces. "fixed" is vlviz's
previous behaviour: only `vocabulary`'s words (None: the 315 of `assets/concepts.txt`), so a
voted keyword outside the list (a plural, most words) is no target. Stop words are left out of the
vote by default (`content_words_only`), as they are no word of the vocabulary: voted, they would
only take keyword slots and vanish. Letters in shape comments: B pairs, D joint dimensions, V
vocabulary slots, S slots in use.
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

from vlviz.keywords import (
    KEEP,
    PER_HEAD,
    default_concepts,
    is_concept_word,
    keywords_from_attention,
    mention_matrix,
    pooled_attention,
)
from vlviz.losses.base import Loss
from vlviz.models.tokens import token_layout
from vlviz.models.towers import joint_dim

MOMENTUM = 0.995  # SIMLA
ALPHA = 0.4  # SIMLA's distillation weight
ALPHA_RAMP_STEPS = 100  # SIMLA ramps alpha up over its first epoch; an endless scene stream has no epochs


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """ema <- momentum * ema + (1 - momentum) * online, parameter by parameter (a lerp towards the online weights)."""
    for target, source in zip(ema.parameters(), online.parameters(), strict=True):
        target.lerp_(source.detach(), 1.0 - momentum)


VOCABULARY_SOURCES = ("captions", "fixed")
CAPACITY = 4096  # output slots of the "captions" vocabulary (vlviz's choice, as XMM's `vocabulary_size`)


@dataclass(frozen=True)
class PslConfig:
    """PSL's options; SIMLA's values where it gives them."""

    # "captions": the training captions' content words, each given a slot when first seen (up to `capacity`);
    # "fixed": `vocabulary`'s words only (vlviz before issue 12, with `vocabulary=None`: assets/concepts.txt)
    vocabulary_source: str = "captions"
    vocabulary: tuple[str, ...] | None = None  # "fixed": the words (None: assets/concepts.txt); "captions": seen
    capacity: int = CAPACITY  # "captions": output slots; a word first seen once they are all named is no target
    momentum: float = MOMENTUM  # of the EMA head (SIMLA: 0.995)
    alpha: float = ALPHA  # weight of the EMA head's soft targets (SIMLA: 0.4)
    alpha_ramp_steps: int = ALPHA_RAMP_STEPS  # alpha rises linearly from 0 over this many steps (0: no ramp)
    per_head: int = PER_HEAD  # SIMLA's keyword vote: top 4 per head ...
    keep: int = KEEP  # ... keep 5
    content_words_only: bool = True  # leave stop words out of the keyword candidates (they are no vocabulary word)
    all_positions: bool = False  # every position votes (SIMLA), not only real word tokens (vlviz's filter)
    precision_k: int = 3  # k of the logged precision@k: the share of the top-k predicted words the caption contains

    def __post_init__(self) -> None:
        if self.vocabulary_source not in VOCABULARY_SOURCES:
            raise ValueError(f"vocabulary_source must be one of {VOCABULARY_SOURCES}, got {self.vocabulary_source!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.vocabulary is not None:  # JSON gives a list; single lowercase words, each once
            words = tuple(dict.fromkeys(w.strip().lower() for w in self.vocabulary if w.strip()))
            if not words:
                raise ValueError("The PSL vocabulary is empty: give at least one word.")
            object.__setattr__(self, "vocabulary", words)
        if self.vocabulary_source == "captions" and len(self.vocabulary or ()) > self.capacity:
            raise ValueError(f"{len(self.vocabulary)} vocabulary words do not fit in capacity={self.capacity} slots.")


class PslLoss(Loss):
    """PSL as a loss term: `psl_loss` (BCE), with `precision_at_k`, `targets_per_caption` and `alpha` to plot.

    `needs_inputs`: built for the model and tokenizer (the head is sized to the joint space) and
    called with the batch's `ids` and `captions` and the `model`, whose text tower's attention
    selects the keywords (no gradient flows through the selection). Options: `PslConfig`; the
    config kept (and saved with the head) names the vocabulary's words, in slot order.
    """

    Config = PslConfig
    needs_inputs = True
    terms = ("psl_loss",)
    diagnostics = ("precision_at_3", "targets_per_caption", "alpha")
    shares = ("precision_at_3",)
    towers = ("image",)  # the keywords are read from the text tower without gradients

    def __init__(self, model: nn.Module, tokenizer: Callable[..., torch.Tensor], **options: Any) -> None:
        super().__init__(**options)
        if self.config.vocabulary_source == "fixed" and self.config.vocabulary is None:
            self.config = replace(self.config, vocabulary=default_concepts())
        config = self.config
        self.vocabulary = list(config.vocabulary or ())
        self.index = {word: v for v, word in enumerate(self.vocabulary)}
        self.tokenizer = tokenizer
        slots = config.capacity if config.vocabulary_source == "captions" else len(self.vocabulary)
        self.head = nn.Linear(joint_dim(model), slots)
        # Start every word at the share of the slots a caption's keywords fill (RetinaNet's prior
        # initialisation), with zero weights: the momentum head then averages only what was learned,
        # not its random start, and its first soft targets are small rather than 0.5 for every word.
        prior = min(config.keep / slots, 0.5)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, math.log(prior / (1 - prior)))
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def add_words(self, caption_words: Sequence[Sequence[str]]) -> None:
        """Give the content words of the captions not seen before slots (first-seen order), while slots last.

        The config then names them, so that the head saved with it rebuilds with its words.
        """
        room = self.head.out_features - len(self.vocabulary)
        seen = (w.lower() for words in caption_words for w in words if is_concept_word(w))
        new = [w for w in dict.fromkeys(seen) if w not in self.index][:room]
        if new:
            self.index.update((word, len(self.vocabulary) + i) for i, word in enumerate(new))
            self.vocabulary += new
            self.config = replace(self.config, vocabulary=tuple(self.vocabulary))

    def current_alpha(self) -> float:
        """alpha, ramped linearly over the first `alpha_ramp_steps` optimiser steps."""
        alpha, ramp = self.config.alpha, self.config.alpha_ramp_steps
        return alpha if ramp <= 0 else alpha * min(1.0, int(self.steps) / ramp)

    def targets(
        self, ids: torch.Tensor, captions: Sequence[str], model: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) hard targets (the caption's keywords in the vocabulary) and (B, S) words the caption contains.

        While training with the "captions" vocabulary, the captions' new content words get slots first.
        """
        config = self.config
        layout = token_layout(self.tokenizer, list(captions))
        if self.training and config.vocabulary_source == "captions":
            self.add_words(layout.words)
        found = keywords_from_attention(
            pooled_attention(model, ids), layout, config.per_head, config.keep, config.content_words_only,
            config.all_positions,
        )  # fmt: skip
        keywords = mention_matrix(found.keywords, self.vocabulary).to(ids.device)
        return keywords.float(), mention_matrix(layout.words, self.vocabulary).to(ids.device)

    def forward(
        self, image_features: torch.Tensor, ids: torch.Tensor, captions: Sequence[str], model: nn.Module, **_: object
    ) -> dict[str, torch.Tensor]:
        keywords, mentioned = self.targets(ids, captions, model)  # (B, S) each
        used = len(self.vocabulary)  # slots beyond the words named so far get no gradient
        logits = self.head(image_features)[:, :used]  # (B, S)
        alpha = self.current_alpha()
        with torch.no_grad():  # (B, S) the momentum head's pseudo-labels
            soft = torch.sigmoid(self.ema_head(image_features.detach())[:, :used])
        target = (1 - alpha) * keywords + alpha * soft
        # The mean over batch and words in use (0 while no word is named: an empty mean would be NaN).
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="sum")
        loss = bce / max(1, target.numel())
        with torch.no_grad():
            top = logits.topk(min(self.config.precision_k, used), dim=-1).indices  # (B, k)
            precision = mentioned.gather(1, top).float().sum() / max(1, top.numel())
        return {
            "psl_loss": loss,
            f"precision_at_{self.config.precision_k}": precision,
            "targets_per_caption": keywords.sum(1).mean(),
            "alpha": torch.tensor(alpha),
        }

    def after_step(self) -> None:
        """Move the momentum head towards the trained head; count the step (for the alpha ramp)."""
        ema_update(self.ema_head, self.head, self.config.momentum)
        self.steps += 1

    @torch.no_grad()
    def concept_probabilities(self, image_features: torch.Tensor) -> torch.Tensor:
        """The momentum head's probability of each vocabulary word for L2-normalised image embeddings: (N, D) -> (N, S)."""
        weight = self.ema_head.weight
        logits = self.ema_head(image_features.to(weight.device, weight.dtype))
        return torch.sigmoid(logits[:, : len(self.vocabulary)])
