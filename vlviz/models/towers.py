"""What an open_clip model's towers offer, asked in one place.

open_clip builds CLIP from several tower kinds (ViT or ResNet images; its own text transformer or a
Hugging Face one), and vlviz's features depend on what a tower has: projectable patch tokens (SPARC,
XMM), a text projection of every token, a pooled text position (SIMLA's keywords), a patch grid and
an input side. Every such question is answered here, so the rest of vlviz never pokes at
`model.visual` attributes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
from open_clip.transformer import TextTransformer, Transformer, VisionTransformer
from torch import nn


def image_projection(model: nn.Module) -> torch.Tensor | None:
    """`visual.proj` of a ViT tower: maps final-norm patch tokens into the joint space; None for other towers."""
    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer) and visual.proj is not None and visual.attn_pool is None:
        return visual.proj
    return None


def text_projection(model: nn.Module) -> torch.Tensor | nn.Module | None:
    """The text projection of a CLIP text transformer (built into CLIP or in CustomTextCLIP.text); None otherwise."""
    if hasattr(model, "text_projection") and getattr(model, "token_embedding", None) is not None:
        return model.text_projection
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "text_projection") and getattr(text, "cls_emb", None) is None:
        return text.text_projection
    return None


def patches_unavailable(model: nn.Module) -> str | None:
    """Why the image tower has no patch embeddings in the joint space, or None when it has them."""
    if image_projection(model) is None:
        kind = type(getattr(model, "visual", None)).__name__
        return f"the image tower ({kind}) has no projectable patch tokens; only ViT towers have them"
    return None


def logit_bias(model: nn.Module) -> torch.Tensor | None:
    """The learned bias of a sigmoid (SigLIP) head, or None for a softmax (CLIP) head."""
    return getattr(model, "logit_bias", None)


def patch_embedding(model: nn.Module) -> nn.Conv2d:
    """The convolution that cuts a ViT's image into patch embeddings (`visual.conv1`), where XMM masks patches."""
    if image_projection(model) is None:
        raise ValueError(f"Masking image patches needs a ViT image tower, not {type(model.visual).__name__}.")
    return model.visual.conv1


def grid_size(model: nn.Module) -> tuple[int, int] | None:
    """(rows, columns) of a ViT tower's patch grid; None for towers without projectable patches."""
    if image_projection(model) is None:
        return None
    rows, columns = model.visual.grid_size
    return int(rows), int(columns)


def input_side(model: nn.Module) -> int:
    """The side in pixels of a model's square input (ViT towers store a pair, ResNet towers an int)."""
    size = model.visual.image_size
    return int(size if isinstance(size, int) else size[0])


def preprocess_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation a model was trained with (open_clip records it on the visual tower)."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    return tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))


def joint_dim(model: nn.Module) -> int:
    """The dimension of an open_clip model's joint embedding space."""
    output_dim = getattr(model.visual, "output_dim", None)
    if output_dim is None:
        raise ValueError(
            f"Cannot tell the embedding size of {type(model).__name__}: its image tower has no output_dim."
        )
    return int(output_dim)


def text_tower(model: nn.Module) -> tuple[Transformer, str, int | None, bool]:
    """The text transformer of an open_clip model, its pool type, end-of-text id and whether a [CLS] is appended."""
    if getattr(model, "token_embedding", None) is not None and isinstance(
        getattr(model, "transformer", None), Transformer
    ):
        return model.transformer, model.text_pool_type, getattr(model, "text_eos_id", None), False
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        return text.transformer, text.pool_type, text.eos_id, text.cls_emb is not None
    raise ValueError(
        f"Keyword selection needs an open_clip text transformer; this model's text tower is {type(text).__name__}."
    )


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding of an open_clip text transformer (CLIP's own, or CustomTextCLIP's `text`)."""
    embedding = getattr(model, "token_embedding", None) or getattr(
        getattr(model, "text", None), "token_embedding", None
    )
    if not isinstance(embedding, nn.Embedding):
        raise ValueError("XMM needs an open_clip text transformer with a token embedding (not a Hugging Face tower).")
    return embedding


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs (pixels) are cast to: its half precision when it has half weights.

    open_clip's "bf16"/"fp16" precisions keep LayerNorms and embeddings in fp32 beside half weights
    (its trainer casts images to the half dtype, `get_input_dtype`), so the first parameter's dtype
    does not say it.
    """
    dtypes = {parameter.dtype for parameter in model.parameters()}
    return next((half for half in (torch.bfloat16, torch.float16) if half in dtypes), next(iter(dtypes)))


def transformer_blocks(model: nn.Module) -> dict[str, int]:
    """Each tower's transformer (by parameter-name prefix) and its number of residual blocks."""
    blocks = {}
    for tower in ("visual.transformer", "transformer", "text.transformer"):
        try:
            module = model.get_submodule(tower)
        except AttributeError:
            continue
        if hasattr(module, "resblocks"):
            blocks[tower] = len(module.resblocks)
    return blocks


def half_dtype(device: torch.device) -> torch.dtype | None:
    """The half precision a device computes in: bf16 on CUDA where supported, else fp16; None on the CPU.

    The one place this choice is made: loading (`vlviz.models.loading`), autocast and the loss scaler
    (`vlviz.training.loop`) all ask here.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


READOUT_KEY = "vlviz_token_readout"  # where a checkpoint's config JSON says where its token maps are read


@dataclass(frozen=True)
class TokenReadout:
    """Where a model's patch and caption tokens are read for maps and token-level losses.

    Each field counts the transformer blocks a tower's tokens pass before they are read out as open_clip
    reads its own output tokens: image patches through ``ln_post`` and ``proj``, caption tokens through
    ``ln_final`` and ``text_projection``. None reads them after the last block (open_clip's output tokens,
    every pretrained CLIP); 0 reads the tokens entering the first block. Attention moves a word's evidence off
    its object block by block, and the causal text tower carries earlier words into later tokens, so a
    grounded model may read both before any block (issue 23; docs/grounding.md). The global embeddings
    always stay the towers' outputs.
    """

    image_blocks: int | None = None
    text_blocks: int | None = None

    def describe(self) -> str:
        """Where the maps are read, in words for a view: e.g. "image patches before any block, caption tokens
        after the last block"."""

        def where(blocks: int | None) -> str:
            if blocks is None:
                return "after the last block"
            return "before any block" if blocks == 0 else f"after block {blocks}"

        return f"image patches {where(self.image_blocks)}, caption tokens {where(self.text_blocks)}"


def token_readout(model: nn.Module) -> TokenReadout:
    """Where `model`'s token maps are read (`set_token_readout`); open_clip's output tokens unless set."""
    return getattr(model, READOUT_KEY, TokenReadout())


def set_token_readout(model: nn.Module, readout: TokenReadout) -> None:
    """Make `model` read its tokens at `readout`: a ValueError when a tower has fewer blocks or cannot be read there."""
    blocks = transformer_blocks(model)
    for field_name, tower in (("image_blocks", "visual.transformer"), ("text_blocks", "transformer")):
        count = getattr(readout, field_name)
        if count is None:
            continue
        if tower not in blocks:
            raise ValueError(f"{field_name}={count}: this model has no open_clip {tower} to read tokens inside.")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= blocks[tower]:
            raise ValueError(f"{field_name} must be a whole number in [0, {blocks[tower]}] or None, got {count!r}.")
    if readout.image_blocks is not None and image_projection(model) is None:
        raise ValueError(patches_unavailable(model))
    setattr(model, READOUT_KEY, readout)
