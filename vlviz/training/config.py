"""A training run's settings, checked before any model is built, and the error that stops a diverged run."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from torch import nn

from vlviz.losses import LOSSES
from vlviz.losses.siglip import NEEDS_SIGMOID_HEAD
from vlviz.models.towers import TokenReadout, logit_bias, token_readout

TRAINABLE = ("all", "last_blocks", "projections")
# Bounds of a run a hosted app accepts: beyond them a run only ties up the machine or runs out of memory.
MAX_STEPS = 100_000
MAX_BATCH_SIZE = 4096
MAX_LR = 1.0  # AdamW at a peak rate above 1 only diverges
MAX_SEED = 2**32 - 1  # the data streams' generators take seeds in [0, 2**32)


@dataclass
class TrainConfig:
    steps: int = 300  # optimiser steps
    batch_size: int = 64  # pairs per step (the contrastive negatives), per process
    lr: float = 1e-4  # peak AdamW learning rate
    weight_decay: float = 0.1  # on weight matrices only, not on norms, biases, embeddings or the logit scale
    warmup_steps: int = 20  # linear warm-up, then cosine decay to zero
    grad_clip: float = 1.0  # maximum global gradient norm
    eval_every: int = 25  # evaluate on the held-out split every this many steps (and at the end)
    seed: int = 0  # initialisation, data order
    # registry name -> weight; None: the start model's own global loss (`default_losses`)
    losses: dict[str, float] | None = None
    loss_options: dict[str, dict] = field(default_factory=dict)  # registry name -> keyword arguments
    trainable: str = "all"  # "all", "last_blocks" (the last `last_blocks` of each tower + heads) or "projections"
    last_blocks: int = 2
    head_lr_scale: float = 10.0  # loss heads (PSL, XMM: new, untrained) learn at this multiple of `lr`
    amp: bool = True  # autocast to bf16 (else fp16) on CUDA; the CPU always trains in fp32
    # Where the token-level losses (and then the saved model's maps) read each tower's tokens: the blocks they pass
    # first (0: before any block; `vlviz.models.towers.TokenReadout`). None: where the start model reads them.
    image_token_blocks: int | None = None
    text_token_blocks: int | None = None

    def __post_init__(self) -> None:
        """Refuse settings that cannot train (or would only diverge) before any model is built."""
        _check_whole("steps", self.steps, 1, MAX_STEPS)
        _check_whole("batch_size", self.batch_size, 2, MAX_BATCH_SIZE, " (contrastive losses need negatives)")
        _check_real("lr", self.lr, positive=True, at_most=MAX_LR)
        _check_real("weight_decay", self.weight_decay)
        _check_whole("warmup_steps", self.warmup_steps, 0)
        _check_real("grad_clip", self.grad_clip, positive=True)
        _check_whole("eval_every", self.eval_every, 1)
        _check_whole("seed", self.seed, 0, MAX_SEED)
        if self.losses is not None:
            _check_losses(self.losses)
        if not isinstance(self.loss_options, dict) or not all(isinstance(v, dict) for v in self.loss_options.values()):
            raise ValueError(
                f"loss_options must map loss names to keyword arguments (dicts), got {self.loss_options!r}"
            )
        if self.trainable not in TRAINABLE:
            raise ValueError(f"Unknown trainable {self.trainable!r}; choose one of {', '.join(TRAINABLE)}.")
        _check_whole("last_blocks", self.last_blocks, 1)
        _check_real("head_lr_scale", self.head_lr_scale, positive=True)
        for name in ("image_token_blocks", "text_token_blocks"):
            if getattr(self, name) is not None:
                _check_whole(name, getattr(self, name), 0)

    def losses_for(self, model: nn.Module) -> dict[str, float]:
        """The weighted losses that train `model`: `losses`, or the model's own (`default_losses`) when None.

        A ValueError before any step when siglip is asked of a model without a sigmoid head.
        """
        sigmoid_head = has_sigmoid_head(model)
        if self.losses is None:
            return default_losses(sigmoid_head)
        if "siglip" in self.losses and not sigmoid_head:
            raise ValueError(NEEDS_SIGMOID_HEAD)
        return self.losses

    def token_readout_for(self, model: nn.Module) -> TokenReadout:
        """Where a run of `model` reads its tokens: these settings over the start model's own readout."""
        own = token_readout(model)
        image = own.image_blocks if self.image_token_blocks is None else self.image_token_blocks
        return TokenReadout(image, own.text_blocks if self.text_token_blocks is None else self.text_token_blocks)

    def notices_for(self, model: nn.Module) -> list[str]:
        """What a run of `model` with these losses should tell its user: a loss it allows but that is not the model's."""
        if has_sigmoid_head(model) and self.losses_for(model).get("clip", 0) > 0:
            return [
                "clip trains this sigmoid-head (SigLIP) model with softmax InfoNCE, not the sigmoid loss it "
                "was pre-trained with: clip gives its logit_bias no gradient and does not train its sigmoid "
                "match probabilities; siglip is the model's own loss."
            ]
        return []


def has_sigmoid_head(model: nn.Module) -> bool:
    """Whether `model` scores pairs with a sigmoid (SigLIP: a learned `logit_bias`) rather than a softmax."""
    return logit_bias(model) is not None


def default_losses(sigmoid_head: bool) -> dict[str, float]:
    """The loss a run trains with when none is given: the one the start model was pre-trained with.

    SigLIP's sigmoid loss for a sigmoid head (softmax InfoNCE would leave its `logit_bias` untrained),
    CLIP's InfoNCE otherwise.
    """
    return {"siglip": 1.0} if sigmoid_head else {"clip": 1.0}


def _check_losses(losses: object) -> None:
    """Registry names with finite weights at least 0, one of them above 0."""
    if not isinstance(losses, dict) or not losses:
        raise ValueError("Give at least one loss, e.g. {'clip': 1.0}.")
    unknown = [name for name in losses if name not in LOSSES]
    if unknown:
        raise ValueError(f"Unknown loss {unknown[0]!r}; known losses: {', '.join(LOSSES)}.")
    for name, weight in losses.items():
        _check_real(f"losses[{name!r}]", weight)
    if not any(weight > 0 for weight in losses.values()):
        raise ValueError(f"losses needs at least one weight above 0, got {losses}")


def _check_whole(name: str, value: object, low: int, high: int | None = None, why: str = "") -> None:
    """A whole-number setting in [low, high]: a ValueError that names it, its value and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f" and at most {high}" if high is not None else ""
        raise ValueError(f"{name} must be at least {low}{why}{limit}, got {value!r}")


def _check_real(name: str, value: object, positive: bool = False, at_most: float | None = None) -> None:
    """A finite number, above 0 (`positive`) or at least 0, at most `at_most`; NaN fails every comparison, so
    finiteness is checked explicitly."""
    rules = ["positive" if positive else "", "finite", "" if positive else "at least 0"]
    rules.append(f"at most {at_most:g}" if at_most is not None else "")
    *first, last = filter(None, rules)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0) or (at_most is not None and value > at_most):
        raise ValueError(f"{name} must be {', '.join(first)} and {last}, got {value!r}")


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite: training stopped before that step could spoil the weights.

    A ValueError, so that callers that already show bad settings as messages show this one too.
    `step` is the 1-based step whose loss diverged (its record is never yielded), `terms` the loss
    terms that were non-finite there.
    """

    def __init__(self, message: str, step: int, terms: tuple[str, ...]) -> None:
        super().__init__(message)
        self.step, self.terms = step, terms
