"""A grounding score against ground truth: do a word's maps land on the object the word names?

On scenes (`vlviz.data.scenes`), every object's colour word and shape word is grounded with a map
from `vlviz.grounding.sparc.GROUNDING_MAPS` and compared with the object's pixel mask, per word class:

- pointing game: the share of words whose highest-valued patch lies inside the object;
- mass in mask: the share of the map's (positive) mass on patches inside the object, the mean
  over words; for SPARC weights, which sum to 1, this is simply the weight inside;
- chance: the share of patches inside the object, what a map pointing at random would score on
  both.

Uniform chance is a low bar: objects stand out from the dark background, so a map that finds objects
without telling them apart beats it. Two baselines read the score plainly:

- the untrained model: the same architecture freshly initialised with a fixed seed
  (`untrained_model`), scored on the same scenes and words;
- object level: among words whose peak patch lies on some object, the share on the named one,
  against the chance of picking the named object among the scene's objects
  (`object_level_scores`).

A patch counts as inside an object when at least `min_cover` (default a quarter) of its pixels are
in the object's mask; an object's best-covered patch always counts, so that small objects, which
may cover no patch that much, still have a target.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.data.inputs import PairSet
from vlviz.data.keys import content_key
from vlviz.data.samples import bundled_scenes
from vlviz.data.scenes import SceneBatch, blank_scene
from vlviz.grounding.gradient import GRADIENT_METHODS, model_gradient_maps
from vlviz.grounding.methods import DENSE_METHODS, dense_patches
from vlviz.grounding.occlusion import model_occlusion_maps
from vlviz.grounding.pamr import refine_patch_maps
from vlviz.grounding.sparc import GROUNDING_MAPS, grounding_maps, word_maps
from vlviz.losses.xmm import WordAttention, masked_word_attention
from vlviz.models.encoding import PairEncoding, VLModel, batches
from vlviz.models.tokens import TokenLayout, first_content_word
from vlviz.models.towers import preprocess_stats, set_token_readout, token_readout

MIN_COVER = 0.25
UNTRAINED_SEED = 0  # the untrained baseline's initialisation
# Where the evidence comes from, not where the tower keeps it (`vlviz.grounding.occlusion`): maps that need the model
# and the pixels, not only the encodings, so they are not in GROUNDING_MAPS.
OCCLUSION = "occlusion"
DENSE_KINDS = tuple(name for name in DENSE_METHODS if name != "clip")
"""The training-free re-readings of the last image block (`vlviz.grounding.methods`): each caption token's cosine
with the method's patch embeddings, as the papers draw them. They too need the model and the pixels."""
GRADIENT_KINDS = tuple(GRADIENT_METHODS)
"""LeGrad and Grad-ECLIP (`vlviz.grounding.gradient`): where each caption token's cosine with the image is sensitive,
read off the tower's gradients, in [0, 1]. A backward pass per token and image."""
PAMR_KIND = "naclip_pamr"
"""NACLIP's maps refined by PAMR on the image's pixels (`vlviz.grounding.pamr`), NACLIP's own option, its defaults."""
PAMR_BATCH = 4  # images per PAMR pass: it holds 16 neighbours of every token's map at the input's pixels
MODEL_KINDS = (OCCLUSION, *DENSE_KINDS, PAMR_KIND, *GRADIENT_KINDS)


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


def caption_maps(
    encoding: PairEncoding, row: int = 0, kind: str = "sparc", token_maps: torch.Tensor | None = None
) -> CaptionMaps:
    """The grounding maps of pair `row`'s caption in its image: SPARC's weights (Eqs. 2-4) or an alternative.

    The one place the app's Grounding view, the trainer's probe and the model comparison get word
    maps from. `token_maps` (1, T, P) are the row's maps when they need more than the encoding
    (occlusion: `model_caption_maps`). Raises ValueError for towers without patch tokens.
    """
    if encoding.patch_features is None or encoding.token_features is None or encoding.grid_size is None:
        raise ValueError(f"No grounding maps for this model: {encoding.patches_unavailable}.")
    layout = encoding.tokens
    if token_maps is None:
        if kind not in GROUNDING_MAPS:
            raise ValueError(f"{kind!r} maps need the model, not only its encodings: see model_caption_maps.")
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


def model_caption_maps(model: VLModel, image: Image.Image, caption: str, kind: str = "sparc") -> CaptionMaps:
    """`caption_maps` of one pair by `model`, for any of `GROUNDING_MAPS` or `MODEL_KINDS`."""
    encoding = model.encode_pairs([image], [caption])
    if kind not in MODEL_KINDS or encoding.patch_features is None:
        return caption_maps(encoding, kind=kind)
    return caption_maps(encoding, kind=kind, token_maps=model_scene_maps(model, [image], [caption], kind, False)[0])


def dense_patch_features(model: VLModel, images: list[Image.Image], method: str) -> torch.Tensor:
    """(N, P, D) patch embeddings `method` (`DENSE_KINDS`) reads off each image, float32, in batches of ENCODE_BATCH."""
    with torch.inference_mode():
        return torch.cat([dense_patches(model.model, model.pixels(chunk), method).float() for chunk in batches(images)])


def model_scene_maps(
    model: VLModel, images: list[Image.Image], captions: list[str], kind: str, swapped: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The maps (N, T, P) of a kind of `MODEL_KINDS` for each caption on its image, and (for `peak_stability`,
    when `swapped`) on the previous image, on the CPU. A dense kind's map is each caption token's cosine with
    the method's patch embeddings; on the previous image, the same patches rolled by one (no second pass)."""
    if kind == OCCLUSION:
        return occlusion_scene_maps(model, images, captions, swapped)
    if kind in GRADIENT_KINDS:
        return gradient_scene_maps(model, images, captions, kind, swapped)
    if kind == PAMR_KIND:
        return pamr_scene_maps(model, images, captions, swapped)
    tokens = model.encode_pairs(images, captions).token_features
    if tokens is None:
        raise ValueError(f"No {kind} maps for this model: {model.patches_unavailable}.")
    tokens, patches = tokens.float(), dense_patch_features(model, images, kind)
    maps = grounding_maps(tokens, patches, "cosine").cpu()
    if not swapped or len(images) < 2:
        return maps, None
    return maps, grounding_maps(tokens, patches.roll(1, dims=0), "cosine").cpu()  # caption n on image n - 1


def occlusion_scene_maps(
    model: VLModel, images: list[Image.Image], captions: list[str], swapped: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Occlusion maps (N, T, P) of each caption on its image, and (for `peak_stability`) on the previous image."""
    maps = model_occlusion_maps(model, images, captions)
    if not swapped or len(images) < 2:
        return maps, None
    return maps, model_occlusion_maps(model, images[-1:] + images[:-1], captions)  # caption n on image n - 1


def gradient_scene_maps(
    model: VLModel, images: list[Image.Image], captions: list[str], kind: str, swapped: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradient maps (N, T, P) of each caption on its image, and (for `peak_stability`) on the previous image: a
    second pass, as a word's gradient depends on the image it meets."""
    maps = model_gradient_maps(model, images, captions, kind)
    if not swapped or len(images) < 2:
        return maps, None
    return maps, model_gradient_maps(model, images[-1:] + images[:-1], captions, kind)  # caption n on image n - 1


def pamr_scene_maps(
    model: VLModel, images: list[Image.Image], captions: list[str], swapped: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NACLIP's maps (N, T, P) refined by PAMR with the pixels each caption is drawn on (for `peak_stability`, when
    `swapped`, the previous image's). Only the tokens up to the last real one of any caption are refined."""
    maps, previous = model_scene_maps(model, images, captions, "naclip", swapped)
    encoding = model.encode_pairs(images, captions)
    used = encoding.tokens.used_length
    refined = []
    for drawn, seen in ((maps, images), (previous, images[-1:] + images[:-1])):
        if drawn is not None and used:
            start = 0
            for part in batches(seen, PAMR_BATCH):
                rows = slice(start, start + len(part))
                with torch.inference_mode():
                    pixels = model.pixels(part).float().cpu()
                    drawn[rows, :used] = refine_patch_maps(drawn[rows, :used], pixels, encoding.grid_size)
                start += len(part)
        refined.append(drawn)
    return refined[0], refined[1]


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

    The generator records them as it words each caption (`SceneBatch.colour_word`, `shape_word`), so
    they hold for every caption style, not only for the template's fixed word positions.
    """
    return {"colour": torch.tensor(scenes.colour_word), "shape": torch.tensor(scenes.shape_word)}


def scored_words(target: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: which objects' words are scored, (N, K) word indices and (N, T) `TokenLayout.word_index` in.

    An empty slot has no word (-1), and a caption cut at the context length loses its last words: only
    words that kept a token count.
    """
    return (target >= 0) & (word_index[:, None, :] == target[..., None]).any(-1)


def named_maps(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Word maps (N, W, P) -> the maps (N, K, P) of the words naming each object (`scene_word_positions`).

    Empty slots and words past W get some word's map; `scored_words` leaves them out.
    """
    return maps.gather(1, target.clamp(0, maps.shape[1] - 1)[..., None].expand(-1, -1, maps.shape[-1]))


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


def word_hits(word_map: torch.Tensor, inside: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each word's map lands, per word (N, K): what `word_figures` averages, kept apart so that scores
    gathered in batches (`vlviz.grounding.annotations`) are averaged once, over every word.

    Args:
        word_map: (N, K, P) the map of the word naming object k.
        inside: (N, K, P) bool, each object's patches (none for empty slots); a patch may lie in two objects.

    Returns (N, K) each: hit (float, the peak patch lies in the named object), mass (the share of the map's
    positive mass inside it), chance (the share of patches inside it), on_object (bool, the peak lies in
    some object) and object_chance (1 / the objects of the word's row).
    """
    k = inside.shape[1]
    peak = word_map.argmax(dim=-1)  # (N, K words)
    # (N, K objects, K words): whether object o covers the peak patch of word w
    at_peak = inside.gather(-1, peak[:, None, :].expand(-1, k, -1))
    positive = word_map.clamp_min(0)
    objects = inside.any(dim=-1).sum(dim=-1, keepdim=True).clamp_min(1)  # (N, 1)
    return {
        "hit": at_peak.diagonal(dim1=1, dim2=2).float(),
        "mass": (positive * inside).sum(-1) / positive.sum(-1).clamp_min(torch.finfo(positive.dtype).tiny),
        "chance": inside.float().mean(-1),
        "on_object": at_peak.any(dim=1),
        "object_chance": (1 / objects).expand(-1, k),
    }


def word_figures(hits: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, float]:
    """`pointing_and_mass`'s and `object_level_scores`'s figures from `word_hits` over the valid words (any shape)."""
    return pointing_figures(hits, valid) | object_level_figures(hits, valid)


def pointing_figures(hits: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, float]:
    """Pointing game, mass in mask and chance: `word_hits` averaged over the valid words, and their count."""
    words = int(valid.sum())
    scores = {
        name: float(hits[key][valid].mean()) if words else float("nan")
        for name, key in (("pointing_game", "hit"), ("mass_in_mask", "mass"), ("chance", "chance"))
    }
    return scores | {"words": words}


def object_level_figures(hits: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, float]:
    """Object chance, object accuracy and words on an object (`object_level_scores`) from `word_hits`."""
    on_object = hits["on_object"] & valid
    landed = int(on_object.sum())
    return {
        "object_chance": float(hits["object_chance"][valid].mean()) if valid.any() else float("nan"),
        "object_accuracy": float(hits["hit"][on_object].mean()) if landed else float("nan"),
        "on_object": landed,
    }


def pointing_and_mass(word_map: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Pointing-game accuracy, mass in mask and chance over the valid words.

    Args:
        word_map: (N, K, P) the map of the word naming object k.
        inside: (N, K, P) bool, the object's patches.
        valid: (N, K) bool, which (scene, object) words to score.
    """
    return pointing_figures(word_hits(word_map, inside), valid)


def object_level_scores(word_map: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Does a word whose peak patch lies on an object pick the object it names? Object-level chance and accuracy.

    Patch-level chance is low because objects are small; a map that merely finds objects, which stand
    out from the background, beats it without knowing a word. Counting only the words that land on an
    object, and comparing with picking one of the scene's objects at random, takes that away.

    Args:
        word_map: (N, K, P) the map of the word naming object k.
        inside: (N, K, P) bool, each object's patches (none for empty slots); a patch may lie in two objects.
        valid: (N, K) bool, which (scene, object) words to score.

    Returns:
        object_chance: the mean over valid words of 1 / (objects in the word's scene);
        object_accuracy: among valid words whose peak patch lies inside some object, the share inside
        the named one (NaN when there is none);
        on_object: how many valid words have their peak patch inside some object.
    """
    return object_level_figures(word_hits(word_map, inside), valid)


def pointing_by_naming_order(
    word_map: torch.Tensor, inside: torch.Tensor, valid: torch.Tensor, target: torch.Tensor
) -> list[float]:
    """Pointing-game accuracy by the word's place among its caption's scored words of its class: [first, second, ...].

    The diagnostic that exposed the text side (issue 23): a causal text tower carries the first-named words into
    later tokens, so a contextual token of the second-named colour points at the first-named object. Tokens that
    hold one word each point alike whatever their order. (N, K, P), (N, K, P), (N, K) bool and (N, K) word
    indices in; NaN for a place no caption has.
    """
    hit = word_hits(word_map, inside)["hit"]  # (N, K)
    index = torch.where(valid, target, torch.iinfo(target.dtype).max)  # unscored words sort last
    order = (index[:, None, :] < index[:, :, None]).sum(-1)  # (N, K): scored words named before this one
    return [float(hit[valid & (order == place)].mean()) if (valid & (order == place)).any() else float("nan")
            for place in range(target.shape[1])]  # fmt: skip


def peak_stability(word_map: torch.Tensor, swapped_map: torch.Tensor, valid: torch.Tensor) -> float:
    """Share of the valid words whose peak patch stays put when their caption meets another scene's image.

    The diagnostic of a map that ignores the image: a dual encoder's tokens do not depend on the image,
    so pairing each caption's tokens with the next scene's patches changes only the image. A map that
    follows the objects moves with them (near 0 on scenes whose objects are placed at random); one that
    ties each word position to a fixed place in every image stays (1). (N, K, P), (N, K, P), (N, K) in.
    """
    if not valid.any():
        return float("nan")
    same = word_map.argmax(dim=-1) == swapped_map.argmax(dim=-1)  # (N, K)
    return float(same[valid].float().mean())


def blank_peak_share(blank_map: torch.Tensor, valid: torch.Tensor) -> float:
    """Share of the valid words whose map on a blank scene peaks on the one patch most of them peak on.

    With nothing to point at, a map that reads the pixels spreads its peaks over the grid (1 / P each at
    best); a map tied to positions, or to a patch the tower favours, sends most peaks to one patch. (N, K, P)
    maps of each named word on the blank scene and (N, K) bool in; NaN with no valid word.
    """
    peaks = blank_map.argmax(dim=-1)[valid]
    if peaks.numel() == 0:
        return float("nan")
    return float(torch.bincount(peaks, minlength=blank_map.shape[-1]).max() / peaks.numel())


def scene_grounding_score(
    encoding: PairEncoding,
    scenes: SceneBatch,
    kinds: list[str] | None = None,
    min_cover: float = MIN_COVER,
    token_maps: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    blank_patches: torch.Tensor | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores per map kind and word class: {kind: {"colour": {...}, "shape": {...}}}.

    `blank_patches` (1, P, D), the patch embeddings of a scene with no object (`blank_scene`), adds each
    encoding-based kind's `blank_peak_share`.

    Each holds `pointing_and_mass`'s and `object_level_scores`'s figures. `encoding` holds the scenes'
    own images and captions, in order. A word cut off by the model's context length is not scored.
    `token_maps` gives a kind's (N, T, P) maps and those on the previous scene's image (or None) where
    the encoding cannot make them (`occlusion_scene_maps`). Raises ValueError for towers without patch tokens.
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
    given = token_maps or {}
    for kind in kinds:  # a handful of map kinds; each is batched over scenes, objects and patches
        if kind in given:
            drawn, on_previous = given[kind]
        else:  # every caption also against the previous scene's image (`peak_stability`); one scene has no other
            drawn = grounding_maps(tokens, patches, kind)
            on_previous = grounding_maps(tokens, patches.roll(1, dims=0), kind) if len(scenes) > 1 else None
        maps = word_maps(drawn.to(word_index.device), word_index)  # (N, W, P)
        swapped = None if on_previous is None else word_maps(on_previous.to(word_index.device), word_index)
        blank = None
        if blank_patches is not None and kind not in given:
            blank = word_maps(grounding_maps(tokens, blank_patches.float().expand_as(patches), kind), word_index)
        scores[kind] = {}
        for name, target in targets.items():
            picked, valid = named_maps(maps, target).cpu(), scored_words(target, word_index).cpu()
            scores[kind][name] = word_figures(word_hits(picked, inside), valid)
            by_order = pointing_by_naming_order(picked, inside, valid, target.cpu())
            scores[kind][name] |= {f"pointing_named_{place}": value for place, value in enumerate(by_order, start=1)}
            stable = (
                float("nan") if swapped is None else peak_stability(picked, named_maps(swapped, target).cpu(), valid)
            )
            scores[kind][name]["peak_stability"] = stable
            if blank is not None:
                scores[kind][name]["blank_peak_share"] = blank_peak_share(named_maps(blank, target).cpu(), valid)
    return scores


def score_scenes(
    model: VLModel, scenes: SceneBatch, kinds: list[str] | None = None, min_cover: float = MIN_COVER
) -> dict[str, dict[str, dict[str, float]]]:
    """Encode `scenes` with `model` and score its grounding maps (see `scene_grounding_score`); occlusion too if asked."""
    images = scenes.pil_images()
    given = {
        kind: model_scene_maps(model, images, scenes.captions, kind) for kind in kinds or [] if kind in MODEL_KINDS
    }
    blank = Image.fromarray(blank_scene(scenes.images.shape[1]))
    blank_patches = model.encode_pairs([blank], scenes.captions[:1]).patch_features
    encoding = model.encode_pairs(images, scenes.captions)
    return scene_grounding_score(encoding, scenes, kinds, min_cover, given, blank_patches)


def untrained_model(model: VLModel, seed: int = UNTRAINED_SEED) -> VLModel:
    """`model`'s architecture freshly initialised with `seed`: the baseline a trained model's grounding must beat.

    Same open_clip config, model class, device, dtypes, preprocessing and tokenizer; no pretrained tower
    weights are fetched and the global random state is left as it was. Raises ValueError when the
    architecture config is unknown.
    """
    if model.model_cfg is None:
        raise ValueError(f"{model.name}: its architecture config is unknown, so no untrained copy can be built.")
    config = copy.deepcopy(model.model_cfg)
    config.pop("custom_text", None)  # open_clip's factory flag, not a model argument: the class is `model`'s own
    if "hf_model_name" in config["text_cfg"]:
        config["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in config["vision_cfg"]:
        config["vision_cfg"]["timm_model_pretrained"] = False
    # open_clip's cast_dtype: the half precision it loaded some weights in (its layer norms then compute in fp32)
    half = model.dtype if model.dtype in (torch.float16, torch.bfloat16) else None  # see `towers.input_dtype`
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model.model)(**config, cast_dtype=half)
    dtypes = {name: tensor.dtype for name, tensor in model.model.state_dict().items()}
    for name, tensor in [*fresh.named_parameters(), *fresh.named_buffers()]:
        tensor.data = tensor.data.to(model.device, dtypes.get(name, tensor.dtype))  # as open_clip loaded `model`
    fresh.visual.preprocess_cfg = getattr(model.model.visual, "preprocess_cfg", {})
    set_token_readout(fresh, token_readout(model.model))  # the twin reads its maps where the model does
    return VLModel(
        spec=model.spec, model=fresh.eval(), preprocess=model.preprocess, tokenizer=model.tokenizer,
        device=model.device, model_cfg=model.model_cfg, name=f"{model.name} (untrained, seed {seed})",
    )  # fmt: skip


def select_pairs(encoding: PairEncoding, rows: list[int]) -> PairEncoding:
    """The pairs at `rows` of an encoding, in that order."""
    index = torch.as_tensor(rows, dtype=torch.long)
    layout = encoding.tokens
    tokens = TokenLayout(
        ids=layout.ids[index], word_mask=layout.word_mask[index], word_index=layout.word_index[index],
        tokens=[layout.tokens[i] for i in rows], words=[layout.words[i] for i in rows],
    )  # fmt: skip
    on_device = {
        name: None if value is None else value[index.to(value.device)]
        for name, value in (
            ("image_features", encoding.image_features), ("text_features", encoding.text_features),
            ("patch_features", encoding.patch_features), ("token_features", encoding.token_features),
        )
    }  # fmt: skip
    cut = set(encoding.truncated)
    return replace(encoding, **on_device, tokens=tokens, truncated=[i for i, row in enumerate(rows) if row in cut])


_UNTRAINED_BUNDLED: dict[tuple, PairEncoding] = {}
_UNTRAINED_MODELS: dict[tuple, VLModel] = {}  # the newest few, oldest first
MAX_UNTRAINED_MODELS = 2  # an untrained copy weighs what its model weighs
_UNTRAINED_LOCK = threading.Lock()


def _architecture_key(model: VLModel) -> tuple:
    return (
        type(model.model).__name__, json.dumps(model.model_cfg, sort_keys=True), str(model.device),
        str(model.dtype), preprocess_stats(model.model), token_readout(model.model),
    )  # fmt: skip


def shared_untrained_model(model: VLModel) -> VLModel:
    """`untrained_model(model)`, built once per architecture and device and kept for the next call.

    The Grounding tab compares a model with its untrained twin on every click; building one costs
    about a second for a ViT-B. At most `MAX_UNTRAINED_MODELS` are kept, the oldest dropped first.
    """
    key = _architecture_key(model)
    with _UNTRAINED_LOCK:  # held while building, so that concurrent first calls build once
        if key not in _UNTRAINED_MODELS:
            _UNTRAINED_MODELS[key] = untrained_model(model)
            while len(_UNTRAINED_MODELS) > MAX_UNTRAINED_MODELS:
                _UNTRAINED_MODELS.pop(next(iter(_UNTRAINED_MODELS)))
        return _UNTRAINED_MODELS[key]


def untrained_bundled_encoding(model: VLModel) -> PairEncoding:
    """The encoding of every bundled scene by `untrained_model(model)`, built once per architecture and device.

    The Grounding tab shows the untrained baseline beside each score; building a model and encoding the
    scenes on every call would cost seconds, while scoring a cached encoding costs milliseconds.
    """
    key = _architecture_key(model)
    fresh = shared_untrained_model(model)
    with _UNTRAINED_LOCK:  # held while encoding, so that concurrent first calls encode once
        if key not in _UNTRAINED_BUNDLED:
            scenes, _ = bundled_scenes()
            _UNTRAINED_BUNDLED[key] = fresh.encode_pairs(scenes.pil_images(), scenes.captions)
        return _UNTRAINED_BUNDLED[key]


@dataclass(frozen=True)
class BundledScore:
    """A model's grounding score on the loaded pairs that are bundled scenes, beside the untrained baseline."""

    scores: dict[str, dict[str, float]]  # per word class, as `scene_grounding_score`
    untrained: dict[str, dict[str, float]]  # the same for `untrained_model(model)` on the same scenes and words
    scenes: int  # how many pairs were scored


def bundled_rows(pairs: PairSet) -> tuple[list[int], list[int]]:
    """The rows of `pairs` that are bundled sample scenes (same pixels and caption), and their scenes' rows."""
    scenes, keys = bundled_scenes()
    found = [(i, keys.get(content_key(image))) for i, image in enumerate(pairs.images)]
    matched = [(i, j) for i, j in found if j is not None and pairs.captions[i] == scenes.captions[j]]
    return [i for i, _ in matched], [j for _, j in matched]


def bundled_scene_score(model: VLModel, pairs: PairSet, kind: str = "sparc") -> BundledScore | None:
    """The grounding score of `model` on the pairs that are bundled sample scenes (same pixels and caption),
    and that of the untrained model of its architecture; None when no pair is a bundled scene."""
    rows, truth = bundled_rows(pairs)
    if not rows:
        return None
    scenes, _ = bundled_scenes()
    images, captions = [pairs.images[i] for i in rows], [pairs.captions[i] for i in rows]
    encoding = model.encode_pairs(images, captions)
    picked = select_scenes(scenes, list(truth))
    untrained = select_pairs(untrained_bundled_encoding(model), list(truth))
    given = untrained_given = None
    if kind in MODEL_KINDS:  # the score shows no peak stability, so the maps on other images are not made
        given = {kind: model_scene_maps(model, images, captions, kind, swapped=False)}
        fresh = shared_untrained_model(model)
        untrained_given = {kind: model_scene_maps(fresh, images, captions, kind, swapped=False)}
    return BundledScore(
        scores=scene_grounding_score(encoding, picked, kinds=[kind], token_maps=given)[kind],
        untrained=scene_grounding_score(untrained, picked, kinds=[kind], token_maps=untrained_given)[kind],
        scenes=len(rows),
    )


def xmm_word_attention(model: VLModel, image: Image.Image, caption: str) -> WordAttention | None:
    """Where the model's trained XMM fusion head looks for each word of `caption` when it is masked.

    None when the model has no trained XMM head (`VLModel.loss_heads`, saved beside a checkpoint).
    """
    xmm = model.loss_heads.get("xmm")
    if xmm is None:
        return None
    return masked_word_attention(xmm, model.model, model.tokenizer, model.pixels([image]), caption)


def maps_by_kind(
    model: VLModel, pairs: PairSet, row: int, kinds: list[str]
) -> tuple[dict[str, CaptionMaps], dict[str, float | None]]:
    """Pair `row`'s caption maps by each of `kinds` that `model` can draw, and each kind's colour-word pointing game
    on the bundled scenes among `pairs` (None when none is one): one model's side of the talk's grounding step.

    A kind the model cannot draw (a dense method on a model read before any block, Grad-ECLIP on an averaging
    tower) is left out rather than failing the whole step.
    """
    maps: dict[str, CaptionMaps] = {}
    for kind in kinds:  # a handful of kinds, each batched over patches and words
        try:
            maps[kind] = model_caption_maps(model, pairs.images[row], pairs.captions[row], kind)
        except ValueError:
            continue
    return maps, bundled_pointing(model, pairs, list(maps))


POINTING_CACHE_ENTRIES = 64  # (kind, scenes) scores kept per model: a float each
_POINTING: weakref.WeakKeyDictionary[VLModel, OrderedDict[tuple[str, tuple[int, ...]], float]] = (
    weakref.WeakKeyDictionary()
)  # a model's scores go with it
_POINTING_LOCK = threading.Lock()


def bundled_pointing(model: VLModel, pairs: PairSet, kinds: list[str]) -> dict[str, float | None]:
    """Each kind's colour-word pointing game on the bundled scenes among `pairs` (None for every kind when none is
    one), the model's own score only: the titles of the talk's step 4 and the Grounding tab's every-method view.

    Kept per model, kind and set of scenes (`POINTING_CACHE_ENTRIES`, least recently used dropped first), so
    that moving between words, or a second visitor on the same model, does not score the scenes again: the
    occlusion and gradient kinds take a tower pass per patch or token. Raises ValueError for a kind `model`
    cannot draw.
    """
    rows, truth = bundled_rows(pairs)
    if not rows:
        return dict.fromkeys(kinds)
    scenes_key = tuple(truth)
    with _POINTING_LOCK:
        kept = _POINTING.setdefault(model, OrderedDict())
        found = {kind: kept[(kind, scenes_key)] for kind in kinds if (kind, scenes_key) in kept}
        for kind in found:
            kept.move_to_end((kind, scenes_key))
    missing = [kind for kind in kinds if kind not in found]
    if missing:  # scored outside the lock: two first calls may both score, and agree
        images, captions = [pairs.images[i] for i in rows], [pairs.captions[i] for i in rows]
        scenes = select_scenes(bundled_scenes()[0], truth)
        encoding = model.encode_pairs(images, captions)
        given = {k: model_scene_maps(model, images, captions, k, swapped=False) for k in missing if k in MODEL_KINDS}
        scores = scene_grounding_score(encoding, scenes, kinds=missing, token_maps=given)
        with _POINTING_LOCK:
            kept = _POINTING.setdefault(model, OrderedDict())
            for kind in missing:
                found[kind] = kept[(kind, scenes_key)] = scores[kind]["colour"]["pointing_game"]
            while len(kept) > POINTING_CACHE_ENTRIES:
                kept.popitem(last=False)
    return {kind: found[kind] for kind in kinds}
