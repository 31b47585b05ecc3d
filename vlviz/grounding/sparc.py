"""SPARC's token-to-patch grounding (Bica et al., ICML 2024, arXiv 2401.09865), as batched tensor math.

For each image-caption pair, every caption token t_l gets alignment weights a_lp over the image's
patches v_p (Eqs. 2-4), and the weights pool the patches into a language-grouped vision embedding
c_l per token (Eq. 5); SPARC's fine-grained loss (`vlviz.losses.sparc_fine_grained_loss`) then
contrasts c_l with t_l. The same weights, reshaped to the patch grid, show where a word lands.

`GROUNDING_MAPS` also holds the alternatives SPARC is compared with, named as such: softmax
weights (the paper's ablation), min-max weights without the sparsity threshold, and the dense
cosine map. Letters in shape comments: B pairs, T tokens, P patches, D joint dimensions, W words.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def similarities(token_emb: torch.Tensor, patch_emb: torch.Tensor) -> torch.Tensor:
    """Raw inner products s_lp = t_l . v_p, the similarities Eq. 2 normalises: (B, T, D), (B, P, D) -> (B, T, P)."""
    return torch.einsum("btd,bpd->btp", token_emb, patch_emb)


def alignment_weights(token_emb: torch.Tensor, patch_emb: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """SPARC's alignment weights a_lp (Eqs. 2-4): each token's row over patches sums to 1.

    The raw similarities are min-max normalised per token over patches (Eq. 2), entries below the
    threshold sigma (1/P by default) are set to zero (Eq. 3), and each row is renormalised (Eq. 4).
    A degenerate row, whose similarities are all equal, has no preferred patch: it becomes the
    uniform row 1/P (the limit of min-max normalisation as the spread goes to zero), without NaNs
    in the values or the gradients.

    Args:
        token_emb: (B, T, D) projected token embeddings, not normalised.
        patch_emb: (B, P, D) projected patch embeddings, not normalised.
        threshold: sigma in [0, 1]; None for the paper's 1/P, 0 to keep every patch.
    """
    n_patches = patch_emb.shape[1]
    sigma = 1.0 / n_patches if threshold is None else threshold
    if not 0.0 <= sigma <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (min-max values do), got {threshold}")
    s = similarities(token_emb, patch_emb)  # (B, T, P)
    low = s.amin(dim=-1, keepdim=True)
    spread = s.amax(dim=-1, keepdim=True) - low  # (B, T, 1)
    flat = spread == 0
    # The safe denominator keeps the unused branch of `where` finite, so no NaN reaches the gradient.
    s = torch.where(flat, torch.ones_like(s), (s - low) / torch.where(flat, torch.ones_like(spread), spread))
    s = torch.where(s < sigma, torch.zeros_like(s), s)  # every row keeps its maximum, 1 >= sigma
    return s / s.sum(dim=-1, keepdim=True)


def no_sparsity_weights(token_emb: torch.Tensor, patch_emb: torch.Tensor) -> torch.Tensor:
    """Alternative: min-max normalised, renormalised weights without the 1/P threshold (Eqs. 2 and 4 only)."""
    return alignment_weights(token_emb, patch_emb, threshold=0.0)


def softmax_weights(token_emb: torch.Tensor, patch_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Alternative (the paper's ablation): softmax over patches of the raw similarities, softmax_p(s_lp / temperature).

    The paper does not give the ablation's temperature; 1 applies the softmax to the raw similarities as they are.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return torch.softmax(similarities(token_emb, patch_emb) / temperature, dim=-1)


def cosine_map(token_emb: torch.Tensor, patch_emb: torch.Tensor) -> torch.Tensor:
    """Alternative: the dense cosine map cos(t_l, v_p) against every patch, in [-1, 1] (not a distribution)."""
    return similarities(F.normalize(token_emb, dim=-1), F.normalize(patch_emb, dim=-1))


GROUNDING_MAPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sparc": alignment_weights,
    "no-sparsity": no_sparsity_weights,
    "softmax": softmax_weights,
    "cosine": cosine_map,
}


def grounding_maps(token_emb: torch.Tensor, patch_emb: torch.Tensor, kind: str = "sparc") -> torch.Tensor:
    """Token-to-patch maps (B, T, P) of one of `GROUNDING_MAPS`: SPARC's weights or an alternative."""
    if kind not in GROUNDING_MAPS:
        raise ValueError(f"Unknown grounding map {kind!r}; known maps: {', '.join(GROUNDING_MAPS)}.")
    return GROUNDING_MAPS[kind](token_emb, patch_emb)


def grouped_embeddings(weights: torch.Tensor, patch_emb: torch.Tensor) -> torch.Tensor:
    """Language-grouped vision embeddings c_l = sum_p a_lp v_p (Eq. 5): (B, T, P), (B, P, D) -> (B, T, D), not normalised."""
    return torch.einsum("btp,bpd->btd", weights, patch_emb)


def word_maps(token_maps: torch.Tensor, word_index: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Per-word maps (B, W, P) from per-token maps (B, T, P), merging each word's BPE pieces.

    `word_index[b, t]` is the word of token t (-1 for start/end/padding and punctuation), as in
    `TokenLayout`; W is one more than its largest entry. A word's map is the mean (or the max) of
    its tokens' maps; the mean of SPARC weights still sums to 1. Word slots a caption does not
    fill are zero.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    batch, _, n_patches = token_maps.shape
    n_words = int(word_index.max().clamp_min(0)) + 1
    slots = (word_index + 1)[..., None].expand_as(token_maps)  # (B, T, P); slot 0 collects non-words
    empty = token_maps.new_zeros(batch, n_words + 1, n_patches)
    merged = empty.scatter_reduce(
        1, slots, token_maps, reduce="mean" if reduce == "mean" else "amax", include_self=False
    )
    return merged[:, 1:]  # (B, W, P)
