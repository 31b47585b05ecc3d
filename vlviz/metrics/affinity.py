"""Affinity matrices between images and captions, the model's match probabilities, and retrieval.

All functions take L2-normalised global embeddings (as `VLModel` returns them) and work on
whatever device the tensors are on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

RANK_BLOCK_ELEMENTS = 2**23  # scores held at once while ranking: 32 MB in float32


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


def partner_ranks(queries: torch.Tensor, keys: torch.Tensor, block_elements: int = RANK_BLOCK_ELEMENTS) -> torch.Tensor:
    """Rank (1 = best) of each query's partner (query i's is key i) among all keys by cosine, (N,) long.

    Ties count against the partner (rank = number of keys scoring at least as high, itself
    included), so a collapsed model that scores everything alike does not get a perfect R@1.
    One block of rows at a time: memory O(block_elements), never (N, N) for large N.
    """
    n = queries.shape[0]
    rows_per_block = max(1, block_elements // max(1, keys.shape[0]))
    ranks = []
    for start in range(0, n, rows_per_block):
        scores = affinity(queries[start : start + rows_per_block], keys)  # (C, N)
        own = scores.diagonal(offset=start)  # (C,): query start + r against key start + r
        ranks.append((scores >= own[:, None]).sum(dim=1))
    return torch.cat(ranks)


def retrieval_ranks(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the true partners of N pairs both ways: (image -> text, text -> image), each (N,) long.

    The one rank rule of vlviz (`partner_ranks`): the Affinity view, the report, the embedding
    figures and the trainer's evaluation all rank with it.
    """
    return partner_ranks(image_features, text_features), partner_ranks(text_features, image_features)


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


@dataclass(frozen=True)
class AffinityReport:
    """The Affinity view's numbers: per-pair figures over all N pairs, matrices over the S pairs `shown`.

    With S = N (the default) the matrices are the whole (N, N) view; for large N a page of S pairs
    keeps memory and figures at O(S^2) while the ranks and own-pair figures still cover every pair.
    """

    shown: torch.Tensor  # (S,) long: the pairs whose matrices are held, in order
    image_text: torch.Tensor  # (S, S) cosine, rows images, columns captions
    image_image: torch.Tensor  # (S, S) A_I
    text_text: torch.Tensor  # (S, S) A_T
    image_to_text_probability: torch.Tensor  # (S, S) P(caption | image), normalised over all N captions
    text_to_image_probability: torch.Tensor  # (S, S) P(image | caption), normalised over all N images
    own_cosine: torch.Tensor  # (N,) cos(image i, caption i)
    own_probability: torch.Tensor  # (N,) P(caption i | image i)
    image_to_text_rank: torch.Tensor  # (N,) rank of each image's own caption among all captions
    text_to_image_rank: torch.Tensor  # (N,) rank of each caption's own image among all images
    head: str  # "softmax" (CLIP) or "sigmoid" (SigLIP)

    def to_dict(self, decimals: int = 4) -> dict[str, object]:
        """Plain lists for JSON (the `analyze` API), values rounded to `decimals`."""
        return {
            name: (value.double().round(decimals=decimals) if value.is_floating_point() else value).tolist()
            if isinstance(value, torch.Tensor)
            else value
            for name, value in self.__dict__.items()
        }


@dataclass(frozen=True)
class PairFigures:
    """Each pair's own figures over all N pairs: what every page and value kind of the Affinity view shares."""

    own_cosine: torch.Tensor  # (N,) cos(image i, caption i)
    own_probability: torch.Tensor  # (N,) P(caption i | image i)
    image_to_text_rank: torch.Tensor  # (N,) rank of each image's own caption among all captions
    text_to_image_rank: torch.Tensor  # (N,) rank of each caption's own image among all images


def own_pair_cosines(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """cos(image i, caption i) of every pair (N,), in float32: both are L2-normalised, so a row-wise dot product."""
    return (image_features.float() * text_features.float()).sum(dim=1)


def pair_figures(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float, logit_bias: float | None = None
) -> PairFigures:
    """Every pair's own cosine, probability and ranks (on the CPU): two O(N^2 D) passes, block by block."""
    own = own_pair_cosines(image_features, text_features)  # (N,)
    own_probability = _own_probability(image_features, text_features, own, logit_scale, logit_bias)
    rank_i2t, rank_t2i = retrieval_ranks(image_features, text_features)
    return PairFigures(own.cpu(), own_probability.cpu(), rank_i2t.cpu(), rank_t2i.cpu())


def affinity_report(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float,
    logit_bias: float | None = None,
    shown: Sequence[int] | None = None,
    pairs: PairFigures | None = None,
) -> AffinityReport:
    """Every figure of the Affinity view, computed on the features' device and moved to the CPU.

    Matrices cover the pairs `shown` (None: all N); probabilities are normalised over all N as the
    model's softmax is (CLIP), or are independent sigmoids (SigLIP). Memory O(N * S + S^2), and the
    ranks go block by block (`partner_ranks`). `pairs`: the `pair_figures` of these features when
    already computed (another page of the same pairs costs O(S * N * D) then, not O(N^2 D)).
    """
    n = image_features.shape[0]
    rows = torch.arange(n) if shown is None else torch.as_tensor(list(shown), dtype=torch.long)
    index = rows.to(image_features.device)
    images, texts = image_features[index], text_features[index]
    image_rows = logit_scale * affinity(images, text_features)  # (S, N): each shown image against every caption
    text_columns = logit_scale * affinity(image_features, texts)  # (N, S): every image against each shown caption
    if logit_bias is None:
        image_to_text = image_rows.softmax(dim=1)[:, index]
        text_to_image = text_columns.softmax(dim=0)[index]
    else:
        image_to_text = text_to_image = torch.sigmoid(image_rows[:, index] + logit_bias)
    pairs = pairs or pair_figures(image_features, text_features, logit_scale, logit_bias)
    return AffinityReport(
        shown=rows,
        image_text=affinity(images, texts).cpu(),
        image_image=affinity(images, images).cpu(),
        text_text=affinity(texts, texts).cpu(),
        image_to_text_probability=image_to_text.cpu(),
        text_to_image_probability=text_to_image.cpu(),
        own_cosine=pairs.own_cosine,
        own_probability=pairs.own_probability,
        image_to_text_rank=pairs.image_to_text_rank,
        text_to_image_rank=pairs.text_to_image_rank,
        head="softmax" if logit_bias is None else "sigmoid",
    )


def _own_probability(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    own: torch.Tensor,
    logit_scale: float,
    logit_bias: float | None,
    block_elements: int = RANK_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """P(caption i | image i) of every pair, (N,): a softmax over all captions (block by block), or a sigmoid."""
    if logit_bias is not None:
        return torch.sigmoid(logit_scale * own + logit_bias)
    n = image_features.shape[0]
    rows_per_block = max(1, block_elements // max(1, n))
    normalisers = [
        torch.logsumexp(logit_scale * affinity(image_features[start : start + rows_per_block], text_features), dim=1)
        for start in range(0, n, rows_per_block)
    ]
    return torch.exp(logit_scale * own - torch.cat(normalisers))
