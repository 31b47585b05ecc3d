"""The start model and a trained one side by side on the same pairs: Affinity, Consistency, Grounding."""

from __future__ import annotations

import plotly.graph_objects as go

from vlviz.affinity import affinity_report
from vlviz.consistency import inconsistency_matrix
from vlviz.data.sources import preprocess_stats
from vlviz.encoding import VLModel
from vlviz.figures import grounding_grid, heatmap, inconsistency_heatmap, short_labels
from vlviz.inputs import PairSet
from vlviz.probe import content_word, input_image
from vlviz.sparc import alignment_weights, word_maps

VIEWS = ("affinity", "inconsistency", "grounding")


def model_views(model: VLModel, pairs: PairSet, label: str) -> dict[str, go.Figure | None]:
    """One model's three views of `pairs`; grounding is None for towers without patch tokens."""
    encoding = model.encode_pairs(pairs.images, pairs.captions)
    image_features, text_features = encoding.image_features.cpu(), encoding.text_features.cpu()
    report = affinity_report(image_features, text_features, encoding.logit_scale, encoding.logit_bias)
    captions, images = short_labels(pairs.captions), [f"{i + 1}. {n}" for i, n in enumerate(pairs.names)]
    views: dict[str, go.Figure | None] = {
        "affinity": heatmap(
            report.image_text.numpy(),
            captions,
            images,
            pairs.captions,
            pairs.names,
            f"{label}: image-text cosine",
            "cosine",
            zrange=(-1.0, 1.0),
        ),
        "inconsistency": inconsistency_heatmap(
            inconsistency_matrix(image_features, text_features).numpy(), list(range(len(pairs))), images, signed=False
        ),
        "grounding": None,
    }
    views["inconsistency"].update_layout(title={"text": f"{label}: |A_I − A_T|"})
    if encoding.patch_features is not None and encoding.token_features is not None and encoding.grid_size:
        maps = word_maps(
            alignment_weights(encoding.token_features[:1].float(), encoding.patch_features[:1].float()),
            encoding.tokens.word_index[:1].to(encoding.token_features.device),
        )[0].cpu()  # (W, P)
        words = encoding.tokens.words[0]
        image = input_image(model.preprocess(pairs.images[0]), *preprocess_stats(model.model))
        views["grounding"] = grounding_grid(
            image, maps[: len(words)].reshape(len(words), *encoding.grid_size).numpy(), words
        )
        views["grounding"].update_layout(
            title={"text": f"{label}: SPARC weights of pair 1, “{words[content_word(words)]}” first"}
        )
    return views


def side_by_side(
    start: VLModel, trained: VLModel, pairs: PairSet
) -> dict[str, tuple[go.Figure | None, go.Figure | None]]:
    """Each view of the start model and of the trained model, in that order."""
    before, after = model_views(start, pairs, "start"), model_views(trained, pairs, "trained")
    return {view: (before[view], after[view]) for view in VIEWS}
