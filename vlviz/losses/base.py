"""The shape every training objective shares, so the trainer, the app and the tests treat them alike.

A loss is an `nn.Module` (it may hold trainable heads, which the optimiser trains with the model)
called with open_clip's output names (`image_features`, `text_features`, `logit_scale`, ...), so
that `loss(**model_out)` works. It returns a dict of named terms: keys ending in ``_loss`` are
summed by the trainer (`terms`), the others are diagnostics to plot. Its options are one config
dataclass (`Config`), checked when the loss is built and saved beside trained heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The config of a loss without options."""


class Loss(nn.Module):
    """Base of every registered loss: its config, what it needs from a batch, and what it returns.

    Class attributes a loss sets:
      - `Config`: the frozen dataclass of its options (defaults: the paper's values or vlviz's, said there);
      - `needs_tokens`: the trainer also passes `patch_features`, `token_features` (projected into
        the joint space) and `token_mask` (real caption tokens);
      - `needs_inputs`: the loss is built for the model and tokenizer it trains with
        (`cls(model, tokenizer, **options)`, which sizes its heads) and is also passed the batch's
        `pixels`, `ids`, `captions` and the `model`, which it may re-run;
      - `terms`: the ``*_loss`` keys it returns; `diagnostics`: the other keys (with the default config);
      - `shares`: the diagnostics that are shares in [0, 1] (accuracies), plotted on one axis;
      - `towers`: the towers its gradients reach ("image", "text").
    A built loss holds its options in `config`; `after_step()` runs after every optimiser step.
    """

    Config: ClassVar[type] = NoOptions
    needs_tokens: ClassVar[bool] = False
    needs_inputs: ClassVar[bool] = False
    terms: ClassVar[tuple[str, ...]] = ()
    diagnostics: ClassVar[tuple[str, ...]] = ()
    shares: ClassVar[tuple[str, ...]] = ()
    towers: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.config = make_config(self.Config, options, type(self).__name__)

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. an EMA update); nothing by default."""

    def forward(self, **features: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def make_config(config_type: type, options: dict[str, Any], owner: str) -> Any:
    """`config_type(**options)`, with an unknown option named together with the known ones."""
    known = [field.name for field in dataclasses.fields(config_type)]
    unknown = [name for name in options if name not in known]
    if unknown:
        listed = ", ".join(known) if known else "none"
        raise ValueError(f"{owner} has no option {unknown[0]!r}; its options: {listed}.")
    return config_type(**options)
