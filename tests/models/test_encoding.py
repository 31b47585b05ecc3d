"""Encoding: shapes, normalisation, agreement with open_clip's own paths, and the content cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlviz.data.keys import content_key
from vlviz.models.encoding import VLModel
from vlviz.models.loading import load_model, model_config

CAPTIONS = ["a red circle", "a small blue square at the top", "two green triangles"]


def _images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def tiny(tiny_vit_dir: Path):
    model = load_model(str(tiny_vit_dir), device="cpu")
    model._image_cache._items.clear()
    model._text_cache._items.clear()
    return model


def test_encode_pairs_shapes_and_normalisation(tiny) -> None:
    enc = tiny.encode_pairs(_images(3), CAPTIONS)
    assert enc.image_features.shape == enc.text_features.shape == (3, 16)
    assert torch.allclose(enc.image_features.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(enc.text_features.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert enc.grid_size == (4, 4) and enc.patch_features.shape == (3, 16, 16)
    assert enc.token_features.shape == (3, 16, 16)
    assert enc.tokens.words[1] == ["a", "small", "blue", "square", "at", "the", "top"]
    assert enc.tokens.words[2] == ["two", "green", "triangles"]
    assert enc.tokens.word_mask.sum(dim=1).tolist() == [3, 7, 4]  # "triangles" is two BPE pieces
    assert enc.logit_bias is None and enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_global_features_match_open_clip(tiny) -> None:
    images = _images(2)
    enc = tiny.encode_pairs(images, CAPTIONS[:2])
    pixels = torch.stack([tiny.preprocess(im) for im in images])
    with torch.no_grad():
        reference_image = F.normalize(tiny.model.encode_image(pixels), dim=-1)
        reference_text = F.normalize(tiny.model.encode_text(tiny.tokenizer(CAPTIONS[:2])), dim=-1)
    assert torch.allclose(enc.image_features, reference_image, atol=1e-5)
    assert torch.allclose(enc.text_features, reference_text, atol=1e-5)


def test_projected_tokens_match_the_output_tokens_path(tiny) -> None:
    """Patches equal open_clip's `output_tokens` patch tokens @ visual.proj; the end-of-text token is the caption."""
    images = _images(2)
    enc = tiny.encode_pairs(images, CAPTIONS[:2])
    pixels = torch.stack([tiny.preprocess(im) for im in images])
    visual = tiny.model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, patch_tokens = visual(pixels)
    finally:
        visual.output_tokens = False
    assert torch.allclose(enc.patch_features, patch_tokens @ visual.proj, atol=1e-5)
    eot = enc.tokens.ids.argmax(dim=1)
    pooled = F.normalize(enc.token_features[torch.arange(2), eot], dim=-1)
    assert torch.allclose(pooled, enc.text_features, atol=1e-5)


def test_second_call_runs_no_model_forward(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(3)
    first = tiny.encode_pairs(images, CAPTIONS)
    calls = []
    monkeypatch.setattr(tiny.model.visual, "forward_intermediates", lambda *a, **k: calls.append("image"))
    monkeypatch.setattr(tiny.model, "forward_intermediates", lambda *a, **k: calls.append("text"))
    again = tiny.encode_pairs(list(reversed(images)), list(reversed(CAPTIONS)))
    assert calls == []
    assert torch.equal(again.image_features, first.image_features.flip(0))
    assert torch.equal(tiny.encode_texts(CAPTIONS[:1]), first.text_features[:1])


def test_only_unseen_items_are_encoded_and_duplicates_once(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(4)
    tiny.encode_images(images[:2])
    seen: list[int] = []
    forward = tiny._forward_images
    monkeypatch.setattr(tiny, "_forward_images", lambda batch: (seen.append(len(batch)), forward(batch))[1])
    out = tiny.encode_images([images[0], images[2], images[3], images[2]])
    assert seen == [2]
    assert torch.equal(out[1], out[3])


def test_content_key_depends_on_content_not_identity() -> None:
    a, b = _images(2)
    assert content_key(a) == content_key(a.copy()) != content_key(b)
    assert content_key("a cat") == content_key("a cat") != content_key("a cat ")


def test_long_captions_are_reported_as_truncated(tiny) -> None:
    long_caption = " ".join(["red"] * 40)
    assert tiny.truncated_captions(["short", long_caption]) == [1]


def test_mismatched_counts_are_refused(tiny) -> None:
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        tiny.encode_pairs(_images(2), ["one"])


def test_resnet_tower_has_no_patch_embeddings_and_says_why(tiny_resnet_dir: Path) -> None:
    model = load_model(str(tiny_resnet_dir), device="cpu")
    enc = model.encode_pairs(_images(2), CAPTIONS[:2])
    assert enc.patch_features is None and enc.grid_size is None
    assert "ModifiedResNet" in enc.patches_unavailable
    assert enc.image_features.shape == (2, 16) and enc.token_features.shape == (2, 16, 16)


def test_siglip_style_model_has_a_bias_and_separate_text_tower(tiny_siglip_dir: Path) -> None:
    from vlviz.metrics.affinity import affinity_report

    model = load_model(str(tiny_siglip_dir), device="cpu")
    assert type(model.model).__name__ == "CustomTextCLIP"
    enc = model.encode_pairs(_images(2), CAPTIONS[:2])
    assert enc.logit_bias == pytest.approx(-10.0)
    assert enc.token_features.shape == (2, 16, 16) and enc.patch_features.shape == (2, 16, 16)
    last = F.normalize(enc.token_features[:, -1], dim=-1)  # 'last' pooling reads the final position
    assert torch.allclose(last, enc.text_features, atol=1e-5)
    report = affinity_report(enc.image_features, enc.text_features, enc.logit_scale, enc.logit_bias)
    assert report.head == "sigmoid"
    expected = torch.sigmoid(enc.logit_scale * enc.image_features @ enc.text_features.T - 10)
    assert torch.allclose(report.image_to_text_probability, expected, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_model_loaded_in_half_precision_takes_half_pixels(precision: str, tiny_vit_dir: Path) -> None:
    """open_clip's "bf16"/"fp16" keep the first parameter (positional embedding) in fp32: inputs are still half."""
    name = f"local-dir:{tiny_vit_dir}"
    loaded, _, preprocess = open_clip.create_model_and_transforms(name, precision=precision)
    assert next(loaded.parameters()).dtype == torch.float32
    model = VLModel(name, loaded, preprocess, open_clip.get_tokenizer(name), torch.device("cpu"), model_config(name))
    assert model.dtype == getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision])
    image = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    encoding = model.encode_pairs([image], ["a red circle"])
    assert torch.isfinite(encoding.image_features.float()).all()
