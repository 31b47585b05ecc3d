"""SIMLA's symmetric cross-modality reconstruction, XMM (Khan et al., ECCV 2022), on top of a dual encoder.

A CLIP model has no fusion encoder, so a small one is added: two stacks of pre-norm blocks
(self-attention, cross-attention to the other modality, MLP; ALBEF/SIMLA's fusion layout), one per
direction, working on the projected token and patch embeddings of the joint space. As a fusion
encoder sees all of a tower's outputs, each side's context starts with the other side's global
embedding, then its patches or tokens.

- Text side (masked language modelling conditioned on the image): 15% of a caption's word tokens
  are chosen; of those 80% become [MASK], 10% a random token, 10% stay (BERT). open_clip's BPE has
  no mask token, so [MASK] is a learned embedding put in place of the token embedding (a forward
  hook on the text tower's `token_embedding`). The masked caption is re-encoded by the text tower,
  the fusion attends from its tokens to the image, and the chosen tokens are predicted
  over a reduced vocabulary: the distinct BPE tokens seen in training captions, each given an
  output slot when first seen (up to `vocabulary_size`; tokens seen after it is full are never
  chosen). A 49,408-way softmax learns far too slowly for a live run.
- Image side: blocks of patches (SIMLA: 75 of 256, blocks of 16 or more; BEiT's block masking)
  are replaced by a learned mask embedding after the patch embedding (`visual.conv1`), the masked
  image is re-encoded, the fusion attends from its patches to the caption, and the masked
  patches' projected embeddings of the unmasked image (stop-gradient) are regressed with a cosine
  loss (SIMLA predicts dVAE codes; regressing features is the simple variant). The targets are
  centred on their image's mean patch by default: the same tower makes the targets, and raw
  targets would reward it for making every patch alike.

Where vlviz departs from SIMLA's code, each a choice with its reason:
- No momentum distillation on either side. SIMLA (after ALBEF) mixes each side's hard targets with
  a momentum model's predictions, which needs EMA copies of both towers and of the fusion head,
  each run forward every step: the model twice in memory and more passes per step than a live
  run on CPUs affords. The text side keeps BERT's hard token targets; the image side's targets
  are already soft features (PSL's EMA covers only its one-layer head, which is cheap).
- The image side attends to the caption's contextual tokens (the text tower's output, projected
  into the joint space), not to embedding-layer tokens: the joint space is where a dual encoder's
  tokens and patches are comparable (SPARC's alignment uses the same ones), and embedding-layer
  tokens would need a new projection learned from scratch.
- No image-text matching (ITM) task: the dual encoder's contrastive loss trains the global
  alignment, and ITM's hard negatives need extra fusion passes per pair. `mlm_accuracy_noise`
  checks instead that the fusion uses the image.
- The masked caption is re-encoded by CLIP's causal text tower, so a masked token's own embedding
  sees only the words before it (SIMLA's BERT sees both sides). The words after it still reach it
  through the fusion's bidirectional self-attention, and a causal tower is what CLIP models have.

Letters in shape comments: B pairs, T tokens, P patches, D joint dimensions, S output slots in use,
M masked tokens of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlviz.losses.base import Loss
from vlviz.models.encoding import image_embeddings, text_embeddings, this_thread_only
from vlviz.models.tokens import TokenLayout, real_token_mask, token_layout
from vlviz.models.towers import grid_size, image_projection, joint_dim, patch_embedding, token_embedding

MASK_PROBABILITY = 0.15  # SIMLA / BERT
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the other 10% stay as they are
IMAGE_MASK_RATIO = 75 / 256  # SIMLA: 75 of 256 patches
MIN_BLOCK = 16 / 256  # SIMLA: blocks of at least 16 patches on a 16 x 16 grid, as a share of the grid
_ASPECT = (0.3, 1 / 0.3)  # BEiT's range of block aspect ratios


# --- masking -------------------------------------------------------------------------------------
def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    replacements: torch.Tensor,
    probability: float = MASK_PROBABILITY,
    mask_share: float = MASK_SHARE,
    random_share: float = RANDOM_SHARE,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking of caption tokens: (B, T) ids -> (new ids, chosen, masked), each (B, T).

    Each maskable token is chosen with `probability`; a caption with maskable tokens but none chosen
    gets one chosen at random, so every caption has something to predict. A chosen token is masked
    (`masked`: its embedding becomes [MASK]; its id stays) with `mask_share`, replaced by a random id
    from `replacements` with `random_share`, and kept otherwise. Random numbers come from
    `generator` (a CPU generator; None: torch's default) and are moved to the ids' device.

    Args:
        ids: token ids.
        maskable: bool, the tokens that may be chosen (real word tokens).
        replacements: (R,) ids a random replacement is drawn from (no start, end or padding ids).
    """
    shape = ids.shape
    chosen_draw, share_draw = torch.rand(2, *shape, generator=generator).to(ids.device)
    maskable = maskable.bool()
    chosen = maskable & (chosen_draw < probability)
    # One token for a caption left without any: the maskable token with the largest draw.
    empty = maskable.any(1) & ~chosen.any(1)  # (B,)
    fallback = torch.zeros_like(chosen).scatter_(1, (chosen_draw * maskable).argmax(1, keepdim=True), True)
    chosen |= fallback & empty[:, None]
    masked = chosen & (share_draw < mask_share)
    randomised = chosen & (share_draw >= mask_share) & (share_draw < mask_share + random_share)
    picks = torch.randint(len(replacements), shape, generator=generator).to(ids.device)
    return torch.where(randomised, replacements.to(ids.device)[picks], ids), chosen, masked


def block_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = IMAGE_MASK_RATIO,
    min_block: float = MIN_BLOCK,
    generator: torch.Generator | None = None,
    rounds: int = 64,
) -> torch.Tensor:
    """BEiT-style block masking, batched: (B, P) bool with round(ratio * P) patches masked per image.

    Each round, every image still short of its count draws a rectangle (area uniform between
    `min_block` of the grid, or what is still missing if less, and what is missing; aspect ratio
    log-uniform in [0.3, 1/0.3]) at a random place, and takes it when its new patches do not
    overshoot the count. After `rounds` rounds an image may stay a little short.
    """
    rows, cols = grid
    target = round(ratio * rows * cols)
    smallest = max(1, round(min_block * rows * cols))
    row_index = torch.arange(rows)[None, :, None]  # (1, rows, 1)
    col_index = torch.arange(cols)[None, None, :]  # (1, 1, cols)
    mask = torch.zeros(batch, rows, cols, dtype=torch.bool)
    for _ in range(rounds):  # rounds over the batch, each one vectorised over the images
        missing = target - mask.sum((1, 2))  # (B,)
        if not (missing > 0).any():
            break
        low = missing.clamp(max=smallest).float()
        area = low + torch.rand(batch, generator=generator) * (missing.float() - low).clamp_min(0)
        aspect = torch.exp(
            math.log(_ASPECT[0]) + torch.rand(batch, generator=generator) * math.log(_ASPECT[1] / _ASPECT[0])
        )
        height = (area * aspect).sqrt().round().long().clamp(1, rows)  # (B,)
        width = (area / aspect).sqrt().round().long().clamp(1, cols)
        top = (torch.rand(batch, generator=generator) * (rows - height + 1)).long()
        left = (torch.rand(batch, generator=generator) * (cols - width + 1)).long()
        top, left = top[:, None, None], left[:, None, None]
        in_rows = (row_index >= top) & (row_index < top + height[:, None, None])  # (B, rows, 1)
        in_cols = (col_index >= left) & (col_index < left + width[:, None, None])  # (B, 1, cols)
        block = in_rows & in_cols  # (B, rows, cols)
        new = (block & ~mask).sum((1, 2))
        take = (new > 0) & (new <= missing)
        mask |= block & take[:, None, None]
    return mask.flatten(1)


@contextmanager
def substituted(module: nn.Module, where: torch.Tensor, value: torch.Tensor) -> Iterator[None]:
    """Within the block, `module`'s output is `value` wherever `where` is True (both broadcast to the output);
    only this thread's passes are changed (the model may be shared with other sessions)."""

    def hook(_: nn.Module, __: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.where(where, value.to(output.dtype), output)

    handle = module.register_forward_hook(this_thread_only(hook))
    try:
        yield
    finally:
        handle.remove()


# --- the fusion head -----------------------------------------------------------------------------
class FusionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the other modality, then an MLP, each residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_self, self.ln_query, self.ln_context, self.ln_mlp = (nn.LayerNorm(width) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        x_padding: torch.Tensor | None = None,
        context_padding: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, Q, D) queries, (B, K, D) context -> (B, Q, D) and the cross-attention (B, Q, K), head-averaged, if asked."""
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=x_padding, need_weights=False)[0]
        c = self.ln_context(context)
        attended, weights = self.cross_attn(
            self.ln_query(x), c, c, key_padding_mask=context_padding, need_weights=need_weights
        )
        x = x + attended
        return x + self.mlp(self.ln_mlp(x)), weights


class Fusion(nn.Module):
    """A stack of `FusionLayer`s; returns the last layer's cross-attention when asked."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(width, heads) for _ in range(layers))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        x_padding: torch.Tensor | None = None,
        context_padding: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x, weights = layer(x, context, x_padding, context_padding, need_weights and last)
        return x, weights


def image_token_sequence(image_features: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
    """What the text side attends to, as a fusion encoder sees a ViT's output: the global embedding, then the patches.

    (B, D), (B, P, D) -> (B, 1 + P, D). Each fusion layer normalises its context, so scales may differ.
    """
    return torch.cat([image_features[:, None], patch_features], 1)


@dataclass(frozen=True)
class XmmConfig:
    """XMM's options; SIMLA's values where it gives them, vlviz's otherwise (said)."""

    layers: int = 2  # of each fusion stack (vlviz's choice: a small head for live runs)
    heads: int = 4
    mask_probability: float = MASK_PROBABILITY  # BERT's 15%
    mask_share: float = MASK_SHARE  # ... and 80/10/10
    random_share: float = RANDOM_SHARE
    vocabulary_size: int = 4096  # output slots for the distinct tokens seen in training (vlviz's choice)
    image_mask_ratio: float = IMAGE_MASK_RATIO  # share of patches masked (SIMLA: 75/256)
    min_block: float = MIN_BLOCK  # smallest block as a share of the patch grid (SIMLA: 16/256)
    centred_targets: bool = True  # regress each masked patch minus its image's mean patch (else the raw patch)
    text_weight: float = 1.0  # of the two terms (SIMLA: 1 each); a side weighted 0 is skipped
    image_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.mask_share + self.random_share > 1:
            raise ValueError(
                f"mask_share + random_share must be at most 1, got {self.mask_share} + {self.random_share}"
            )


class XmmLoss(Loss):
    """XMM as a loss term: `text_loss` (masked tokens) and `image_loss` (masked patches), with metrics.

    Metrics: `mlm_accuracy` (masked tokens predicted right, attending to the true image),
    `mlm_accuracy_noise` (the same masked captions attending to Gaussian-noise images),
    `cross_modal_gain` (their difference: what the image adds) and `patch_cosine` (of the
    reconstructed patches with their targets).

    `needs_tokens` and `needs_inputs`: called with the projected patch and token embeddings of the
    unmasked pair, the mask of real caption tokens, and `pixels`, `ids` and the `model`, which it
    re-runs on the masked inputs (with gradients: XMM trains the towers too). Built for a model with
    a ViT image tower and a text transformer (only their sizes are read) and its tokenizer (which
    ids are start, end and padding). Options: `XmmConfig`.
    """

    Config = XmmConfig
    needs_tokens = True
    needs_inputs = True
    terms = ("text_loss", "image_loss")
    diagnostics = ("mlm_accuracy", "mlm_accuracy_noise", "cross_modal_gain", "patch_cosine")
    shares = ("mlm_accuracy", "mlm_accuracy_noise", "cross_modal_gain")

    def __init__(self, model: nn.Module, tokenizer: Callable[..., torch.Tensor], **options: Any) -> None:
        super().__init__(**options)
        if image_projection(model) is None:
            raise ValueError(f"XMM masks image patches: it needs a ViT image tower, not {type(model.visual).__name__}.")
        config = self.config
        embedding = token_embedding(model)
        width = joint_dim(model)
        if width % config.heads:
            raise ValueError(f"The joint dimension {width} is not divisible by {config.heads} heads.")
        layers, heads, vocabulary_size = config.layers, config.heads, config.vocabulary_size
        self.text_mask_embedding = nn.Parameter(torch.randn(embedding.embedding_dim) * 0.02)  # [MASK]
        self.image_mask_embedding = nn.Parameter(torch.randn(patch_embedding(model).out_channels) * 0.02)
        self.text_fusion = Fusion(width, heads, layers)  # caption tokens attend to image patches
        self.image_fusion = Fusion(width, heads, layers)  # image patches attend to caption tokens
        # BERT's MLM head layout (transform, norm, output layer), over the slots of the tokens seen.
        self.token_head = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, vocabulary_size)
        )
        self.patch_predictor = nn.Linear(width, width)
        self.register_buffer("slot_of", torch.full((embedding.num_embeddings,), -1))  # BPE id -> output slot
        self.register_buffer("slots_used", torch.zeros((), dtype=torch.long))
        every_id = torch.arange(embedding.num_embeddings)[None]
        self.register_buffer("replacements", every_id[real_token_mask(tokenizer, every_id)], persistent=False)

    @torch.no_grad()
    def add_tokens(self, ids: torch.Tensor) -> None:
        """Give the tokens of `ids` not seen before output slots (in id order), while slots last."""
        room = self.token_head[-1].out_features - int(self.slots_used)
        new = torch.unique(ids[self.slot_of[ids] < 0])[:room]
        self.slot_of[new] = self.slots_used + torch.arange(len(new), device=new.device)
        self.slots_used += len(new)

    def encode_masked_text(self, model: nn.Module, ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Projected token embeddings (B, T, D) of captions whose `masked` positions read [MASK]."""
        with substituted(token_embedding(model), masked[..., None], self.text_mask_embedding):
            _, tokens = text_embeddings(model, ids)
        return tokens

    def encode_masked_image(self, model: nn.Module, pixels: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Projected patch embeddings (B, P, D) of images whose `masked` patches (B, P) are the mask embedding."""
        rows, cols = grid_size(model)
        where = masked.view(-1, 1, rows, cols)  # conv1's output is (B, width, rows, cols)
        with substituted(patch_embedding(model), where, self.image_mask_embedding[None, :, None, None]):
            _, patches = image_embeddings(model, pixels)
        return patches

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (M, S) over the output slots in use, of fused token states (M, D)."""
        return self.token_head(hidden)[:, : int(self.slots_used)]

    def text_side(
        self, image_tokens: torch.Tensor, token_mask: torch.Tensor, pixels: torch.Tensor, ids: torch.Tensor,
        model: nn.Module,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Masked-token cross-entropy attending to the true image; accuracy with it and with noise images.

        `image_tokens` (B, 1 + P, D): the global image embedding, then the patches.
        """
        if self.training:
            self.add_tokens(ids[token_mask])
        maskable = token_mask & (self.slot_of[ids] >= 0)  # a token without a slot is never chosen
        config = self.config
        new_ids, chosen, masked = mask_tokens(
            ids, maskable, self.replacements, config.mask_probability, config.mask_share, config.random_share
        )
        padding = ~token_mask  # start, end and padding are not attended to
        tokens = self.encode_masked_text(model, new_ids, masked)  # (B, T, D)
        answers = self.slot_of[ids[chosen]]  # (M,)
        logits = self.token_logits(self.text_fusion(tokens, image_tokens, padding)[0][chosen])  # (M, S)
        with torch.no_grad():
            noise_tokens = image_token_sequence(*image_embeddings(model, torch.randn_like(pixels)))
            noise_logits = self.token_logits(self.text_fusion(tokens, noise_tokens, padding)[0][chosen])
            accuracy = (logits.argmax(-1) == answers).float().mean()
            noise_accuracy = (noise_logits.argmax(-1) == answers).float().mean()
        return {
            "text_loss": F.cross_entropy(logits.float(), answers),
            "mlm_accuracy": accuracy,
            "mlm_accuracy_noise": noise_accuracy,
            "cross_modal_gain": accuracy - noise_accuracy,
        }

    def image_side(
        self, patch_features: torch.Tensor, text_tokens: torch.Tensor, text_padding: torch.Tensor,
        pixels: torch.Tensor, model: nn.Module,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Cosine regression of masked blocks of patches onto the unmasked image's patches, attending to the caption.

        `text_tokens` (B, 1 + T, D): the global text embedding, then the tokens; `text_padding` marks those not attended to.
        """
        config = self.config
        hidden = block_mask(len(pixels), grid_size(model), config.image_mask_ratio, config.min_block).to(
            pixels.device
        )  # (B, P)
        fused, _ = self.image_fusion(self.encode_masked_image(model, pixels, hidden), text_tokens, None, text_padding)
        predicted = self.patch_predictor(fused[hidden])  # (B * masked, D)
        targets = patch_features.detach()  # stop-gradient: the targets are the unmasked image's own patches
        if config.centred_targets:  # what sets a patch apart from its image: a tower that collapses gains nothing
            targets = targets - targets.mean(1, keepdim=True)
        cosine = F.cosine_similarity(predicted.float(), targets[hidden].float(), dim=-1)
        return {"image_loss": (1 - cosine).mean(), "patch_cosine": cosine.detach().mean()}

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        patch_features: torch.Tensor,
        token_features: torch.Tensor,
        token_mask: torch.Tensor,
        pixels: torch.Tensor,
        ids: torch.Tensor,
        model: nn.Module,
        **_: object,
    ) -> dict[str, torch.Tensor]:
        token_mask = token_mask.bool()
        out: dict[str, torch.Tensor] = {}
        text_weight, image_weight = self.config.text_weight, self.config.image_weight
        if text_weight:  # a side weighted 0 is not computed at all
            image_tokens = image_token_sequence(image_features, patch_features)  # (B, 1 + P, D)
            out |= self.text_side(image_tokens, token_mask, pixels, ids, model)
            out["text_loss"] = text_weight * out["text_loss"]
        if image_weight:
            text_tokens = torch.cat([text_features[:, None], token_features], 1)  # (B, 1 + T, D)
            text_padding = F.pad(~token_mask, (1, 0), value=False)  # the global embedding is always attended to
            out |= self.image_side(patch_features, text_tokens, text_padding, pixels, model)
            out["image_loss"] = image_weight * out["image_loss"]
        return out


@dataclass(frozen=True)
class WordAttention:
    """Where the text fusion looks for each word of one caption when that word is masked."""

    layout: TokenLayout  # the caption's tokens and words
    patch_maps: torch.Tensor  # (W, P) attention on each patch
    global_share: torch.Tensor  # (W,) attention on the global image embedding; each row of maps sums to 1 minus it


@torch.no_grad()
def masked_word_attention(
    xmm: XmmLoss, model: nn.Module, tokenizer: Callable[..., torch.Tensor], pixels: torch.Tensor, caption: str
) -> WordAttention:
    """The trained text fusion's cross-attention from each masked word of `caption` to the image.

    One batched pass with one row per word: in row w, word w's BPE pieces read [MASK]; the last
    fusion layer's cross-attention (averaged over heads) from those pieces is averaged over the
    pieces, and split into the patches' part and the global embedding's.

    Args:
        pixels: (1, 3, H, W) the preprocessed image, on the model's device and dtype.
    """
    layout = token_layout(tokenizer, [caption])
    n_words = len(layout.words[0])
    if n_words == 0:
        raise ValueError(f"{caption!r} has no words to mask.")
    device = pixels.device
    ids = layout.ids.to(device).expand(n_words, -1)  # (W, T)
    masked = layout.word_index.to(device) == torch.arange(n_words, device=device)[:, None]  # (W, T): row w masks word w
    tokens = xmm.encode_masked_text(model, ids, masked)  # (W, T, D)
    image = image_token_sequence(*image_embeddings(model, pixels)).expand(n_words, -1, -1)  # (W, 1 + P, D)
    padding = ~layout.word_mask.to(device).expand(n_words, -1)
    _, weights = xmm.text_fusion(tokens, image, padding, need_weights=True)  # (W, T, 1 + P)
    pieces = masked[..., None].float()  # (W, T, 1): the masked pieces of each row
    per_word = (weights.float() * pieces).sum(1) / pieces.sum(1)  # (W, 1 + P): mean over the word's pieces
    return WordAttention(layout, per_word[:, 1:], per_word[:, 0])
