"""A fixed probe batch watched while a model trains: its grounding map, inconsistency and embedding layout.

Drawn from the held-out split at the start of a run, the probe never changes, and its embedding
layout is fitted once (on the start model) and reused through `EmbeddingLayout.transform`, so
every change in the figures is the model's doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch

from vlviz.consistency import inconsistency_matrix
from vlviz.data.sources import HeldOut
from vlviz.embedding_space import EmbeddingLayout, fit_layout
from vlviz.figures import embedding_scatter, grounding_overlay, inconsistency_heatmap, short_labels
from vlviz.sparc import alignment_weights, word_maps
from vlviz.tokens import first_content_word, token_layout
from vlviz.train import embed_held_out

PROBE_PAIRS = 16
_SKIP_WORDS = {"a", "an", "the", "of", "on", "in", "at", "and", "with", "small", "large"}


def input_image(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The (H, W, 3) uint8 image a model sees, from its normalised (3, H, W) input: undoes Normalize."""
    mean_t, std_t = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    image = (pixels.float().cpu() * std_t + mean_t).clamp(0, 1)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def content_word(words: list[str]) -> int:
    """The first word that is not an article, preposition or size: the one worth grounding."""
    return first_content_word(words, _SKIP_WORDS)


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

    def views(self, model: torch.nn.Module, tokenizer, step: int) -> dict[str, go.Figure]:
        """The three figures for the model as it is now (evaluation mode, no gradients)."""
        was_training = model.training
        model.eval()
        image, text, patches, tokens = (
            None if t is None else t.cpu() for t in embed_held_out(model, tokenizer, self.batch, with_tokens=True)
        )
        model.train(was_training)
        captions = self.batch.captions
        labels = short_labels(captions)
        difference = inconsistency_matrix(image, text).numpy()
        figures = {
            "inconsistency": inconsistency_heatmap(difference, list(range(len(captions))), labels, signed=False),
        }
        figures["inconsistency"].update_layout(title={"text": f"|A_I − A_T| of the probe batch, step {step}"})
        if self.layout is None:
            self.layout = fit_layout(image, text, method="pca")
        coordinates = self.layout.transform(image, text).numpy()
        names = [f"probe {i + 1}" for i in range(len(captions))]
        figures["embedding"] = embedding_scatter(
            coordinates, names, captions, self.layout.axis_titles, f"Probe embeddings on the step-0 layout, step {step}"
        )
        if patches is not None and tokens is not None:
            figures["grounding"] = self._grounding(
                tokens[:1], patches[:1], tokenizer, tuple(model.visual.grid_size), step
            )
        return figures

    def _grounding(
        self, tokens: torch.Tensor, patches: torch.Tensor, tokenizer, grid: tuple[int, int], step: int
    ) -> go.Figure:
        """SPARC's weights of one content word of the first probe caption, over its image."""
        layout = token_layout(tokenizer, self.batch.captions[:1])
        words = layout.words[0]
        chosen = content_word(words)
        maps = word_maps(alignment_weights(tokens, patches), layout.word_index.to(tokens.device))  # (1, W, P)
        grid_map = maps[0, chosen].reshape(grid).numpy()
        title = f"SPARC weights of “{words[chosen]}”, step {step}"
        return grounding_overlay(self.first_image, grid_map, title)
