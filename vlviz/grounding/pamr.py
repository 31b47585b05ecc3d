"""PAMR: refine word maps with the image's own edges (pixel-adaptive mask refinement).

Araslanov and Roth, "Single-Stage Semantic Segmentation from Image Labels" (CVPR 2020), Sec. 3.3; NACLIP
(Hajimiri et al., WACV 2025) offers it as a post-processing option on its upsampled maps. Each pixel's value
becomes an average of its neighbours' values, weighted by how alike their colours are, and that is iterated:

    alpha_ij = softmax_j( -mean_c |I_i,c - I_j,c| / (0.1 * sigma_i,c) ),    j in N(i) (8 neighbours per dilation)
    m_i <- sum_j alpha_ij m_j                                                (num_iter times)

sigma_i,c is the standard deviation of channel c over the 3x3 patch at every dilation (centre included, once
per dilation), and N(i) is the 8 neighbours at each dilation, the image padded by replication: as the official
code (visinf/1-stage-wseg, ``models/mods/pamr.py``, used unchanged by NACLIP). The neighbour shifts are slices
here, not shift-kernel convolutions; `tests/grounding/test_pamr.py` checks them against the convolutions.

In vlviz a map lives on the patch grid: `refine_patch_maps` upsamples it to the model's input pixels (bilinear,
as NACLIP upsamples before PAMR), refines it with the normalised pixels, and averages each patch's pixels back,
so the pointing game still reads one value per patch. NACLIP's defaults: 10 iterations, dilations (8, 16) in
pixels of the model's input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PAMR_ITERATIONS = 10  # NACLIP's `pamr_steps` when PAMR is on (eval.py: --pamr on)
PAMR_DILATIONS = (8, 16)  # NACLIP's `pamr_stride`, in input pixels
_RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, K, H, W): each pixel's 8 neighbours at each dilation (K = 8 per dilation, 9 with the
    centre), in row-major order, outside the image the nearest edge pixel (replicate padding)."""
    height, width = x.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if centre else _RING
    parts = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        parts.extend(
            padded[:, :, d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width] for dy, dx in offsets
        )
    return torch.stack(parts, dim=2)


def pamr_affinities(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """alpha (B, K, H, W): each pixel's weights over its K neighbours, from a (B, 3, H, W) image; they sum to 1."""
    spread = neighbours(image, dilations, centre=True).std(dim=2, keepdim=True)  # (B, C, 1, H, W)
    distance = (image[:, :, None] - neighbours(image, dilations)).abs()  # (B, C, K, H, W)
    return (-distance / (1e-8 + 0.1 * spread)).mean(dim=1).softmax(dim=1)


def pamr(
    image: torch.Tensor,
    maps: torch.Tensor,
    iterations: int = PAMR_ITERATIONS,
    dilations: Sequence[int] = PAMR_DILATIONS,
) -> torch.Tensor:
    """(B, M, H, W) maps refined by the (B, 3, H, W) image they lie on: `iterations` rounds of affinity averaging."""
    if image.shape[0] != maps.shape[0] or image.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"PAMR needs a map per image at its size: image {tuple(image.shape)}, maps {tuple(maps.shape)}."
        )
    alpha = pamr_affinities(image.float(), dilations)[:, None]  # (B, 1, K, H, W)
    maps = maps.float()
    for _ in range(iterations):
        maps = (neighbours(maps, dilations) * alpha).sum(dim=2)
    return maps


def refine_patch_maps(
    maps: torch.Tensor,
    pixels: torch.Tensor,
    grid: tuple[int, int],
    iterations: int = PAMR_ITERATIONS,
    dilations: Sequence[int] = PAMR_DILATIONS,
) -> torch.Tensor:
    """(B, T, P) patch-grid maps -> the same refined by PAMR on the (B, 3, H, W) pixels the model saw, (B, T, P).

    Up to the pixels (bilinear), PAMR, and back to the grid as each patch's mean (the pointing game reads patches).
    """
    batch, tokens, _ = maps.shape
    size = pixels.shape[-2:]
    upsampled = F.interpolate(
        maps.float().reshape(batch, tokens, *grid), size=size, mode="bilinear", align_corners=False
    )
    refined = pamr(pixels, upsampled, iterations, dilations)
    return F.adaptive_avg_pool2d(refined, grid).reshape(batch, tokens, -1)
