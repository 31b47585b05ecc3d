"""Training-free dense map methods, each against references that share none of its code.

Two references per method: open_clip's own forward with the last block's attention done by a torch
``nn.MultiheadAttention`` whose projections are swapped or masked to give the method's attention (torch splits
the heads and scales), and a loop over one image and one head at a time with the weights sliced by hand,
written from the papers' equations. Plus the control (the method with CLIP's attention is open_clip's own
patch tokens), batching, locality, shapes, no gradients, and the shipped offline model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image
from torch import nn

from tests.conftest import SCENES_DIR, TINY_RESNET_CFG, TINY_VIT_CFG
from tests.grounding.conftest import random_pixels, seeded_clip
from vlviz.grounding.methods import (
    DENSE_METHODS,
    NACLIP_GAUSSIAN_STD,
    clip_patches,
    dense_patches,
    gaussian_neighbourhood,
    maskclip_patches,
)
from vlviz.models.encoding import image_embeddings
from vlviz.models.loading import OFFLINE_SPEC, load_model

METHODS = list(DENSE_METHODS)
NEW_METHODS = [name for name in METHODS if name != "clip"]
KEEPS_RESIDUAL_AND_FFN = {"clip", "maskclip", "sclip"}  # as each official code does; clearclip and naclip drop both

# Four heads and two blocks, so head order and the blocks before the last both matter; a 4x4 patch grid.
SMALL_VIT_CFG = {
    **TINY_VIT_CFG,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8},
}


@pytest.fixture(scope="module")
def small_vit() -> CLIP:
    return seeded_clip(SMALL_VIT_CFG)


def open_clip_patches(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """open_clip's own last-block patch tokens through its final norm, times ``proj``."""
    out = model.visual.forward_intermediates(
        pixels, indices=1, normalize_intermediates=True, output_fmt="NLC", intermediates_only=True
    )
    return out["image_intermediates"][-1] @ model.visual.proj


def omega_by_hand(rows: int, cols: int, std: float) -> torch.Tensor:
    """NACLIP's prior as its official code builds it: each patch's one-hot grid convolved with a Gaussian window."""
    window_rows, window_cols = 2 * rows - 1, 2 * cols - 1
    dy = torch.arange(window_rows).float() - (rows - 1)
    dx = torch.arange(window_cols).float() - (cols - 1)
    window = torch.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * std**2))
    one_hot = torch.eye(rows * cols).reshape(rows * cols, 1, rows, cols)
    spread = F.conv2d(one_hot, window[None, None], padding="same").reshape(rows * cols, rows * cols)
    omega = torch.zeros(rows * cols + 1, rows * cols + 1)
    omega[1:, 1:] = spread
    return omega


# --- reference 1: open_clip's forward, torch's attention with swapped projections -------------------------


def attention_with(attention: nn.MultiheadAttention, query: str, key: str) -> nn.MultiheadAttention:
    """A copy of ``attention`` whose query and key projections are the original's ``query`` and ``key`` ones."""
    width = attention.embed_dim
    part = {"q": slice(0, width), "k": slice(width, 2 * width)}
    swapped = copy.deepcopy(attention)
    with torch.no_grad():
        for name in ("in_proj_weight", "in_proj_bias"):
            original, new = getattr(attention, name), getattr(swapped, name)
            new[:width] = original[part[query]]
            new[width : 2 * width] = original[part[key]]
    return swapped


def torch_attention_branch(
    block: nn.Module, method: str, grid: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """out_proj(A v) of the method, computed by nn.MultiheadAttention on ln_1's output (B, N, width)."""
    attention = block.attn
    tokens = grid[0] * grid[1] + 1
    if method == "maskclip":  # A = I: every token sees only itself
        only_self = torch.full((tokens, tokens), float("-inf")).fill_diagonal_(0.0)
        return lambda x: attention(x, x, x, need_weights=False, attn_mask=only_self)[0]
    if method == "sclip":  # out_proj(A_qq v) + out_proj(A_kk v) counts out_proj's bias twice
        qq, kk = attention_with(attention, "q", "q"), attention_with(attention, "k", "k")
        return lambda x: (
            qq(x, x, x, need_weights=False)[0] + kk(x, x, x, need_weights=False)[0] - attention.out_proj.bias
        )
    if method == "clearclip":
        qq = attention_with(attention, "q", "q")
        return lambda x: qq(x, x, x, need_weights=False)[0]
    if method == "naclip":  # a float mask is added to the scaled logits
        kk, omega = attention_with(attention, "k", "k"), omega_by_hand(*grid, NACLIP_GAUSSIAN_STD)
        return lambda x: kk(x, x, x, need_weights=False, attn_mask=omega)[0]
    raise ValueError(method)


@contextmanager
def last_block_as(model: nn.Module, method: str) -> Iterator[None]:
    """Inside, open_clip's own forward runs the method in its last block."""
    block = model.visual.transformer.resblocks[-1]
    branch = torch_attention_branch(block, method, model.visual.grid_size)
    if method in KEEPS_RESIDUAL_AND_FFN:  # open_clip's block keeps x + attention, then + FFN
        with mock.patch.object(block, "attention", lambda q_x, **_: branch(q_x)):
            yield
    else:  # the attention branch alone
        with mock.patch.object(block, "forward", lambda q_x, **_: block.ls_1(branch(block.ln_1(q_x)))):
            yield


# --- reference 2: one image, one head at a time, from the papers' equations -------------------------------


def last_block_input_by_hook(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(N, width): what open_clip feeds its last image block for one image."""
    seen: list[torch.Tensor] = []
    hook = model.visual.transformer.resblocks[-1].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        model.encode_image(image[None])
    finally:
        hook.remove()
    return seen[0][0]


def paper_loop_patches(model: nn.Module, image: torch.Tensor, method: str) -> torch.Tensor:
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    assert isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)
    x = last_block_input_by_hook(model, image)
    width, heads = block.attn.embed_dim, block.attn.num_heads
    d = width // heads
    w_q, w_k, w_v = block.attn.in_proj_weight.split(width)
    b_q, b_k, b_v = block.attn.in_proj_bias.split(width)
    h = block.ln_1(x)
    outputs = []
    for head in range(heads):
        rows = slice(head * d, (head + 1) * d)
        q, k, v = (h @ w[rows].T + b[rows] for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
        if method == "clip":
            a = torch.softmax(q @ k.T / math.sqrt(d), dim=1)
        elif method == "maskclip":
            a = torch.eye(len(x))
        elif method == "sclip":
            a = torch.softmax(q @ q.T / math.sqrt(d), dim=1) + torch.softmax(k @ k.T / math.sqrt(d), dim=1)
        elif method == "clearclip":
            a = torch.softmax(q @ q.T / math.sqrt(d), dim=1)
        else:
            omega = omega_by_hand(*visual.grid_size, NACLIP_GAUSSIAN_STD)
            a = torch.softmax(k @ k.T / math.sqrt(d) + omega, dim=1)
        outputs.append(a @ v)
    branch = torch.cat(outputs, dim=1) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    if method in KEEPS_RESIDUAL_AND_FFN:
        y = x + branch
        y = y + block.mlp(block.ln_2(y))
    else:
        y = branch
    return visual.ln_post(y[1:]) @ visual.proj


# --- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["small_vit", "vit_b16"])
def test_clip_attention_reproduces_open_clips_own_patch_tokens(model_name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(model_name)
    pixels = random_pixels(model, 2)
    with torch.no_grad():
        ours = clip_patches(model, pixels)
        torch.testing.assert_close(ours, open_clip_patches(model, pixels))
        torch.testing.assert_close(ours, image_embeddings(model, pixels)[1])


@pytest.mark.parametrize("method", NEW_METHODS)
@pytest.mark.parametrize("model_name", ["small_vit", "vit_b16"])
def test_each_method_is_open_clips_forward_with_torch_attention_swapped_in(
    model_name: str, method: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_name)
    pixels = random_pixels(model, 2)
    with torch.no_grad():
        ours = dense_patches(model, pixels, method)
        with last_block_as(model, method):
            reference = open_clip_patches(model, pixels)
        assert not torch.allclose(ours, open_clip_patches(model, pixels), atol=1e-3)  # the swap changed something
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_matches_a_per_image_per_head_loop_from_the_paper(small_vit: CLIP, method: str) -> None:
    pixels = random_pixels(small_vit, 3)
    with torch.no_grad():
        ours = dense_patches(small_vit, pixels, method)
        reference = torch.stack([paper_loop_patches(small_vit, image, method) for image in pixels])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_a_batch_equals_its_images_one_at_a_time(small_vit: CLIP, method: str) -> None:
    pixels = random_pixels(small_vit, 4)
    with torch.no_grad():
        batched = dense_patches(small_vit, pixels, method)
        one_at_a_time = torch.cat([dense_patches(small_vit, image[None], method) for image in pixels])
    assert batched.shape == (4, 16, 16)  # (B, P = 4x4, D = embed_dim)
    torch.testing.assert_close(batched, one_at_a_time, atol=1e-6, rtol=1e-5)


def test_naclip_prior_by_hand_on_a_2x2_grid() -> None:
    omega = gaussian_neighbourhood((2, 2), std=1.0)
    # patches 0 1 / 2 3 after the class token: side neighbours at distance 1, the diagonal at sqrt(2)
    side, diagonal = math.exp(-1 / 2), math.exp(-2 / 2)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, side, side, diagonal],
            [0.0, side, 1.0, diagonal, side],
            [0.0, side, diagonal, 1.0, side],
            [0.0, diagonal, side, side, 1.0],
        ]
    )
    torch.testing.assert_close(omega, expected)
    torch.testing.assert_close(gaussian_neighbourhood((3, 5), 5.0), omega_by_hand(3, 5, 5.0))  # the official build


def test_maskclips_value_path_keeps_a_one_block_towers_patches_local() -> None:
    """With one block, tokens enter it seeing only their own patch; the value path (and the FFN and residual
    around it) is per token, so changing one patch's pixels changes that patch's embedding alone."""
    model = seeded_clip(TINY_VIT_CFG)  # one block, 4x4 patches of 8x8 pixels
    pixels = random_pixels(model, 1)
    changed = pixels.clone()
    changed[..., 8:16, 8:16] += 1.0  # patch 5: row 1, column 1
    with torch.no_grad():
        moved = (maskclip_patches(model, changed) - maskclip_patches(model, pixels)).norm(dim=-1)[0]
        moved_by_clip = (clip_patches(model, changed) - clip_patches(model, pixels)).norm(dim=-1)[0]
    assert moved[5] > 1e-3
    assert torch.all(moved[torch.arange(16) != 5] == 0)
    assert torch.all(moved_by_clip > 1e-6)  # CLIP's attention spreads the change to every patch


def test_no_gradients_are_needed(small_vit: CLIP) -> None:
    pixels = random_pixels(small_vit, 2)
    for method in METHODS:
        with_grad = dense_patches(small_vit, pixels, method)
        with torch.inference_mode():
            without = dense_patches(small_vit, pixels, method)
        assert not without.requires_grad
        torch.testing.assert_close(without, with_grad.detach())


def test_towers_without_patch_tokens_and_unknown_names_say_why(small_vit: CLIP) -> None:
    resnet = seeded_clip(TINY_RESNET_CFG)
    with pytest.raises(ValueError, match="ViT image tower"):
        dense_patches(resnet, torch.zeros(1, 3, 32, 32), "sclip")
    with pytest.raises(ValueError, match="Unknown dense map method 'gradcam'"):
        dense_patches(small_vit, random_pixels(small_vit, 1), "gradcam")


def test_every_method_runs_on_the_offline_model(offline_model) -> None:
    model = offline_model.model
    pixels = torch.stack([offline_model.preprocess(Image.open(SCENES_DIR / f"scene_0{i}.png")) for i in (0, 1)])
    rows, cols = model.visual.grid_size
    with torch.no_grad():
        for method in METHODS:
            patches = dense_patches(model, pixels, method)
            assert patches.shape == (2, rows * cols, model.visual.proj.shape[1])
            assert torch.isfinite(patches).all()
            if method == "clip":
                torch.testing.assert_close(patches, image_embeddings(model, pixels)[1])
            else:
                with last_block_as(model, method):
                    torch.testing.assert_close(patches, open_clip_patches(model, pixels), atol=1e-5, rtol=1e-4)


# --- the methods as map kinds of the Grounding view, its score and eval-grounding ------------------------------


def test_each_method_is_a_map_kind_drawn_and_scored_as_its_cosine_with_the_caption_tokens() -> None:
    from vlviz.data.scenes import generate_scenes
    from vlviz.grounding.maps import DENSE_KINDS, model_caption_maps, model_scene_maps, score_scenes
    from vlviz.grounding.sparc import grounding_maps

    model = load_model(OFFLINE_SPEC, device="cpu")
    scenes = generate_scenes(3, seed=5, image_size=64)
    images, captions = scenes.pil_images(), scenes.captions
    assert set(DENSE_KINDS) == {"maskclip", "sclip", "clearclip", "naclip"}
    tokens = model.encode_pairs(images, captions).token_features.float()
    pixels = torch.stack([model.preprocess(image) for image in images])
    for kind in DENSE_KINDS:
        patches = dense_patches(model.model, pixels, kind).float()
        maps, previous = model_scene_maps(model, images, captions, kind)
        torch.testing.assert_close(maps, grounding_maps(tokens, patches, "cosine"))
        on_previous = grounding_maps(tokens, dense_patches(model.model, pixels.roll(1, dims=0), kind).float(), "cosine")
        torch.testing.assert_close(previous, on_previous)  # caption n on image n - 1
        maps = model_caption_maps(model, images[0], captions[0], kind)
        assert maps.kind == kind and maps.word_maps.shape == (len(maps.words), 8, 8)
        assert float(maps.word_maps.abs().max()) <= 1 + 1e-5  # cosines
    scores = score_scenes(model, scenes, kinds=["sparc", *DENSE_KINDS])
    assert all(0 <= scores[kind]["colour"]["pointing_game"] <= 1 for kind in DENSE_KINDS)
    assert scores["maskclip"] != scores["sparc"]
