"""Training-free dense maps for any open_clip ViT: the last block re-read so that patch tokens stay local.

CLIP's last block mixes every patch token with all others through q-k attention, so its patch tokens hold
image-wide evidence and a word's map lands off its object. Four methods change only that last block,
with no training, and read every token out as open_clip reads its own: ``ln_post(token) @ proj``, giving
(B, P, D) patch embeddings in the joint space that a caption token or a text embedding can be compared
with. Each follows its official code (named in its docstring), written here on open_clip's
``ResidualAttentionBlock`` (``ln_1``, ``attn`` an ``nn.MultiheadAttention``, ``ln_2``, ``mlp``):

    q, k, v = split_heads(ln_1(x) W_in^T + b_in),   s = d_head^(-1/2),   branch = out_proj(merge_heads(A v))

    method      A (per head, over all N = 1 + P tokens, CLS included)      last block output
    clip        softmax(s q k^T)             (the control: open_clip's)    x + branch, then + FFN
    maskclip    I  (the value path)                                        x + branch, then + FFN
    sclip       softmax(s q q^T) + softmax(s k k^T)                        x + branch, then + FFN
    clearclip   softmax(s q q^T)                                           branch (no residual, no FFN)
    naclip      softmax(s k k^T + Omega), Omega Gaussian over the grid     branch (no residual, no FFN)

All run in one batched pass (the blocks before the last run once, as open_clip runs them), need no
gradients, and take the pixels the model was built for (the grid of its positional embedding; no
sliding windows or position interpolation, which the papers use for large segmentation images). A layer
scale (``ls_1``, ``ls_2``; the identity in CLIP ViTs) is applied wherever open_clip's block applies it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from vlviz.models.towers import image_projection, token_readout

# (q, k) of shape (B, heads, N, d_head) and the patch grid -> attention weights (B, heads, N, N).
AttentionRule = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]

NACLIP_GAUSSIAN_STD = 5.0  # NACLIP's default sigma, in patches (naclip.py: gaussian_std=5.)


def read_block(model: nn.Module) -> int:
    """Index of the block after which `model` reads its patch tokens: the last, unless its readout says otherwise
    (`vlviz.models.towers.TokenReadout`); a ValueError for a model that reads them before any block."""
    blocks = token_readout(model).image_blocks
    if blocks == 0:
        raise ValueError(
            "This model reads its maps before any image block: there is no block for a dense method to re-read; "
            "its SPARC and cosine maps already read each patch alone."
        )
    return len(model.visual.transformer.resblocks) - 1 if blocks is None else blocks - 1


def last_block(model: nn.Module) -> tuple[VisionTransformer, ResidualAttentionBlock]:
    """The ViT tower and the last block its patch tokens pass before they are read (`read_block`), or a ValueError
    saying why these methods cannot re-read it."""
    if image_projection(model) is None:
        kind = type(getattr(model, "visual", None)).__name__
        raise ValueError(f"Dense map methods need a ViT image tower with projectable patch tokens, not {kind}.")
    visual: VisionTransformer = model.visual
    return visual, packed_attention_block(visual.transformer.resblocks[read_block(model)], "Dense map methods")


def packed_attention_block(block: nn.Module, methods: str) -> ResidualAttentionBlock:
    """`block` when it is open_clip's ResidualAttentionBlock with packed nn.MultiheadAttention weights (whose q, k
    and v these methods read), else a ValueError saying that `methods` need one."""
    attention = getattr(block, "attn", None)
    if (
        not isinstance(block, ResidualAttentionBlock)
        or not isinstance(attention, nn.MultiheadAttention)
        or attention.in_proj_weight is None
        or hasattr(block, "ln_1_kv")
    ):
        raise ValueError(
            f"{methods} need open_clip's ResidualAttentionBlock with packed nn.MultiheadAttention weights, "
            f"not {type(block).__name__}."
        )
    return block


def last_block_input(visual: VisionTransformer, pixels: torch.Tensor, last: int = -1) -> torch.Tensor:
    """Tokens entering block `last`, (B, 1 + P, width): open_clip's embedding and every block before it."""
    # open_clip 3.x's (private) embedding step: conv1, class token, positions, patch dropout (off in eval), ln_pre
    tokens = visual._embeds(pixels)
    batch_first = visual.transformer.batch_first
    tokens = tokens if batch_first else tokens.transpose(0, 1)
    for block in visual.transformer.resblocks[:last]:
        tokens = block(tokens)
    return tokens if batch_first else tokens.transpose(0, 1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, width) -> (B, heads, N, width / heads), heads in nn.MultiheadAttention's channel order."""
    batch, tokens, width = x.shape
    return x.reshape(batch, tokens, heads, width // heads).transpose(1, 2)


def re_read_last_block(
    model: nn.Module,
    pixels: torch.Tensor,
    attention_rule: AttentionRule | None,
    residual: bool,
    ffn: bool,
) -> torch.Tensor:
    """Projected patch embeddings (B, P, D) with the last block's attention replaced.

    ``attention_rule`` None is the value path (A = I: each token keeps its own value). ``residual`` adds the
    block's input to the attention branch; ``ffn`` then adds the block's MLP branch, as open_clip's block does.
    """
    visual, block = last_block(model)
    tokens = last_block_input(visual, pixels, read_block(model))
    attention: nn.MultiheadAttention = block.attn
    q, k, v = F.linear(block.ln_1(tokens), attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (split_heads(x, attention.num_heads) for x in (q, k, v))
    mixed = v if attention_rule is None else attention_rule(q, k, visual.grid_size) @ v
    branch = block.ls_1(attention.out_proj(mixed.transpose(1, 2).flatten(2)))
    out = tokens + branch if residual else branch
    if ffn:
        out = out + block.ls_2(block.mlp(block.ln_2(out)))
    return visual.ln_post(out[:, 1:]) @ visual.proj


def scaled_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s a b^T per head, s = d_head^(-1/2): CLIP's attention logits, here between any two of q, k."""
    return a @ b.transpose(-2, -1) * a.shape[-1] ** -0.5


def gaussian_neighbourhood(grid: tuple[int, int], std: float) -> torch.Tensor:
    """NACLIP's Omega, (1 + P, 1 + P): exp(-||c_p - c_p'||^2 / (2 std^2)) between patch centres c (in patches).

    Row-major patches after the class token, whose row and column are 0 (no prior to or from it), as in
    NACLIP's ``get_attention_addition``.
    """
    rows, cols = grid
    centres = torch.cartesian_prod(torch.arange(rows), torch.arange(cols)).float()  # (P, 2), row-major
    omega = torch.zeros(rows * cols + 1, rows * cols + 1)
    omega[1:, 1:] = torch.exp(-torch.cdist(centres, centres).square() / (2 * std**2))
    return omega


def clip_patches(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The control: the last block as open_clip runs it, A = softmax(q k^T / sqrt(d)), residual and FFN kept.

    Equals open_clip's own final-norm patch tokens times ``proj`` (``vlviz.models.encoding.image_embeddings``).
    """
    return re_read_last_block(
        model, pixels, lambda q, k, _: scaled_similarity(q, k).softmax(dim=-1), residual=True, ffn=True
    )


def maskclip_patches(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """MaskCLIP (Zhou, Loy and Dai, ECCV 2022): the last block's value path, q and k dropped.

    x' = x + W_o (W_v ln_1(x)),   out = proj(ln_post(x' + FFN(ln_2(x'))))

    The paper turns the value embedding and the last linear layer into 1x1 convolutions; its official ViT
    code (chongzhou96/MaskCLIP, ``mmseg/models/backbones/vit.py``, ``return_qkv``) keeps the residual and
    the FFN around that value path (``v += x; v = ffn(norm2(v), identity=v)``), then the final norm and the
    projection, and so does this.
    """
    return re_read_last_block(model, pixels, None, residual=True, ffn=True)


def sclip_patches(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """SCLIP (Wang, Mei and Yuille, ECCV 2024): correlative self-attention in the last block.

    A = softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d))   (per head)

    The paper's correlative self-attention, softmax(X W_r (X W_r)^T / tau), training-free with CLIP's own
    W_q and W_k as W_r, the two attentions summed, as its official code does (``custom_attn(csa=True)``).

    Each token attends to tokens like itself, so a patch's weight stays on its own region. The official code
    (wangf3014/SCLIP, ``clip/model.py``) keeps the residual and the FFN of the last block
    (``x = x + custom_attn(...); x = x + mlp(ln_2(x))``), and so does this. The rows sum to 2, as there.
    """

    def correlative(q: torch.Tensor, k: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
        return scaled_similarity(q, q).softmax(dim=-1) + scaled_similarity(k, k).softmax(dim=-1)

    return re_read_last_block(model, pixels, correlative, residual=True, ffn=True)


def clearclip_patches(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ClearCLIP (Lan et al., ECCV 2024): q-q self-attention, without the residual and the FFN.

    X_out = proj(ln_post(W_o (softmax(q q^T / sqrt(d)) v)))

    The paper finds the residual connection carries most of the noise of CLIP's dense tokens and the FFN adds
    little; its official code (mc-lan/ClearCLIP, ``open_clip/transformer.py``, ``ignore_residual=True``,
    ``model_type='ClearCLIP'``) reads the attention branch alone, and so does this.
    """
    return re_read_last_block(
        model, pixels, lambda q, _k, _grid: scaled_similarity(q, q).softmax(dim=-1), residual=False, ffn=False
    )


def naclip_patches(model: nn.Module, pixels: torch.Tensor, gaussian_std: float = NACLIP_GAUSSIAN_STD) -> torch.Tensor:
    """NACLIP (Hajimiri, Ben Ayed and Dolz, WACV 2025): neighbourhood attention with k-k similarity.

    A = softmax(k k^T / sqrt(d) + Omega),   Omega_pp' = exp(-||c_p - c_p'||^2 / (2 sigma^2)),   sigma = 5
    X_out = proj(ln_post(W_o (A v)))   (the paper's "reduced architecture": no residual, no FFN)

    As the official code (sinahmr/NACLIP, ``clip/model.py``, ``arch='reduced'``, ``attn_strategy='naclip'``):
    Omega is unnormalised and added to the scaled logits, 0 in the class token's row and column. PAMR
    refinement of the upsampled maps, an option there, is the map kind ``naclip_pamr`` (`vlviz.grounding.pamr`).
    """

    def neighbourhood(_q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        omega = gaussian_neighbourhood(grid, gaussian_std).to(device=k.device, dtype=k.dtype)
        return (scaled_similarity(k, k) + omega).softmax(dim=-1)

    return re_read_last_block(model, pixels, neighbourhood, residual=False, ffn=False)


# The map methods by name, each (open_clip model, pixels (B, 3, H, W)) -> projected patches (B, P, D).
DENSE_METHODS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "clip": clip_patches,
    "maskclip": maskclip_patches,
    "sclip": sclip_patches,
    "clearclip": clearclip_patches,
    "naclip": naclip_patches,
}


def dense_patches(model: nn.Module, pixels: torch.Tensor, method: str) -> torch.Tensor:
    """Projected patch embeddings (B, P, D) by the named method of ``DENSE_METHODS``."""
    if method not in DENSE_METHODS:
        raise ValueError(f"Unknown dense map method {method!r}; known: {', '.join(DENSE_METHODS)}.")
    return DENSE_METHODS[method](model, pixels)
