"""Held-out figures of a model while it trains: retrieval, SaCo inconsistency and, on scenes, the pointing game."""

from __future__ import annotations

from typing import NamedTuple

import torch

from vlviz.data.scenes import blank_scene
from vlviz.data.sources import HeldOut, normalise_uint8
from vlviz.grounding.maps import scene_grounding_score
from vlviz.metrics.affinity import affinity, caption_recall_at_1, recall_at_k, retrieval_ranks
from vlviz.metrics.consistency import consistency_figures
from vlviz.models.encoding import PairEncoding, image_embeddings, text_embeddings
from vlviz.models.tokens import token_layout
from vlviz.models.towers import grid_size, preprocess_stats

EVALUATION_KEY = "image_to_caption_r1"  # every evaluation record has it, no step record does


def is_evaluation(record: dict) -> bool:
    """Whether a training record carries held-out figures (`evaluate`'s), not just a step's losses."""
    return EVALUATION_KEY in record


class HeldOutPass(NamedTuple):
    """One pass over a held-out split: global embeddings of every pair, and patch and token embeddings of the first
    pairs asked for (None when none were asked for, or the towers have none)."""

    image_features: torch.Tensor  # (N, D)
    text_features: torch.Tensor  # (N, D)
    patch_features: torch.Tensor | None  # (K, P, D), K <= N
    token_features: torch.Tensor | None  # (K, T, D)

    def first(self, n: int) -> HeldOutPass:
        """The first `n` pairs' rows, copied, so that the rest of the pass can go."""
        return HeldOutPass(*(None if t is None else t[:n].clone() for t in self))


@torch.inference_mode()
def embed_held_out(
    model: torch.nn.Module, tokenizer, held_out: HeldOut, keep_tokens: int = 0, chunk: int = 256
) -> HeldOutPass:
    """Embed a held-out split, one pass of each tower per `chunk` pairs: global embeddings of every pair, and the
    patch and token embeddings of the first `keep_tokens` pairs (the towers make them anyway; only those are kept).
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    parts = []
    for start in range(0, len(held_out.captions), chunk):
        image, patches = image_embeddings(model, held_out.pixels[start : start + chunk].to(device, dtype))
        text, tokens = text_embeddings(model, tokenizer(held_out.captions[start : start + chunk]).to(device))
        kept = max(0, keep_tokens - start)  # rows of this chunk among the first `keep_tokens`
        parts.append((image, text, *(None if t is None else t[:kept] for t in (patches, tokens))))
    images, texts, patches, tokens = zip(*parts)
    with_tokens = keep_tokens > 0 and patches[0] is not None and tokens[0] is not None
    return HeldOutPass(
        torch.cat(images).float(),
        torch.cat(texts).float(),
        torch.cat(patches).float() if with_tokens else None,
        torch.cat(tokens).float() if with_tokens else None,
    )


@torch.inference_mode()
def blank_patches(model: torch.nn.Module, image_size: int) -> torch.Tensor | None:
    """The patch embeddings (1, P, D) of a scene with no object (`blank_scene`), where `model` reads its patches."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    pixels = normalise_uint8(torch.from_numpy(blank_scene(image_size))[None], *preprocess_stats(model))
    return image_embeddings(model, pixels.to(device, dtype))[1]


def evaluate(model: torch.nn.Module, tokenizer, held_out: HeldOut) -> dict[str, float]:
    """Held-out figures (`evaluation`'s) of `model` as it is now."""
    return evaluation(model, tokenizer, held_out)[0]


def evaluation(
    model: torch.nn.Module, tokenizer, held_out: HeldOut, keep_tokens: int = 0
) -> tuple[dict[str, float], HeldOutPass]:
    """Held-out figures: retrieval R@1 both ways, SaCo inconsistency, and on scenes the pointing game; and the one
    pass over the split they come from, with the patch and token embeddings of its first `keep_tokens` pairs (a
    training run's probe batch reads them there instead of embedding its pairs again).

    Image -> caption R@1 (`image_to_caption_r1`) counts an identical caption as a hit: scenes repeat captions,
    and a model cannot tell identical captions apart. It is named apart from the image -> text R@1 every
    other view shows (`image_to_text_r1`: ranks, where ties count against the true pair). The pointing
    game uses SPARC's alignment weights of colour and shape words against the objects' masks.
    """
    was_training = model.training
    model.eval()
    embedded = embed_held_out(
        model, tokenizer, held_out, keep_tokens=len(held_out.captions) if held_out.scenes is not None else keep_tokens
    )
    image_features, text_features, patches, tokens = embedded
    model.train(was_training)
    similarity = affinity(image_features, text_features)
    _, text_to_image = retrieval_ranks(image_features, text_features)
    consistency = consistency_figures(image_features, text_features)
    figures = {
        EVALUATION_KEY: caption_recall_at_1(similarity, held_out.captions),
        "text_to_image_r1": recall_at_k(text_to_image, 1),
        "mean_abs_inconsistency": consistency.mean_abs_inconsistency,
        "affinity_pearson": consistency.pearson,
    }
    if patches is not None and tokens is not None and held_out.scenes is not None:
        encoding = PairEncoding(
            image_features, text_features, patches, grid_size(model), tokens,
            token_layout(tokenizer, held_out.captions), logit_scale=0.0, logit_bias=None,
        )  # fmt: skip
        blank = blank_patches(model, held_out.pixels.shape[-1])
        score = scene_grounding_score(encoding, held_out.scenes, kinds=["sparc"], blank_patches=blank)["sparc"]
        figures |= {"blank_peak_share_colour": score["colour"]["blank_peak_share"]}  # 1 / P: no favourite patch
        for word in ("colour", "shape"):  # object accuracy: of the words whose peak lies on an object, on the one named
            figures |= {f"pointing_game_{word}": score[word]["pointing_game"]}
            figures |= {f"object_accuracy_{word}": score[word]["object_accuracy"]}
            figures |= {f"peak_stability_{word}": score[word]["peak_stability"]}  # 1: the map ignores the image
        named = {k: v for k, v in score["colour"].items() if k.startswith("pointing_named_") and v == v}  # NaN: none
        figures |= {f"pointing_game_colour_{key.removeprefix('pointing_')}": v for key, v in named.items()}  # by order
    return figures, embedded
