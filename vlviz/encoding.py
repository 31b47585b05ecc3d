"""Encode images and captions with an open_clip model, batched and cached by content.

`VLModel` wraps an open_clip model with its preprocessing and tokenizer. Every image and caption is
encoded at most once per model: results are kept in a content-addressed cache (a hash of the
pixels or of the text), so switching views never re-runs the model on inputs it has seen.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import VisionTransformer
from PIL import Image

from vlviz.tokens import TokenLayout, token_layout

CACHE_ENTRIES = 4096
ENCODE_BATCH = 64


def this_thread_only(hook: Callable[..., object]) -> Callable[..., object]:
    """A module hook that acts only on passes made by the thread that created it.

    Models are cached and shared by every session, and each request runs in its own thread; a hook
    left on a model for the length of one pass would otherwise see (or change) the passes other
    sessions make at the same time. Elsewhere it returns None: inputs and outputs stay as they are.
    """
    owner = threading.get_ident()

    def guarded(*args: object, **kwargs: object) -> object:
        return hook(*args, **kwargs) if threading.get_ident() == owner else None

    return guarded


@dataclass(frozen=True)
class PairEncoding:
    """Everything vlviz's views need about N image-caption pairs, in the model's joint space.

    Global features are L2-normalised; patch and token features are projected into the joint space
    (``visual.proj`` / ``text_projection`` applied to the final-norm tokens, as SPARC needs them)
    but not normalised. Patch and token fields are None for towers without them, with the reason
    in `patches_unavailable`.
    """

    image_features: torch.Tensor  # (N, D)
    text_features: torch.Tensor  # (N, D)
    patch_features: torch.Tensor | None  # (N, P, D), P = grid_size[0] * grid_size[1]
    grid_size: tuple[int, int] | None
    token_features: torch.Tensor | None  # (N, T, D)
    tokens: TokenLayout  # ids, word mask, readable strings
    logit_scale: float
    logit_bias: float | None
    truncated: list[int] = field(default_factory=list)  # captions cut at the context length
    patches_unavailable: str | None = None


def content_key(item: Image.Image | str) -> str:
    """A hash of an image's pixels (with size and mode) or of a caption's text."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(item, str):
        digest.update(b"text:" + item.encode("utf-8"))
    else:
        digest.update(f"image:{item.mode}:{item.size}".encode())
        digest.update(item.tobytes())
    return digest.hexdigest()


class _LRU:
    """A small thread-safe least-recently-used map from content keys to tensors."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class VLModel:
    """An open_clip model ready for analysis: preprocessing, tokenizer, device and caches."""

    def __init__(
        self,
        spec: str,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        device: torch.device,
        model_cfg: dict | None = None,
        name: str | None = None,
    ) -> None:
        self.spec = spec
        self.name = name or spec  # what views and messages call it (a session's run name, not its folder)
        self.model_cfg = model_cfg  # the open_clip architecture config, saved with trained checkpoints
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self._image_cache = _LRU(CACHE_ENTRIES)
        self._text_cache = _LRU(CACHE_ENTRIES)

    # --- properties -------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach().float().item())

    @property
    def grid_size(self) -> tuple[int, int] | None:
        if _image_projection(self.model) is None:
            return None
        return tuple(self.model.visual.grid_size)  # type: ignore[return-value]

    @property
    def patches_unavailable(self) -> str | None:
        if _image_projection(self.model) is None:
            kind = type(self.model.visual).__name__
            return f"the image tower ({kind}) has no projectable patch tokens; only ViT towers have them"
        return None

    # --- public encoding ----------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised global image embeddings, (N, D), on the model's device."""
        return self._encode(list(images), self._image_cache, self._forward_images)[0]

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised global text embeddings, (N, D), on the model's device."""
        return self._encode(list(texts), self._text_cache, self._forward_texts)[0]

    def encode_pairs(self, images: Sequence[Image.Image], captions: Sequence[str]) -> PairEncoding:
        """Global, patch and token embeddings of N image-caption pairs (see `PairEncoding`)."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions: give one caption per image.")
        if not images:
            raise ValueError("No pairs to encode.")
        image_features, patch_features = self._encode(list(images), self._image_cache, self._forward_images)
        text_features, token_features = self._encode(list(captions), self._text_cache, self._forward_texts)
        layout = token_layout(self.tokenizer, list(captions))
        return PairEncoding(
            image_features=image_features,
            text_features=text_features,
            patch_features=patch_features,
            grid_size=self.grid_size,
            token_features=token_features,
            tokens=layout,
            logit_scale=self.logit_scale,
            logit_bias=self.logit_bias,
            truncated=self.truncated_captions(captions),
            patches_unavailable=self.patches_unavailable,
        )

    def truncated_captions(self, captions: Sequence[str]) -> list[int]:
        """Indices of captions longer than the context length (the tokenizer cuts them)."""
        if isinstance(self.tokenizer, SimpleTokenizer):
            limit = self.context_length - 2  # start and end tokens
            return [i for i, c in enumerate(captions) if len(self.tokenizer.encode(c)) > limit]
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is None:
            return []
        lengths = [len(ids) for ids in inner(list(captions))["input_ids"]]
        return [i for i, n in enumerate(lengths) if n > self.context_length]

    # --- internals ----------------------------------------------------------------------------
    def _encode(
        self,
        items: list,
        cache: _LRU,
        forward: Callable[[list], tuple[torch.Tensor, torch.Tensor | None]],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Look every item up by content; run `forward` once per batch of the missing ones."""
        keys = [content_key(item) for item in items]
        found = {key: cache.get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            first_item = {key: item for key, item in zip(keys, items)}
            for start in range(0, len(missing), ENCODE_BATCH):
                chunk = missing[start : start + ENCODE_BATCH]
                features, tokens = forward([first_item[key] for key in chunk])
                for row, key in enumerate(chunk):
                    value = (features[row], None if tokens is None else tokens[row])
                    cache.put(key, value)
                    found[key] = value
        rows = [found[key] for key in keys]
        features = torch.stack([row[0] for row in rows])
        tokens = None if rows[0][1] is None else torch.stack([row[1] for row in rows])
        return features, tokens

    @torch.inference_mode()
    def _forward_images(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = torch.stack([self.preprocess(image) for image in images])
        return image_embeddings(self.model, pixels.to(self.device, self.dtype, non_blocking=True))

    @torch.inference_mode()
    def _forward_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return text_embeddings(self.model, self.tokenizer(texts).to(self.device))


def image_embeddings(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised global image embeddings (B, D) and projected patch embeddings (B, P, D) or None.

    One tower pass: the final-norm patch tokens (what open_clip's `output_tokens` returns) times
    `visual.proj`. Differentiable, so the trainer's token-level losses use it too.
    """
    projection = _image_projection(model)
    if projection is None:
        return F.normalize(model.encode_image(pixels), dim=-1), None
    out = model.visual.forward_intermediates(pixels, indices=1, normalize_intermediates=True, output_fmt="NLC")
    patches = out["image_intermediates"][-1] @ projection  # (B, P, D)
    return F.normalize(out["image_features"], dim=-1), patches


def text_embeddings(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised global text embeddings (B, D) and projected token embeddings (B, T, D) or None."""
    projection = _text_projection(model)
    if projection is None:
        return F.normalize(model.encode_text(ids), dim=-1), None
    out = model.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True)
    tokens = out["text_intermediates"][-1]  # (B, T, W) after ln_final
    tokens = projection(tokens) if isinstance(projection, torch.nn.Module) else tokens @ projection
    return out["text_features"], tokens  # forward_intermediates already L2-normalised text_features


def _image_projection(model: torch.nn.Module) -> torch.Tensor | None:
    """`visual.proj` of a ViT tower: maps final-norm patch tokens into the joint space."""
    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer) and visual.proj is not None and visual.attn_pool is None:
        return visual.proj
    return None


def _text_projection(model: torch.nn.Module) -> torch.Tensor | torch.nn.Module | None:
    """The text projection of a CLIP text transformer (built into CLIP or in CustomTextCLIP.text)."""
    if hasattr(model, "text_projection") and getattr(model, "token_embedding", None) is not None:
        return model.text_projection
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "text_projection") and getattr(text, "cls_emb", None) is None:
        return text.text_projection
    return None
