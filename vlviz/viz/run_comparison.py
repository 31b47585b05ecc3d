"""Two encodings of the same pairs side by side (a run's start model and its trained model): Affinity,
Consistency, Grounding."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from vlviz.data.inputs import PairSet
from vlviz.grounding.maps import caption_maps
from vlviz.metrics.affinity import affinity_report
from vlviz.metrics.consistency import inconsistency_matrix
from vlviz.models.encoding import PairEncoding
from vlviz.viz.figures import grounding_grid, inconsistency_heatmap
from vlviz.viz.views import affinity_view, item_labels

VIEWS = ("affinity", "inconsistency", "grounding")


def encoding_views(
    encoding: PairEncoding, pairs: PairSet, image: np.ndarray, label: str
) -> dict[str, go.Figure | None]:
    """One model's three views of `pairs`; `image` is pair 1's image as that model sees it.

    Grounding is None for towers without patch tokens.
    """
    image_features, text_features = encoding.image_features.cpu(), encoding.text_features.cpu()
    report = affinity_report(image_features, text_features, encoding.logit_scale, encoding.logit_bias)
    images = item_labels(pairs.names)
    views: dict[str, go.Figure | None] = {
        "affinity": affinity_view(
            report, pairs.names, pairs.captions, title_prefix=f"{label}: ", fixed_range=True
        ).image_text,
        "inconsistency": inconsistency_heatmap(
            inconsistency_matrix(image_features, text_features).numpy(), list(range(len(pairs))), images, signed=False
        ),
        "grounding": None,
    }
    views["inconsistency"].update_layout(title={"text": f"{label}: |A_I − A_T|"})
    if encoding.patches_unavailable is None:
        maps = caption_maps(encoding)
        views["grounding"] = grounding_grid(image, maps.word_maps.numpy(), maps.words)
        views["grounding"].update_layout(
            title={"text": f"{label}: SPARC weights of pair 1, “{maps.words[maps.first_word]}” first"}
        )
    return views


def side_by_side(
    start: PairEncoding, trained: PairEncoding, pairs: PairSet, images: tuple[np.ndarray, np.ndarray]
) -> dict[str, tuple[go.Figure | None, go.Figure | None]]:
    """Each view of the start encoding and of the trained one, in that order (`images`: pair 1 as each sees it)."""
    before = encoding_views(start, pairs, images[0], "start")
    after = encoding_views(trained, pairs, images[1], "trained")
    return {view: (before[view], after[view]) for view in VIEWS}
