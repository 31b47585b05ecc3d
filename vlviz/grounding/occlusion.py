"""Occlusion maps: where a word's evidence comes from in the image, not where the tower stores it.

SPARC's weights (`vlviz.grounding.sparc`) read the tower's last patch tokens. After a few attention blocks a
patch token holds evidence gathered from other patches, so a word can peak on background that carries
its object's colour (`bench.peaks` measures this on scenes). Occlusion sensitivity (Zeiler and Fergus,
ECCV 2014) asks the pixels instead: hide one patch at a time and see how much each token's SPARC
fine-grained similarity falls,

    m_lp = cos(t_l, c_l(x)) - cos(t_l, c_l(x with patch p hidden)),   c_l = sum_p' a_lp' v_p'   (SPARC Eqs. 2-5)

A hidden patch is filled with the image's per-channel median, the background in most scenes and a
neutral colour in photos. Positive m_lp: the patch supports token l. One forward pass of the image
tower per patch, batched: P images per pair.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.data.keys import content_key
from vlviz.grounding.sparc import alignment_weights, grouped_embeddings
from vlviz.models.encoding import TensorCache, VLModel, image_embeddings

OCCLUSION_BATCH = 256  # occluded images per tower pass
OCCLUSION_CACHE_ENTRIES = 256  # pairs whose occlusion maps are kept per model: (T, P) floats each, tens of kB
_CACHES: weakref.WeakKeyDictionary[VLModel, TensorCache] = weakref.WeakKeyDictionary()  # a model's maps go with it


def fine_similarity(token_emb: torch.Tensor, patch_emb: torch.Tensor) -> torch.Tensor:
    """cos(t_l, c_l) per token, c_l SPARC's language-grouped embedding: (B, T, D), (B, P, D) -> (B, T)."""
    grouped = grouped_embeddings(alignment_weights(token_emb, patch_emb), patch_emb)
    return F.cosine_similarity(token_emb, grouped, dim=-1)


def occluded(pixels: torch.Tensor, grid: tuple[int, int], patches: torch.Tensor) -> torch.Tensor:
    """Copies of each image with one patch filled with its per-channel median: (B, C, H, W) -> (B, len(patches), C, H, W).

    `patches` are row-major patch indices on the (rows, cols) grid; the image must divide into it.
    """
    h, w = pixels.shape[-2:]
    rows, cols = grid
    if h % rows or w % cols:
        raise ValueError(f"A {h}x{w} image does not divide into a {rows}x{cols} patch grid.")
    fill = pixels.flatten(2).median(dim=-1).values[:, None, :, None, None]  # (B, 1, C, 1, 1)
    cell = torch.zeros(len(patches), rows * cols, dtype=torch.bool, device=pixels.device)
    cell[torch.arange(len(patches)), patches.to(pixels.device)] = True
    hidden = cell.reshape(-1, 1, rows, cols).float()
    hidden = F.interpolate(hidden, size=(h, w), mode="nearest").bool()  # (n, 1, H, W)
    return torch.where(hidden[None], fill, pixels[:, None])


@torch.inference_mode()
def occlusion_maps(
    patch_features: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    token_emb: torch.Tensor,
    grid: tuple[int, int],
    batch: int = OCCLUSION_BATCH,
) -> torch.Tensor:
    """m (B, T, P): how much each token's SPARC fine similarity falls when each patch is hidden.

    Args:
        patch_features: the image tower, normalised pixels (n, C, H, W) -> projected patch embeddings (n, P, D).
        pixels: (B, C, H, W) the images as the model sees them.
        token_emb: (B, T, D) each image's caption tokens, projected (`vlviz.models.encoding.text_embeddings`).
        grid: the tower's patch grid (rows, cols); P = rows * cols.
        batch: at most this many images per tower pass (memory), however many pairs and patches.
    """
    if len(pixels) > batch:  # a pass holds at most `batch` images: chunk the images too
        return torch.cat([
            occlusion_maps(patch_features, chunk, tokens, grid, batch)
            for chunk, tokens in zip(pixels.split(batch), token_emb.split(batch))
        ])  # fmt: skip
    n_patches = grid[0] * grid[1]
    base = fine_similarity(token_emb, patch_features(pixels).float())  # (B, T)
    drops = torch.empty(*token_emb.shape[:2], n_patches, device=token_emb.device)
    per_image = max(1, batch // len(pixels))  # patches hidden per pass, for all images at once
    for start in range(0, n_patches, per_image):  # P / per_image tower passes, each batched over images and patches
        chosen = torch.arange(start, min(start + per_image, n_patches))
        images = occluded(pixels, grid, chosen)  # (B, n, C, H, W)
        features = patch_features(images.flatten(0, 1)).float().unflatten(0, images.shape[:2])  # (B, n, P, D)
        tokens = token_emb[:, None].expand(-1, len(chosen), -1, -1)
        after = fine_similarity(tokens.flatten(0, 1), features.flatten(0, 1)).unflatten(0, images.shape[:2])
        drops[..., start : start + len(chosen)] = (base[:, None] - after).transpose(1, 2)
    return drops


def model_occlusion_maps(model: VLModel, images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
    """(N, T, P) occlusion maps of each caption's tokens on its own image by `model`, on the CPU.

    One tower pass per patch and image, so each pair's maps are kept (by content, per model) for the next call.
    Raises ValueError for towers without patch tokens.
    """
    encoding = model.encode_pairs(images, captions)
    if encoding.token_features is None or encoding.patch_features is None or encoding.grid_size is None:
        raise ValueError(f"No occlusion maps for this model: {model.patches_unavailable}.")
    cache = _CACHES.setdefault(model, TensorCache(OCCLUSION_CACHE_ENTRIES))
    keys = [f"{content_key(image)}:{content_key(caption)}" for image, caption in zip(images, captions)]
    found = {key: cache.get(key) for key in keys}
    first_row = {key: keys.index(key) for key in found}  # a pair given twice is computed once
    missing = [row for key, row in first_row.items() if found[key] is None]
    if missing:
        pixels = model.pixels([images[i] for i in missing])
        maps = occlusion_maps(
            lambda x: image_embeddings(model.model, x)[1], pixels,
            encoding.token_features[missing].float(), encoding.grid_size,
        ).cpu()  # fmt: skip
        for row, i in enumerate(missing):
            found[keys[i]] = (maps[row], None)
            cache.put(keys[i], found[keys[i]])
    return torch.stack([found[key][0] for key in keys])
