"""A fixed probe batch watched while a model trains: its grounding maps, inconsistency and embedding layout.

Drawn from the held-out split at the start of a run, the probe never changes, and its embedding
layout is fitted once (on the start model) and reused through `EmbeddingLayout.transform`, so
every change is the model's doing. Its pairs are the held-out split's first, so a run measures it
from its evaluation's pass over that split (`measure_pass`) instead of embedding them again. It
returns numbers (`ProbeMeasurement`); `vlviz.viz.views` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vlviz.data.sources import HeldOut
from vlviz.embedding.space import EmbeddingLayout, LayoutSettings, fit_layout
from vlviz.grounding.maps import CaptionMaps, caption_maps
from vlviz.metrics.consistency import inconsistency_matrix
from vlviz.models.encoding import PairEncoding, input_image
from vlviz.models.tokens import token_layout
from vlviz.models.towers import grid_size
from vlviz.training.evaluation import HeldOutPass, embed_held_out

PROBE_PAIRS = 16


@dataclass(frozen=True)
class ProbeMeasurement:
    """The probe batch under the model as it was at `step`."""

    step: int
    captions: list[str]
    inconsistency: np.ndarray  # (N, N) |A_I - A_T|
    coordinates: np.ndarray  # (2N, 2) on the step-0 layout: images, then captions
    axis_titles: tuple[str, str]
    image: np.ndarray  # (H, W, 3) uint8: the first probe image as the model sees it
    grounding: CaptionMaps | None  # SPARC weights of the first caption's words; None without patch tokens


@dataclass
class ProbeBatch:
    """The first `size` held-out pairs, with their pixels turned back into images for overlays."""

    held_out: HeldOut
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int = PROBE_PAIRS
    layout: EmbeddingLayout | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        n = min(self.size, len(self.held_out.captions))
        self.batch = HeldOut(self.held_out.pixels[:n], self.held_out.captions[:n])
        self.first_image = input_image(self.batch.pixels[0], self.mean, self.std)

    def measure(self, model: torch.nn.Module, tokenizer, step: int) -> ProbeMeasurement:
        """The probe's numbers for the model as it is now (one pass over the probe batch, evaluation mode)."""
        was_training = model.training
        model.eval()
        embedded = embed_held_out(model, tokenizer, self.batch, keep_tokens=len(self.batch.captions))
        model.train(was_training)
        return self.measure_pass(embedded, grid_size(model), tokenizer, step)

    def measure_pass(
        self, embedded: HeldOutPass, grid: tuple[int, int] | None, tokenizer, step: int
    ) -> ProbeMeasurement:
        """The probe's numbers from a pass whose first pairs are the probe's (an evaluation's pass over the held-out
        split, `vlviz.training.evaluation.evaluation`), with their patch and token embeddings when the towers have them.
        """
        image, text, patches, tokens = (
            None if t is None else t.cpu() for t in embedded.first(len(self.batch.captions))
        )
        if self.layout is None:
            self.layout = fit_layout(image, text, LayoutSettings("pca"))
        grounding = None
        if patches is not None and tokens is not None:
            first = PairEncoding(
                image[:1], text[:1], patches[:1], grid, tokens[:1],
                token_layout(tokenizer, self.batch.captions[:1]), logit_scale=0.0, logit_bias=None,
            )  # fmt: skip
            grounding = caption_maps(first)
        return ProbeMeasurement(
            step=step,
            captions=list(self.batch.captions),
            inconsistency=inconsistency_matrix(image, text).numpy(),
            coordinates=self.layout.transform(image, text).numpy(),
            axis_titles=self.layout.axis_titles,
            image=self.first_image,
            grounding=grounding,
        )
