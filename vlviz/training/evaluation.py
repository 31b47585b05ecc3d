"""Held-out figures of a model while it trains: retrieval, SaCo inconsistency and, on scenes, the pointing game."""

from __future__ import annotations

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


@torch.inference_mode()
def embed_held_out(
    model: torch.nn.Module, tokenizer, held_out: HeldOut, with_tokens: bool = False, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Image and text embeddings of a held-out split in chunks: (global images, global texts, patches, tokens).

    Patch and token embeddings come back only when asked for and when the towers have them.
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    captions = held_out.captions
    images = [image_embeddings(model, p.to(device, dtype)) for p in held_out.pixels.split(chunk)]
    texts = [
        text_embeddings(model, tokenizer(captions[i : i + chunk]).to(device)) for i in range(0, len(captions), chunk)
    ]
    image_features, text_features = torch.cat([i for i, _ in images]).float(), torch.cat([t for t, _ in texts]).float()
    if not with_tokens or images[0][1] is None or texts[0][1] is None:
        return image_features, text_features, None, None
    return (
        image_features,
        text_features,
        torch.cat([p for _, p in images]).float(),
        torch.cat([t for _, t in texts]).float(),
    )


@torch.inference_mode()
def blank_patches(model: torch.nn.Module, image_size: int) -> torch.Tensor | None:
    """The patch embeddings (1, P, D) of a scene with no object (`blank_scene`), where `model` reads its patches."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    pixels = normalise_uint8(torch.from_numpy(blank_scene(image_size))[None], *preprocess_stats(model))
    return image_embeddings(model, pixels.to(device, dtype))[1]


def evaluate(model: torch.nn.Module, tokenizer, held_out: HeldOut) -> dict[str, float]:
    """Held-out figures: retrieval R@1 both ways, SaCo inconsistency, and on scenes the pointing game.

    Image -> caption R@1 (`image_to_caption_r1`) counts an identical caption as a hit: scenes repeat captions,
    and a model cannot tell identical captions apart. It is named apart from the image -> text R@1 every
    other view shows (`image_to_text_r1`: ranks, where ties count against the true pair). The pointing
    game uses SPARC's alignment weights of colour and shape words against the objects' masks.
    """
    was_training = model.training
    model.eval()
    image_features, text_features, patches, tokens = embed_held_out(
        model, tokenizer, held_out, with_tokens=held_out.scenes is not None
    )
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
    return figures
