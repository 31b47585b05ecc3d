"""Affinity matrices between images and captions, the model's match probabilities, and retrieval.

All functions take L2-normalised global embeddings (as `VLModel` returns them) and work on
whatever device the tensors are on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def affinity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine affinity A[i, j] = a_i . b_j of L2-normalised rows: (N, D), (M, D) -> (N, M)."""
    return a.float() @ b.float().T


def affinity_matrices(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three views of a pair set: image-text, image-image (A_I) and text-text (A_T), each (N, N)."""
    return {
        "image_text": affinity(image_features, text_features),
        "image_image": affinity(image_features, image_features),
        "text_text": affinity(text_features, text_features),
    }


def match_probabilities(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float,
    logit_bias: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own match probabilities, (image -> text, text -> image), each (N_img, N_txt).

    CLIP (no bias): logits = s * cos; image -> text is a softmax over captions (rows) and
    text -> image a softmax over images (columns), as in CLIP's InfoNCE.
    SigLIP (with bias b): each pair is an independent binary match, p = sigmoid(s * cos + b), the
    same in both directions.
    """
    logits = logit_scale * affinity(image_features, text_features)
    if logit_bias is not None:
        probabilities = torch.sigmoid(logits + logit_bias)
        return probabilities, probabilities
    return logits.softmax(dim=1), logits.softmax(dim=0)


def retrieval_ranks(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank (1 = best) of each true partner, for paired rows and columns of a square similarity.

    Returns (image -> text ranks over row i, text -> image ranks over column j), each (N,) long.
    Ties count against the true partner: rank = 1 + number of others scoring strictly higher.
    """
    true = similarity.diagonal()
    image_to_text = 1 + (similarity > true[:, None]).sum(dim=1)
    text_to_image = 1 + (similarity > true[None, :]).sum(dim=0)
    return image_to_text, text_to_image


def recall_at_k(ranks: torch.Tensor, k: int = 1) -> float:
    """Fraction of queries whose true partner ranks within the top k."""
    return float((ranks <= k).float().mean().item())


def caption_recall_at_1(similarity: torch.Tensor, captions: Sequence[str]) -> float:
    """Image -> text R@1 where retrieving any caption identical to the true one counts as a hit.

    Procedural data sets repeat captions; a model cannot tell identical captions apart, so the
    strict diagonal R@1 would punish it for a coin toss.
    """
    best = similarity.argmax(dim=1).tolist()
    return sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(captions)


def rank_images_by_text(query_features: torch.Tensor, image_features: torch.Tensor) -> tuple[list[int], list[float]]:
    """Order images by affinity to one query embedding (D,): indices best first, with scores."""
    scores = affinity(query_features[None], image_features)[0]
    order = scores.argsort(descending=True)
    return order.tolist(), scores[order].tolist()
