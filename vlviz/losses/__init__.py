"""Training objectives, one module each, and the registry the trainer, the app and the tests enumerate.

Every loss is a `Loss` (see `vlviz.losses.base`): options in a config dataclass, what it needs from
a batch said by class attributes, named terms out. Adding a loss is one module and one entry in
`LOSSES`; the registry's parametrised test (`tests/test_losses.py`) then checks it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlviz.losses.base import Loss
from vlviz.losses.clip import ClipLoss
from vlviz.losses.psl import PslLoss
from vlviz.losses.saco import SacoLoss
from vlviz.losses.siglip import SiglipLoss
from vlviz.losses.sparc import SparcLoss
from vlviz.losses.word_region import WordRegionLoss
from vlviz.losses.xmm import XmmLoss

LOSSES: dict[str, type[Loss]] = {
    "clip": ClipLoss,
    "siglip": SiglipLoss,
    "saco": SacoLoss,
    "sparc": SparcLoss,
    "psl": PslLoss,
    "xmm": XmmLoss,
    "word_region": WordRegionLoss,  # vlviz's own, not a paper's: see vlviz.losses.word_region
}


def create_loss(name: str, model: nn.Module | None = None, tokenizer: object = None, **options: Any) -> Loss:
    """A loss by registry name, with its options (the fields of its `Config`).

    A loss with ``needs_inputs`` is built for the model it trains with and that model's tokenizer.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; known losses: {', '.join(LOSSES)}.")
    loss_type = LOSSES[name]
    if loss_type.needs_inputs:
        if model is None or tokenizer is None:
            raise ValueError(f"Loss {name!r} is built for a model: pass model= and tokenizer=.")
        return loss_type(model, tokenizer, **options)
    return loss_type(**options)


def loss_keys(kind: str) -> list[str]:
    """Record keys ``NAME/KEY`` of every registered loss: its `terms`, `diagnostics` or `shares` (per `kind`)."""
    return [f"{name}/{key}" for name, loss in LOSSES.items() for key in getattr(loss, kind)]


__all__ = ["LOSSES", "Loss", "create_loss", "loss_keys"]
