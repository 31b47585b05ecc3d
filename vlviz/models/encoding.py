"""Encode images and captions with an open_clip model, batched and cached by content.

`VLModel` wraps an open_clip model with its preprocessing and tokenizer. Every image and caption is
encoded at most once per model: results are kept in a content-addressed cache (a hash of the
pixels or of the text), so switching views never re-runs the model on inputs it has seen.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from vlviz.data.inputs import PairSet, decoded_bytes
from vlviz.data.keys import content_key
from vlviz.models.tokens import TokenLayout, token_layout
from vlviz.models.towers import (
    grid_size,
    image_projection,
    input_dtype,
    patches_unavailable,
    preprocess_stats,
    text_projection,
    token_embedding,
    token_readout,
)
from vlviz.models.towers import (
    logit_bias as bias_of,
)

CACHE_ENTRIES = 4096
CACHE_BYTES = 256 * 2**20
"""Most bytes each of a model's caches (images, captions; `vlviz.grounding.occlusion`'s maps) keeps: ViT-B-16's patch tokens are 0.4 MB
an image, so 4,096 of them alone would take 1.6 GB of a server shared by every visitor."""
ENCODE_BATCH = 64
T = TypeVar("T")


def batches(items: Sequence[T], size: int = ENCODE_BATCH) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`: one tower pass each, so memory stays bounded."""
    return (items[start : start + size] for start in range(0, len(items), size))


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


def _nbytes(value: torch.Tensor | tuple[torch.Tensor | None, ...]) -> int:
    tensors = value if isinstance(value, tuple) else (value,)
    return sum(t.nbytes for t in tensors if t is not None)


class TensorCache:
    """A small thread-safe least-recently-used map from content keys to tensors, bounded in entries and bytes."""

    def __init__(self, capacity: int, max_bytes: int = CACHE_BYTES) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += _nbytes(value) - (_nbytes(old) if old is not None else 0)
            self._items[key] = value
            while self._items and (len(self._items) > self.capacity or self._bytes > self.max_bytes):
                self._bytes -= _nbytes(self._items.popitem(last=False)[1])


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
        loss_heads: dict[str, torch.nn.Module] | None = None,
    ) -> None:
        self.spec = spec
        self.name = name or spec  # what views and messages call it (a session's run name, not its folder)
        self.model_cfg = model_cfg  # the open_clip architecture config, saved with trained checkpoints
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        # Trained loss heads saved beside a checkpoint (`vlviz.models.checkpoints`), e.g. "psl", "xmm"; loaded once.
        self.loss_heads = loss_heads or {}
        self.dtype = input_dtype(model)
        self._image_cache = TensorCache(CACHE_ENTRIES)
        self._text_cache = TensorCache(CACHE_ENTRIES)

    # --- properties -------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def logit_bias(self) -> float | None:
        bias = bias_of(self.model)
        return None if bias is None else float(bias.detach().float().item())

    @property
    def grid_size(self) -> tuple[int, int] | None:
        return grid_size(self.model)

    @property
    def patches_unavailable(self) -> str | None:
        return patches_unavailable(self.model)

    def input_image(self, image: Image.Image) -> np.ndarray:
        """The image as the model sees it (its preprocessing's resize and crop), (H, W, 3) uint8 at the input size."""
        return input_image(self.preprocess(image), *preprocess_stats(self.model))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) the images as the model takes them: preprocessed, on its device, in its dtype."""
        return torch.stack([self.preprocess(image) for image in images]).to(self.device, self.dtype, non_blocking=True)

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

    def encoded_bytes(self, pairs: int) -> int:
        """The bytes `encode_pairs` returns for this many pairs (global, patch and token features), known before
        encoding them: a server checks its memory budget first (one caption is encoded once to learn the width)."""
        probe = self.encode_texts(["a"])
        patches = math.prod(self.grid_size) if self.grid_size and self.patches_unavailable is None else 0
        tokens = self.context_length if self.patches_unavailable is None else 0
        return pairs * probe.shape[-1] * probe.element_size() * (2 + patches + tokens)

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
        cache: TensorCache,
        forward: Callable[[list], tuple[torch.Tensor, torch.Tensor | None]],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Look every item up by content; run `forward` once per batch of the missing ones."""
        keys = [content_key(item) for item in items]
        found = {key: cache.get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            first_item = {key: item for key, item in zip(keys, items)}
            for chunk in batches(missing):
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
        return image_embeddings(self.model, self.pixels(images))

    @torch.inference_mode()
    def _forward_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return text_embeddings(self.model, self.tokenizer(texts).to(self.device))


@dataclass(frozen=True, eq=False)
class EncodedPairs:
    """A pair set and its encoding by one model: what Analyze keeps in the session and every view reads.

    Compared and hashed by identity (`eq=False`): Gradio hashes session state to see that a new analysis
    arrived, and the pairs' images and tensors have no hash of their own.
    """

    pairs: PairSet
    encoding: PairEncoding
    model_name: str  # what views call the model (`VLModel.name`)
    notices: list[str]  # the pairs' notices, and each caption cut at the model's context length
    serial: int = field(default_factory=itertools.count(1).__next__)  # which analysis of this process it is

    @property
    def nbytes(self) -> int:
        """What holding this analysis costs: its decoded images and its feature tensors (a server's memory budget)."""
        images = sum(decoded_bytes(*image.size) for image in self.pairs.images)  # every kept image is RGB
        encoding = self.encoding
        tensors = (encoding.image_features, encoding.text_features, encoding.patch_features, encoding.token_features)
        return images + sum(t.nbytes for t in tensors if t is not None)

    @property
    def image_features(self) -> torch.Tensor:
        return self.encoding.image_features

    @property
    def text_features(self) -> torch.Tensor:
        return self.encoding.text_features


def encode_pair_set(model: VLModel, pairs: PairSet) -> EncodedPairs:
    """Encode every pair once (global, patch and token embeddings), with the notices worth showing."""
    encoding = model.encode_pairs(pairs.images, pairs.captions)
    truncated = [
        f"Caption {i + 1} ({pairs.names[i]}) is longer than the model's {model.context_length} tokens and was truncated."
        for i in encoding.truncated
    ]
    return EncodedPairs(pairs, encoding, model.name, [*pairs.notices, *truncated])


def global_embeddings(
    model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised global image (B, D) and text (B, D) embeddings, open_clip's own pass without intermediates:
    what a view or a loss that needs no patch or token embeddings reads (and the only thing a ResNet gives)."""
    return F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(ids), dim=-1)


def image_embeddings(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised global image embeddings (B, D) and projected patch embeddings (B, P, D) or None.

    One tower pass: the patch tokens where the model reads them (`towers.token_readout`: after the last
    block by default, open_clip's `output_tokens`) through `ln_post`, times `visual.proj`. Differentiable,
    so the trainer's token-level losses use it too.
    """
    projection = image_projection(model)
    if projection is None:
        return F.normalize(model.encode_image(pixels), dim=-1), None
    visual, blocks = model.visual, token_readout(model).image_blocks
    if blocks == 0:  # the tokens entering the first block: open_clip's embedding step, then the global pass
        patches = visual.ln_post(visual._embeds(pixels)[:, 1:]) @ projection
        return F.normalize(model.encode_image(pixels), dim=-1), patches
    indices = 1 if blocks is None else [blocks - 1]  # the last block's output, or block `blocks`'s
    out = visual.forward_intermediates(pixels, indices=indices, normalize_intermediates=True, output_fmt="NLC")
    patches = out["image_intermediates"][-1] @ projection  # (B, P, D)
    return F.normalize(out["image_features"], dim=-1), patches


def text_embeddings(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised global text embeddings (B, D) and projected token embeddings (B, T, D) or None.

    The tokens are read where the model reads them (`towers.token_readout`), through `ln_final`; read before
    any block, each token holds its own word alone (the causal tower has not yet carried earlier words in).
    """
    projection = text_projection(model)
    if projection is None:
        return F.normalize(model.encode_text(ids), dim=-1), None
    blocks = token_readout(model).text_blocks
    if blocks == 0:  # token embedding + position, as open_clip's encode_text builds the first block's input
        embedded = token_embedding(model)(ids) + model.positional_embedding
        tokens, features = model.ln_final(embedded), F.normalize(model.encode_text(ids), dim=-1)
    else:
        indices = 1 if blocks is None else [blocks - 1]
        out = model.forward_intermediates(text=ids, text_indices=indices, normalize_intermediates=True)
        tokens, features = out["text_intermediates"][-1], out["text_features"]  # tokens (B, T, W) after ln_final
    tokens = projection(tokens) if isinstance(projection, torch.nn.Module) else tokens @ projection
    return features, tokens  # forward_intermediates already L2-normalised text_features


def input_image(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """The (H, W, 3) uint8 image a model sees, from its normalised (3, H, W) input: undoes Normalize."""
    mean_t, std_t = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    image = (pixels.float().cpu() * std_t + mean_t).clamp(0, 1)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
