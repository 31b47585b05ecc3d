"""Before and after: how N pairs moved between two encodings of them (a run's start and its trained model,
two points of a WiSE-FT line, or any two models of one joint dimension).

Pure tensor functions over L2-normalised global features; a pair is `before[i]` and `after[i]`. The
shared 2-D layout assumes both encodings live in one space, which holds for a model and its continued
training (the trained weights start at the start model's) and for WiSE-FT's line between them; for
unrelated models the arrows show nothing but the change of basis, and the views say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlviz.metrics.affinity import affinity, retrieval_ranks
from vlviz.metrics.consistency import inconsistency_matrix, sample_inconsistency

Features = tuple[torch.Tensor, torch.Tensor]  # (image_features, text_features), each (N, D), L2-normalised


@dataclass(frozen=True)
class PairMovement:
    """Per-pair figures before (row 0) and after (row 1): each field is (2, N)."""

    image_to_text_rank: torch.Tensor  # rank of the pair's caption among all captions for its image, 1 = best
    text_to_image_rank: torch.Tensor  # rank of the pair's image among all images for its caption
    own_similarity: torch.Tensor  # cosine of the image with its own caption
    inconsistency: torch.Tensor  # SaCo's per-sample mean |A_I - A_T| against every other pair

    def moved_most(self, k: int) -> torch.Tensor:
        """The k pairs whose ranks changed most (both directions' |change| summed), ties by |own similarity change|."""
        rank_change = (self.image_to_text_rank.diff(dim=0).abs() + self.text_to_image_rank.diff(dim=0).abs())[0]
        similarity_change = self.own_similarity.diff(dim=0).abs()[0]
        order = torch.argsort(similarity_change, descending=True, stable=True)
        order = order[torch.argsort(rank_change[order], descending=True, stable=True)]
        return order[:k]


def _check(before: Features, after: Features) -> None:
    shapes = {tuple(t.shape[:1]) for t in (*before, *after)}
    if len(shapes) != 1:
        raise ValueError(f"before and after must encode the same pairs, got {sorted(shapes)} of them")


def pair_movement(before: Features, after: Features) -> PairMovement:
    """Each pair's retrieval ranks, own similarity and inconsistency under both encodings (`PairMovement`)."""
    _check(before, after)
    ranks = [retrieval_ranks(*features) for features in (before, after)]
    return PairMovement(
        image_to_text_rank=torch.stack([ranks[0][0], ranks[1][0]]),
        text_to_image_rank=torch.stack([ranks[0][1], ranks[1][1]]),
        own_similarity=torch.stack([(image * text).sum(dim=-1) for image, text in (before, after)]),
        inconsistency=torch.stack([sample_inconsistency(*features) for features in (before, after)]),
    )


def affinity_difference(before: Features, after: Features) -> torch.Tensor:
    """After minus before of the image-text cosines I T^T, (N, N): > 0 where an image and a caption drew closer."""
    _check(before, after)
    return affinity(*after) - affinity(*before)


def inconsistency_difference(before: Features, after: Features) -> torch.Tensor:
    """After minus before of SaCo's |A_I - A_T|, (N, N): < 0 where two pairs became more consistent."""
    _check(before, after)
    return inconsistency_matrix(*after) - inconsistency_matrix(*before)


def shared_layout(before: Features, after: Features) -> torch.Tensor:
    """One 2-D frame for both encodings: the top two principal axes of all 4N points, (2, 2, N, 2).

    Indexed [before/after, image/text, pair, x/y]. Fitting one PCA on the union (not one per model)
    is what makes an arrow from a point's place before to its place after mean a movement.
    """
    _check(before, after)
    points = torch.cat([*before, *after]).float()  # (4N, D)
    centred = points - points.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2].T  # (D, 2)
    signs = torch.sign(axes.sum(dim=0, keepdim=True)).clamp_min(0) * 2 - 1  # a fixed orientation per axis
    n = before[0].shape[0]
    return (centred @ (axes * signs)).reshape(2, 2, n, 2)


def grounding_difference(before_maps: torch.Tensor, after_maps: torch.Tensor) -> torch.Tensor:
    """After minus before of one caption's word maps (W, rows, cols): where each word's weight moved to (> 0)."""
    if before_maps.shape != after_maps.shape:
        raise ValueError(
            f"the two models' word maps differ in shape ({tuple(before_maps.shape)} vs {tuple(after_maps.shape)}):"
            " grounding differences need one patch grid and one tokenizer"
        )
    return after_maps - before_maps
