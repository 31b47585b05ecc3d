"""A grounding score against ground truth: do a word's maps land on the object the word names?

On scenes (`vlviz.data.scenes`), every object's colour word and shape word is grounded with a map
from `vlviz.sparc.GROUNDING_MAPS` and compared with the object's pixel mask, per word class:

- pointing game: the share of words whose highest-valued patch lies inside the object;
- mass in mask: the share of the map's (positive) mass on patches inside the object, the mean
  over words; for SPARC weights, which sum to 1, this is simply the weight inside;
- chance: the share of patches inside the object, what a map pointing at random would score on
  both.

A patch counts as inside an object when at least `min_cover` (default a quarter) of its pixels are
in the object's mask; an object's best-covered patch always counts, so that small objects, which
may cover no patch that much, still have a target.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.data.inputs import PairSet
from vlviz.data.samples import bundled_scenes
from vlviz.data.scenes import POSITIONS, SceneBatch
from vlviz.encoding import PairEncoding, VLModel, content_key
from vlviz.losses.xmm import WordAttention, masked_word_attention
from vlviz.sparc import GROUNDING_MAPS, grounding_maps, word_maps
from vlviz.tokens import first_content_word

MIN_COVER = 0.25
# Words of an object's phrase "a {size} {colour} {shape} {position}" before its position words.
_COLOUR_OFFSET, _SHAPE_OFFSET, _PHRASE_HEAD = 2, 3, 4
_POSITION_WORDS = np.array([len(phrase.split()) for phrase in POSITIONS])


@dataclass(frozen=True)
class CaptionMaps:
    """Where each word and each token of one caption lands on its image: maps on the patch grid, on the CPU."""

    kind: str  # which of GROUNDING_MAPS
    grid_size: tuple[int, int]
    words: list[str]
    word_maps: torch.Tensor  # (W, rows, cols): a word's map is the mean of its BPE pieces' maps
    tokens: list[str]  # the caption's real tokens (no start, end or padding), as read
    token_maps: torch.Tensor  # (T_real, P)
    first_word: int  # the word worth showing first: neither a stop word nor a size (`first_content_word`)


def caption_maps(encoding: PairEncoding, row: int = 0, kind: str = "sparc") -> CaptionMaps:
    """The grounding maps of pair `row`'s caption in its image: SPARC's weights (Eqs. 2-4) or an alternative.

    The one place the app's Grounding view, the trainer's probe and the model comparison get word
    maps from. Raises ValueError for towers without patch tokens.
    """
    if encoding.patch_features is None or encoding.token_features is None or encoding.grid_size is None:
        raise ValueError(f"No grounding maps for this model: {encoding.patches_unavailable}.")
    layout = encoding.tokens
    tokens = encoding.token_features[row : row + 1].float()  # (1, T, D)
    patches = encoding.patch_features[row : row + 1].float()  # (1, P, D)
    token_maps = grounding_maps(tokens, patches, kind)  # (1, T, P)
    words = layout.words[row]
    per_word = word_maps(token_maps, layout.word_index[row : row + 1].to(token_maps.device))[0, : len(words)]
    real = layout.word_mask[row]
    return CaptionMaps(
        kind=kind,
        grid_size=encoding.grid_size,
        words=words,
        word_maps=per_word.cpu().reshape(len(words), *encoding.grid_size),
        tokens=[piece for piece, keep in zip(layout.tokens[row], real.tolist()) if keep],
        token_maps=token_maps[0, real.to(token_maps.device)].cpu(),
        first_word=first_content_word(words),
    )


def select_scenes(scenes: SceneBatch, rows: list[int] | np.ndarray) -> SceneBatch:
    """The scenes at `rows`, in that order, with their ground truth."""
    rows = np.asarray(rows, dtype=np.int64)
    picked = {f.name: getattr(scenes, f.name) for f in fields(scenes)}
    picked = {
        name: [value[i] for i in rows] if isinstance(value, list) else value[rows] for name, value in picked.items()
    }
    return SceneBatch(**picked)


def scene_word_positions(scenes: SceneBatch) -> dict[str, torch.Tensor]:
    """Word indices (N, K) of each object's colour and shape word in its caption; -1 for empty slots.

    Captions read "A, B and C" with each phrase "a {size} {colour} {shape} {position}"; punctuation
    is not a word (`vlviz.tokens`), so an object's phrase starts after the phrases before it, plus
    one for the "and" before the last of two or more objects.
    """
    present = scenes.present
    count = present.sum(axis=1, keepdims=True)  # (N, 1)
    length = np.where(present, _PHRASE_HEAD + _POSITION_WORDS[scenes.cell], 0)  # (N, K) words per phrase
    slot = np.arange(present.shape[1])[None]
    start = np.cumsum(length, axis=1) - length + ((slot == count - 1) & (count > 1))
    return {
        "colour": torch.from_numpy(np.where(present, start + _COLOUR_OFFSET, -1)),
        "shape": torch.from_numpy(np.where(present, start + _SHAPE_OFFSET, -1)),
    }


def object_patch_masks(
    masks: np.ndarray | torch.Tensor, grid_size: tuple[int, int], min_cover: float = MIN_COVER
) -> torch.Tensor:
    """Pixel masks (N, K, S, S) -> patch masks (N, K, P) on the model's patch grid.

    A patch is inside when at least `min_cover` of its pixels are in the mask, or when it is the
    object's best-covered patch. Empty slots have no patch inside. The grid covers the whole image
    (scenes are square, so open_clip's resize and centre crop are a plain rescale).
    """
    masks = torch.as_tensor(masks, dtype=torch.float32)
    n, k = masks.shape[:2]
    cover = F.adaptive_avg_pool2d(masks.reshape(n * k, 1, *masks.shape[-2:]), grid_size).reshape(n, k, -1)
    best = cover == cover.amax(dim=-1, keepdim=True)
    return (cover > 0) & ((cover >= min_cover) | best)


def pointing_and_mass(word_map: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Pointing-game accuracy, mass in mask and chance over the valid words.

    Args:
        word_map: (N, K, P) the map of the word naming object k.
        inside: (N, K, P) bool, the object's patches.
        valid: (N, K) bool, which (scene, object) words to score.
    """
    hit = inside.gather(-1, word_map.argmax(dim=-1, keepdim=True)).squeeze(-1).float()  # (N, K)
    positive = word_map.clamp_min(0)
    mass = (positive * inside).sum(-1) / positive.sum(-1).clamp_min(torch.finfo(positive.dtype).tiny)
    chance = inside.float().mean(-1)
    words = int(valid.sum())
    scores = {
        name: float(value[valid].mean()) if words else float("nan")
        for name, value in (("pointing_game", hit), ("mass_in_mask", mass), ("chance", chance))
    }
    return scores | {"words": words}


def scene_grounding_score(
    encoding: PairEncoding, scenes: SceneBatch, kinds: list[str] | None = None, min_cover: float = MIN_COVER
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores per map kind and word class: {kind: {"colour": {...}, "shape": {...}}}.

    `encoding` holds the scenes' own images and captions, in order. A word cut off by the model's
    context length is not scored. Raises ValueError for towers without patch tokens.
    """
    if encoding.patch_features is None or encoding.token_features is None or encoding.grid_size is None:
        raise ValueError(f"No grounding maps for this model: {encoding.patches_unavailable}.")
    if len(scenes) != encoding.token_features.shape[0]:
        raise ValueError(f"{len(scenes)} scenes but {encoding.token_features.shape[0]} encoded pairs.")
    kinds = list(GROUNDING_MAPS) if kinds is None else kinds
    inside = object_patch_masks(scenes.masks, encoding.grid_size, min_cover)  # (N, K, P)
    word_index = encoding.tokens.word_index.to(encoding.token_features.device)
    targets = {name: index.to(word_index.device) for name, index in scene_word_positions(scenes).items()}
    tokens, patches = encoding.token_features.float(), encoding.patch_features.float()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for kind in kinds:  # a handful of map kinds; each is batched over scenes, objects and patches
        maps = word_maps(grounding_maps(tokens, patches, kind), word_index)  # (N, W, P)
        scores[kind] = {}
        for name, target in targets.items():
            valid = (target >= 0) & (target < maps.shape[1])
            # Truncated captions lose their last words: score only words that kept a token.
            valid &= (word_index[:, None, :] == target[..., None]).any(-1)
            picked = maps.gather(1, target.clamp(0, maps.shape[1] - 1)[..., None].expand(-1, -1, maps.shape[-1]))
            scores[kind][name] = pointing_and_mass(picked.cpu(), inside, valid.cpu())
    return scores


def score_scenes(
    model: VLModel, scenes: SceneBatch, kinds: list[str] | None = None, min_cover: float = MIN_COVER
) -> dict[str, dict[str, dict[str, float]]]:
    """Encode `scenes` with `model` and score its grounding maps (see `scene_grounding_score`)."""
    return scene_grounding_score(model.encode_pairs(scenes.pil_images(), scenes.captions), scenes, kinds, min_cover)


def bundled_scene_score(
    model: VLModel, pairs: PairSet, kind: str = "sparc"
) -> tuple[dict[str, dict[str, float]] | None, int]:
    """The grounding score of `model` on the pairs that are bundled sample scenes (same pixels and caption).

    Returns the scores per word class (None when no pair is a bundled scene) and how many pairs were scored.
    """
    scenes, keys = bundled_scenes()
    found = [(i, keys.get(content_key(image))) for i, image in enumerate(pairs.images)]
    matched = [(i, j) for i, j in found if j is not None and pairs.captions[i] == scenes.captions[j]]
    if not matched:
        return None, 0
    rows, truth = zip(*matched)
    encoding = model.encode_pairs([pairs.images[i] for i in rows], [pairs.captions[i] for i in rows])
    return scene_grounding_score(encoding, select_scenes(scenes, list(truth)), kinds=[kind])[kind], len(rows)


def xmm_word_attention(model: VLModel, image: Image.Image, caption: str) -> WordAttention | None:
    """Where the model's trained XMM fusion head looks for each word of `caption` when it is masked.

    None when the model has no trained XMM head (`VLModel.loss_heads`, saved beside a checkpoint).
    """
    xmm = model.loss_heads.get("xmm")
    if xmm is None:
        return None
    pixels = model.preprocess(image)[None].to(model.device, model.dtype)
    return masked_word_attention(xmm, model.model, model.tokenizer, pixels, caption)
