"""Gradient maps for any open_clip ViT: which patches the image-word similarity is sensitive to.

The dense methods (`vlviz.grounding.methods`) re-read the last block so that patch tokens stay local; these two
ask the model's own forward pass instead, through the gradient of a word's similarity with the image. Each gives a
word a (P,) map over the patch grid, batched over images and words.

The target, for both: word t's cosine with the image, s_t = cos(z, e_t), e_t the caption token's projected
embedding (`vlviz.models.encoding.text_embeddings`), as every other map kind of vlviz compares a caption token
with the image. A word alone, encoded as its own text, would be a different token from the one the caption's
other maps show, and would lose what the caption says around it; on the shipped model it also points worse (LeGrad's
colour words hit their object 6% of the time on 200 held-out scenes, against 15% with the caption's tokens). The
papers differentiate the cosine of L2-normalised embeddings too (a dot product of normalised CLIP features).

LeGrad (Bousselham et al. 2024; official code WalBouss/LeGrad, ``LeWrapper.compute_legrad_clip``): for each block
l from ``start_layer`` on, the layer's own image embedding and its attention map's gradient,

    z_l = proj(ln_post(mean_i x_l[i])),   s_l = cos(z_l, e_t),   A_l = softmax(q k^T / sqrt(d))  (B, heads, N, N)
    E_l[p] = mean over heads h and query tokens i of ReLU(d s_l / d A_l[h, i, p])
    map = min-max over p of sum_l E_l[p]    (p a patch: the class token's column is dropped)

As the official code: x_l is block l's output, mean-pooled over all N = 1 + P tokens (the class token too), then
open_clip's final norm and projection; the ReLU is on the gradient, before the means; the layers are summed (the
paper's mean differs by a constant, which the min-max takes away); ``start_layer`` defaults to the official -2
(the last two blocks, or the one block of a one-block tower); every layer from it on is aggregated. The gradient is d s_l / d A_l holding the rest of
the pass fixed: A_l feeds only block l's own output, so it is also the full derivative the official code reads.

Grad-ECLIP (Zhao et al., ICML 2024; official code Cyang-Zhao/Grad-Eclip, ``grad_eclip`` in its image notebook):
the last block's attention output at the class token, o = sum_i A[0, i] v_i, and s = cos(z, e_t) with z the
model's own image embedding (class token, final norm, projection),

    w_c = d s / d o_c                                              channel weight: the gradient at the class token
    lambda_i = min-max over patches of cos(q_cls, k_i)             "loosened" spatial weight, instead of softmax
    map_i = ReLU(sum_c w_c lambda_i v_ic),   then min-max over i   (i a patch)

Two choices where the official code leaves one. It recomputes the last block with one attention head over the
whole width (``attention_layer(q, k, v, 1)``), which changes the embedding being explained; here the model's own
heads are kept, so s is the model's own similarity, and lambda is computed per head (channel c takes its head's
cos(q_cls, k_i), each min-maxed over patches): with one head this is the official formula. The official maps are
min-maxed when drawn, here in the method, as LeGrad's are, so both lie in [0, 1]. Towers that pool by averaging
have no class-token embedding to explain and are refused.

Both work on the patch grid (no upsampling to pixels), in float32 with autograd on even when the caller runs in
inference mode, differentiate intermediate activations only (``torch.autograd.grad``, so no parameter's ``.grad``
is touched) and leave the shared model as it is: no hooks and no swapped weights, so other threads' passes are
untouched. Blocks before the differentiated ones run as open_clip runs them, in the model's dtype, without a graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale, ResidualAttentionBlock, VisionTransformer
from PIL import Image
from torch import nn

from vlviz.grounding.methods import packed_attention_block, scaled_similarity, split_heads
from vlviz.models.encoding import VLModel, batches
from vlviz.models.towers import image_projection

LEGRAD_START_LAYER = -2  # the official LeWrapper's default layer_index: the last two blocks
GRADIENT_BATCH = 8
"""Images per gradient pass: LeGrad holds a (tokens, images, heads, N, N) gradient per layer, 180 MB for 8 ViT-B/16
images and 12 tokens."""


def attention_blocks(model: nn.Module, start_layer: int) -> tuple[VisionTransformer, list[ResidualAttentionBlock]]:
    """The ViT tower and its blocks from ``start_layer`` on, or a ValueError saying why the gradient methods cannot
    read them. A negative start counts from the end, and takes every block of a tower shallower than that."""
    if image_projection(model) is None:
        kind = type(getattr(model, "visual", None)).__name__
        raise ValueError(f"Gradient map methods need a ViT image tower with projectable patch tokens, not {kind}.")
    visual: VisionTransformer = model.visual
    depth = len(visual.transformer.resblocks)
    start = max(start_layer + depth, 0) if start_layer < 0 else start_layer
    if start >= depth:
        raise ValueError(f"Start layer {start_layer} is outside this tower's {depth} blocks.")
    return visual, [
        packed_attention_block(block, "Gradient map methods") for block in visual.transformer.resblocks[start:]
    ]


def fp32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in float32 with detached weights, whatever the module's dtype, without changing the module.

    The model is shared by every session's thread, so its weights are neither cast nor swapped in place; the
    parts of an open_clip block are linear layers, layer norms, layer scales, activations and sequences of them.
    """
    if isinstance(module, nn.Linear):
        bias = None if module.bias is None else module.bias.detach().float()
        return F.linear(x, module.weight.detach().float(), bias)
    if isinstance(module, nn.LayerNorm):
        weight = None if module.weight is None else module.weight.detach().float()
        bias = None if module.bias is None else module.bias.detach().float()
        return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
    if isinstance(module, LayerScale):
        return x * module.gamma.detach().float()
    if isinstance(module, nn.Sequential):
        for part in module:
            x = fp32(part, x)
        return x
    if next(module.parameters(), None) is None:  # activations, identities
        return module(x)
    raise ValueError(f"Cannot run {type(module).__name__} in float32 for a gradient map.")


def block_inputs(visual: VisionTransformer, pixels: torch.Tensor, start: int) -> list[torch.Tensor]:
    """Float32 copies of the tokens (B, N, width) entering each block from ``start`` on, open_clip's own pass
    (its embedding, then its blocks in the model's dtype), without a graph."""
    batch_first = visual.transformer.batch_first
    blocks = visual.transformer.resblocks
    inputs = []
    with torch.no_grad():
        tokens = visual._embeds(pixels)  # open_clip 3.x's (private) embedding step, as `methods.last_block_input`
        tokens = tokens if batch_first else tokens.transpose(0, 1)
        for index, block in enumerate(blocks):
            if index >= start:
                inputs.append((tokens if batch_first else tokens.transpose(0, 1)).float())
            if index < len(blocks) - 1:
                tokens = block(tokens)
    return inputs


def attention_parts(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, heads, N, d_head) of a block on its input tokens x (B, N, width), in float32."""
    attention: nn.MultiheadAttention = block.attn
    weight, bias = attention.in_proj_weight.detach().float(), attention.in_proj_bias
    bias = None if bias is None else bias.detach().float()
    q, k, v = F.linear(fp32(block.ln_1, x), weight, bias).chunk(3, dim=-1)
    return tuple(split_heads(part, attention.num_heads) for part in (q, k, v))


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d_head) -> (B, N, width), nn.MultiheadAttention's channel order."""
    return x.transpose(1, 2).flatten(2)


def block_output(block: ResidualAttentionBlock, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """The block's output tokens given its input tokens x and its attention's mixed values ``mixed`` (..., width),
    as open_clip's block adds them: x + ls_1(out_proj(mixed)), then + ls_2(mlp(ln_2(.))); every part is per token."""
    out = x + fp32(block.ls_1, fp32(block.attn.out_proj, mixed))
    return out + fp32(block.ls_2, fp32(block.mlp, fp32(block.ln_2, out)))


def embedding(visual: VisionTransformer, pooled: torch.Tensor) -> torch.Tensor:
    """open_clip's final norm and projection of pooled tokens (B, width) -> (B, D), float32."""
    return fp32(visual.ln_post, pooled) @ visual.proj.detach().float()


def per_word_gradients(similarity: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """d similarity[b, t] / d leaf[b] for every word t at once: (B, T) and (B, ...) -> (T, B, ...).

    Images do not meet in an eval-mode tower, so one backward pass per word, summed over the images, gives each
    image its own gradient; torch vectorises the T passes (``is_grads_batched``) instead of a loop over words.
    """
    batch, words = similarity.shape
    picks = torch.eye(words, dtype=similarity.dtype, device=similarity.device)[:, None].expand(-1, batch, -1)
    (gradient,) = torch.autograd.grad(similarity, leaf, grad_outputs=picks, is_grads_batched=True)
    return gradient


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] over its last dimension, as both official codes draw theirs; a flat map is 0."""
    low = maps.amin(dim=-1, keepdim=True)
    spread = maps.amax(dim=-1, keepdim=True) - low
    return (maps - low) / spread.clamp_min(torch.finfo(maps.dtype).tiny)


def _checked_words(words: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Words (B, T, D) as L2-normalised float32, a normal tensor even if made in inference mode."""
    if words.ndim != 3 or words.shape[0] != pixels.shape[0]:
        raise ValueError(f"Words must be (B, T, D) for B = {pixels.shape[0]} images, not {tuple(words.shape)}.")
    return F.normalize(words.float().clone(), dim=-1)


def legrad_maps(
    model: nn.Module, pixels: torch.Tensor, words: torch.Tensor, start_layer: int = LEGRAD_START_LAYER
) -> torch.Tensor:
    """LeGrad maps (B, T, P) in [0, 1]: each word's attention-map gradients, ReLU'd, averaged, summed over layers.

    Args:
        model: an open_clip CLIP with a ViT image tower.
        pixels: (B, 3, H, W) the images as the model sees them, in its input dtype.
        words: (B, T, D) projected embeddings of the words to map on each image (any norm).
        start_layer: the first block aggregated (negative counts from the end); every later block is too.
            The default, the last two blocks, takes the one block of a one-block tower.
    """
    visual, blocks = attention_blocks(model, start_layer)
    with torch.inference_mode(False), torch.enable_grad():
        words = _checked_words(words, pixels)
        inputs = block_inputs(visual, pixels.clone(), len(visual.transformer.resblocks) - len(blocks))
        relevance = torch.zeros(words.shape[1], *inputs[0].shape[:2], device=words.device)  # (T, B, N)
        for block, x in zip(blocks, inputs):  # the layers, as the paper sums them; each batched over images and words
            q, k, v = attention_parts(block, x)
            attention = scaled_similarity(q, k).softmax(dim=-1).requires_grad_()  # a leaf: d s_l / d A_l
            out = block_output(block, x, merge_heads(attention @ v))
            similarity = F.normalize(embedding(visual, out.mean(dim=1)), dim=-1)[:, None] @ words.transpose(1, 2)
            gradient = per_word_gradients(similarity[:, 0], attention)  # (T, B, heads, N, N)
            relevance += gradient.clamp_min(0).mean(dim=(2, 3))
    return min_max(relevance[..., 1:].transpose(0, 1))


def gradeclip_maps(model: nn.Module, pixels: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Grad-ECLIP maps (B, T, P) in [0, 1]: the last block's patch values weighted by each word's gradient at the
    class token (channels) and by the class token's query-key cosine (space), ReLU'd.

    Args:
        model: an open_clip CLIP with a ViT image tower pooled by its class token.
        pixels: (B, 3, H, W) the images as the model sees them, in its input dtype.
        words: (B, T, D) projected embeddings of the words to map on each image (any norm).
    """
    visual, (block,) = attention_blocks(model, -1)
    if visual.pool_type != "tok":
        raise ValueError(f"Grad-ECLIP explains a class-token embedding; this tower pools by {visual.pool_type!r}.")
    with torch.inference_mode(False), torch.enable_grad():
        words = _checked_words(words, pixels)
        (x,) = block_inputs(visual, pixels.clone(), len(visual.transformer.resblocks) - 1)
        q, k, v = attention_parts(block, x)
        # the class token's row alone: with class-token pooling no other token reaches the embedding
        mixed = merge_heads(scaled_similarity(q[:, :, :1], k).softmax(dim=-1) @ v)[:, 0].requires_grad_()  # (B, W)
        cls = block_output(block, x[:, 0], mixed)
        similarity = F.normalize(embedding(visual, cls), dim=-1)[:, None] @ words.transpose(1, 2)
        channel = per_word_gradients(similarity[:, 0], mixed)  # (T, B, width)
        spatial = min_max(F.cosine_similarity(q[:, :, :1], k[:, :, 1:], dim=-1))  # (B, heads, P)
        weighted = merge_heads(spatial[..., None] * v[:, :, 1:])  # (B, P, width): lambda_i v_ic, per head
        maps = torch.einsum("tbc,bpc->btp", channel, weighted).relu()
    return min_max(maps)


# The gradient methods by name, each (open_clip model, pixels (B, 3, H, W), words (B, T, D)) -> maps (B, T, P).
GRADIENT_METHODS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "legrad": legrad_maps,
    "gradeclip": gradeclip_maps,
}


def gradient_maps(model: nn.Module, pixels: torch.Tensor, words: torch.Tensor, method: str) -> torch.Tensor:
    """Maps (B, T, P) by the named method of ``GRADIENT_METHODS``."""
    if method not in GRADIENT_METHODS:
        raise ValueError(f"Unknown gradient map method {method!r}; known: {', '.join(GRADIENT_METHODS)}.")
    return GRADIENT_METHODS[method](model, pixels, words)


def model_gradient_maps(
    model: VLModel, images: Sequence[Image.Image], captions: Sequence[str], method: str, batch: int = GRADIENT_BATCH
) -> torch.Tensor:
    """(N, T, P) maps of each caption's tokens on its own image by `model`, on the CPU, `batch` images a pass.

    Only the tokens up to the last real one of any caption are mapped (the end and padding tokens after it stay
    0): a word costs a backward pass, and a caption is a few tokens of a long context. Raises ValueError for
    towers without patch tokens.
    """
    encoding = model.encode_pairs(images, captions)
    if encoding.token_features is None or encoding.grid_size is None:
        raise ValueError(f"No {method} maps for this model: {model.patches_unavailable}.")
    used = encoding.tokens.used_length
    tokens = encoding.token_features[:, :used]
    maps = torch.zeros(*encoding.token_features.shape[:2], encoding.grid_size[0] * encoding.grid_size[1])
    start = 0
    for part in batches(images, batch) if used else ():
        words = tokens[start : start + len(part)]
        maps[start : start + len(part), :used] = gradient_maps(model.model, model.pixels(part), words, method).cpu()
        start += len(part)
    return maps
