"""Gradient map methods (LeGrad, Grad-ECLIP), each against a reference that shares none of its code.

The references follow the official repositories' structure, one image at a time: LeGrad as ``LeWrapper``
computes it (the image repeated once per word, open_clip's own forward with every block from the start layer
swapped for one that keeps its attention map, in open_clip's sequence-first layout, then per layer the summed
diagonal similarities differentiated w.r.t. that map, through the whole pass), and Grad-ECLIP as its image
notebook does (the last block by hand in sequence-first layout, then a loop over words, each cosine
differentiated w.r.t. the attention output and the class token's row read). Plus batching, invariants
(finite, in [0, 1], no gradients left on parameters, inference mode, half precision), refusals, and the methods
as map kinds of the Grounding view, its score and eval-grounding.
"""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from PIL import Image
from torch import nn

from tests.conftest import SCENES_DIR, TINY_RESNET_CFG, TINY_VIT_CFG
from tests.grounding.conftest import random_pixels, seeded_clip
from vlviz.grounding.gradient import GRADIENT_METHODS, gradeclip_maps, gradient_maps, legrad_maps
from vlviz.models.encoding import text_embeddings

METHODS = list(GRADIENT_METHODS)
# Three blocks of four heads, so the start layer, the head order and the blocks before the differentiated ones all
# matter; a 4x4 patch grid. The one-head twin is the official Grad-ECLIP's own attention.
SMALL_VIT_CFG = {
    **TINY_VIT_CFG,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "head_width": 8},
}
ONE_HEAD_VIT_CFG = {**SMALL_VIT_CFG, "vision_cfg": {**SMALL_VIT_CFG["vision_cfg"], "head_width": 32}}


@pytest.fixture(scope="module")
def small_vit() -> CLIP:
    return seeded_clip(SMALL_VIT_CFG)


@pytest.fixture(scope="module")
def one_head_vit() -> CLIP:
    return seeded_clip(ONE_HEAD_VIT_CFG)


def random_words(model: nn.Module, batch: int, words: int, seed: int = 2) -> torch.Tensor:
    width = model.visual.proj.shape[1]
    return torch.randn(batch, words, width, generator=torch.Generator().manual_seed(seed))


def scene_pixels_and_tokens(vl_model, rows: int = 2, words: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Bundled scenes as the offline model sees them, with their captions' first projected tokens."""
    images = [Image.open(SCENES_DIR / f"scene_0{i}.png") for i in range(rows)]
    captions = [f"a {colour} circle and a blue square" for colour in ("red", "green", "yellow")[:rows]]
    pixels = torch.stack([vl_model.preprocess(image) for image in images])
    with torch.no_grad():
        tokens = text_embeddings(vl_model.model, vl_model.tokenizer(captions))[1]
    return pixels, tokens[:, 1 : 1 + words]  # real caption tokens, after the start token


def min_max_by_hand(emap: torch.Tensor) -> torch.Tensor:
    emap = emap - emap.min()
    return emap / emap.max()


# --- LeGrad as the official LeWrapper computes it ----------------------------------------------------------------


def hooked_block_forward(block: nn.Module, batch_first: bool, kept: list) -> object:
    """A block forward as LeGrad's hooked one: attention by hand in (L, N, C), its map and its output kept."""

    def forward(q_x: torch.Tensor, k_x=None, v_x=None, attn_mask=None) -> torch.Tensor:
        x = q_x.transpose(0, 1) if batch_first else q_x  # LND
        length, batch, width = x.shape
        heads = block.attn.num_heads
        q, k, v = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        q = q.contiguous().view(length, batch * heads, -1).transpose(0, 1)
        k = k.contiguous().view(length, batch * heads, -1).transpose(0, 1)
        v = v.contiguous().view(length, batch * heads, -1).transpose(0, 1)
        attn = torch.bmm(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(dim=-1)  # (N * heads, L, L)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(length, batch, width)
        x = x + block.ls_1(block.attn.out_proj(out))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        kept.append((attn, x))
        return x.transpose(0, 1) if batch_first else x

    return forward


def legrad_reference(model: nn.Module, image: torch.Tensor, words: torch.Tensor, start_layer: int = -2) -> torch.Tensor:
    """(T, P) LeGrad maps of one image (3, H, W) for words (T, D), as ``LeWrapper.compute_legrad_clip``."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    start = start_layer if start_layer >= 0 else len(blocks) + start_layer
    text = F.normalize(words, dim=-1)
    prompts = len(text)
    kept: list = []
    patches = [
        mock.patch.object(block, "forward", hooked_block_forward(block, visual.transformer.batch_first, kept))
        for block in blocks[start:]
    ]
    with torch.enable_grad():
        for patch in patches:
            patch.start()
        try:
            model.encode_image(image[None].repeat(prompts, 1, 1, 1))
        finally:
            for patch in patches:
                patch.stop()
        accumulated = 0
        for attn, feat in kept:
            image_features = F.normalize(visual.ln_post(feat.mean(dim=0)) @ visual.proj, dim=-1)
            sim = text @ image_features.T
            one_hot = torch.sum(torch.eye(prompts) * sim)
            grad = torch.autograd.grad(one_hot, [attn], retain_graph=True)[0]
            grad = grad.reshape(prompts, -1, *grad.shape[-2:]).clamp(min=0)  # (b h) n m -> b h n m
            accumulated = accumulated + grad.mean(dim=1).mean(dim=1)[:, 1:]
    low = accumulated.min(dim=-1, keepdim=True).values
    return (accumulated - low) / (accumulated.max(dim=-1, keepdim=True).values - low)


# --- Grad-ECLIP as its official notebook computes it ---------------------------------------------------------------


def last_block_input_by_hook(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(L, 1, C): what open_clip feeds its last image block for one image, sequence first."""
    seen: list[torch.Tensor] = []
    hook = model.visual.transformer.resblocks[-1].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.encode_image(image[None])
    finally:
        hook.remove()
    x = seen[0]
    return x.transpose(0, 1) if model.visual.transformer.batch_first else x


def attention_layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The notebook's scaled dot-product attention on (L, N, C), with the model's heads; its output (L, N, C)."""
    tgt_len, bsz, embed_dim = q.shape
    head_dim = embed_dim // num_heads
    q = (q * head_dim**-0.5).contiguous().view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    heads_out = torch.bmm(F.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)
    return heads_out.transpose(0, 1).contiguous().view(tgt_len, bsz, embed_dim)


def gradeclip_reference(model: nn.Module, image: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """(T, P) Grad-ECLIP maps of one image for words (T, D), as the notebook's ``clip_encode_dense`` and
    ``grad_eclip``, the spatial weight per head (one head: the notebook's ``sim_qk``)."""
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    heads = block.attn.num_heads
    text = F.normalize(words, dim=-1)
    with torch.enable_grad():
        x_in = last_block_input_by_hook(model, image)
        q, k, v = F.linear(block.ln_1(x_in), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        attn_output = attention_layer(q, k, v, heads)
        x = F.linear(attn_output, block.attn.out_proj.weight, block.attn.out_proj.bias) + x_in
        x = x + block.mlp(block.ln_2(x))
        x = visual.ln_post(x.permute(1, 0, 2)) @ visual.proj
        cosine = (F.normalize(x[:, 0], dim=-1) @ text.T)[0]
        head_dim = q.shape[-1] // heads
        cosine_qk = torch.empty(q.shape[0] - 1, q.shape[-1])  # (P, C): each channel its head's spatial weight
        for head in range(heads):
            channels = slice(head * head_dim, (head + 1) * head_dim)
            q_cls = F.normalize(q[:1, 0, channels], dim=-1)
            k_patch = F.normalize(k[1:, 0, channels], dim=-1)
            sim = (q_cls * k_patch).sum(-1)
            cosine_qk[:, channels] = ((sim - sim.min()) / (sim.max() - sim.min()))[:, None]
        maps = []
        for c in cosine:
            grad = torch.autograd.grad(c, attn_output, retain_graph=True)[0]
            grad_cls = grad[:1, 0, :]
            emap = F.relu((grad_cls * v[1:, 0, :] * cosine_qk).sum(-1))
            maps.append(min_max_by_hand(emap.detach()))
    return torch.stack(maps)


REFERENCES = {"legrad": legrad_reference, "gradeclip": gradeclip_reference}


def reference_maps(model: nn.Module, pixels: torch.Tensor, words: torch.Tensor, method: str) -> torch.Tensor:
    return torch.stack([REFERENCES[method](model, image, image_words) for image, image_words in zip(pixels, words)])


# --- tests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", ["small_vit", "one_head_vit", "vit_b16"])
def test_each_method_matches_the_official_codes_structure(
    model_name: str, method: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_name)
    pixels, words = random_pixels(model, 2), random_words(model, 2, 2)
    ours = gradient_maps(model, pixels, words, method)
    assert torch.all(ours.amax(dim=-1) == 1)  # no flat map: the references are not compared on zeros
    torch.testing.assert_close(ours, reference_maps(model, pixels, words, method), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("start_layer", [-1, 0])  # the default, -2, is block 1 of 3
def test_legrad_aggregates_every_layer_from_its_start(small_vit: CLIP, start_layer: int) -> None:
    pixels, words = random_pixels(small_vit, 2), random_words(small_vit, 2, 3)
    ours = legrad_maps(small_vit, pixels, words, start_layer=start_layer)
    reference = torch.stack([legrad_reference(small_vit, i, w, start_layer) for i, w in zip(pixels, words)])
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=1e-3)
    assert not torch.allclose(ours, legrad_maps(small_vit, pixels, words), atol=1e-3)  # the default, -2, differs


@pytest.mark.parametrize("method", METHODS)
def test_each_method_matches_its_reference_on_the_offline_model(offline_model, method: str) -> None:
    pixels, tokens = scene_pixels_and_tokens(offline_model)
    ours = gradient_maps(offline_model.model, pixels, tokens, method)
    rows, cols = offline_model.model.visual.grid_size
    assert ours.shape == (2, tokens.shape[1], rows * cols)
    reference = reference_maps(offline_model.model, pixels, tokens, method)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_shapes_range_and_a_batch_equals_its_images_and_words_one_at_a_time(small_vit: CLIP, method: str) -> None:
    pixels, words = random_pixels(small_vit, 3), random_words(small_vit, 3, 4)
    batched = gradient_maps(small_vit, pixels, words, method)
    assert batched.shape == (3, 4, 16) and batched.dtype == torch.float32  # (B, T, P = 4x4)
    assert torch.isfinite(batched).all() and batched.min() >= 0 and batched.max() <= 1
    one_at_a_time = torch.stack([
        torch.cat([gradient_maps(small_vit, image[None], word[None, None], method)[0] for word in image_words])
        for image, image_words in zip(pixels, words)
    ])  # fmt: skip
    torch.testing.assert_close(batched, one_at_a_time, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[:, 0], batched[:, 1], atol=1e-3)  # a map depends on its word


@pytest.mark.parametrize("method", METHODS)
def test_no_gradients_stay_on_the_model_and_inference_mode_callers_get_the_same_maps(
    small_vit: CLIP, method: str
) -> None:
    before = copy.deepcopy(small_vit.state_dict())
    flags = [p.requires_grad for p in small_vit.parameters()]
    pixels, words = random_pixels(small_vit, 2), random_words(small_vit, 2, 3)
    maps = gradient_maps(small_vit, pixels, words, method)
    with torch.inference_mode():
        pixels_i, words_i = pixels.clone(), words.clone()  # inference tensors, as the encoders' caches hold
        under_inference = gradient_maps(small_vit, pixels_i, words_i, method)
    assert not maps.requires_grad and not under_inference.requires_grad
    torch.testing.assert_close(under_inference, maps)
    assert all(p.grad is None for p in small_vit.parameters())
    assert [p.requires_grad for p in small_vit.parameters()] == flags
    for name, tensor in small_vit.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("method", METHODS)
def test_half_precision_models_are_differentiated_in_float32(small_vit: CLIP, method: str) -> None:
    half = copy.deepcopy(small_vit).to(torch.bfloat16)
    pixels, words = random_pixels(small_vit, 2), random_words(small_vit, 2, 3)
    maps = gradient_maps(half, pixels.to(torch.bfloat16), words.to(torch.bfloat16), method)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())  # the model is left in its own dtype


def test_towers_and_arguments_the_methods_cannot_read_say_why(small_vit: CLIP) -> None:
    resnet = seeded_clip(TINY_RESNET_CFG)
    words = torch.zeros(1, 2, 16)
    for method in METHODS:
        with pytest.raises(ValueError, match="ViT image tower"):
            gradient_maps(resnet, torch.zeros(1, 3, 32, 32), words, method)
    with pytest.raises(ValueError, match="Unknown gradient map method 'gradcam'"):
        gradient_maps(small_vit, random_pixels(small_vit, 1), words, "gradcam")
    with pytest.raises(ValueError, match="Start layer 3 is outside"):
        legrad_maps(small_vit, random_pixels(small_vit, 1), words, start_layer=3)
    with pytest.raises(ValueError, match=r"\(B, T, D\) for B = 2"):
        legrad_maps(small_vit, random_pixels(small_vit, 2), words)
    averaged = seeded_clip({**SMALL_VIT_CFG, "vision_cfg": {**SMALL_VIT_CFG["vision_cfg"], "pool_type": "avg"}})
    with pytest.raises(ValueError, match="pools by 'avg'"):
        gradeclip_maps(averaged, random_pixels(averaged, 1), words)
    assert torch.isfinite(legrad_maps(averaged, random_pixels(averaged, 1), words)).all()  # LeGrad pools itself
    one_block = seeded_clip(TINY_VIT_CFG)  # the default start, the last two blocks, takes its one block
    pixels = random_pixels(one_block, 1)
    torch.testing.assert_close(legrad_maps(one_block, pixels, words), legrad_maps(one_block, pixels, words, 0))


# --- the methods as map kinds of the Grounding view, its score and eval-grounding ------------------------------------


def test_each_method_is_a_map_kind_drawn_per_caption_token_and_scored(offline_model) -> None:
    from vlviz.data.scenes import generate_scenes
    from vlviz.grounding.maps import GRADIENT_KINDS, MODEL_KINDS, model_caption_maps, model_scene_maps, score_scenes

    scenes = generate_scenes(3, seed=5, image_size=64)
    images, captions = scenes.pil_images(), scenes.captions
    assert set(GRADIENT_KINDS) == {"legrad", "gradeclip"} and set(GRADIENT_KINDS) <= set(MODEL_KINDS)
    encoding = offline_model.encode_pairs(images, captions)
    pixels = torch.stack([offline_model.preprocess(image) for image in images])
    used = int(encoding.tokens.word_mask.any(0).nonzero().max()) + 1
    for kind in GRADIENT_KINDS:
        maps, previous = model_scene_maps(offline_model, images, captions, kind)
        assert maps.shape == (*encoding.token_features.shape[:2], 64)
        mapped = gradient_maps(offline_model.model, pixels, encoding.token_features[:, :used], kind)
        torch.testing.assert_close(maps[:, :used], mapped)
        assert torch.all(maps[:, used:] == 0)  # past every caption's last real token nothing is mapped
        on_previous = gradient_maps(
            offline_model.model, pixels.roll(1, dims=0), encoding.token_features[:, :used], kind
        )
        torch.testing.assert_close(previous[:, :used], on_previous)  # caption n on image n - 1
        drawn = model_caption_maps(offline_model, images[0], captions[0], kind)
        assert drawn.kind == kind and drawn.word_maps.shape == (len(drawn.words), 8, 8)
        assert float(drawn.word_maps.min()) >= 0 and float(drawn.word_maps.max()) <= 1
    scores = score_scenes(offline_model, scenes, kinds=["sparc", *GRADIENT_KINDS])
    assert all(0 <= scores[kind]["colour"]["pointing_game"] <= 1 for kind in GRADIENT_KINDS)
    assert scores["legrad"] != scores["gradeclip"]
