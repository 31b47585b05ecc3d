"""Every registered loss, checked by the same code: a new loss in `LOSSES` is tested without a new test."""

from __future__ import annotations

import dataclasses
import math

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.conftest import TINY_VIT_CFG
from vlviz.data.scenes import generate_scenes
from vlviz.data.sources import normalise_uint8
from vlviz.losses import LOSSES, Loss, create_loss, loss_keys
from vlviz.losses.siglip import SiglipLoss
from vlviz.models.tokens import real_token_mask
from vlviz.training.loop import forward_features

CFG = {**TINY_VIT_CFG, "vision_cfg": {**TINY_VIT_CFG["vision_cfg"], "image_size": 32}}
TOWER_PARAMETERS = {"image": "visual.conv1.weight", "text": "token_embedding.weight"}


def _batch(loss: Loss, model: CLIP, tokenizer) -> dict:
    """What the trainer passes the loss for a batch of 6 scenes."""
    scenes = generate_scenes(6, seed=3, image_size=32)
    pixels = normalise_uint8(
        torch.from_numpy(scenes.images), open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    )
    ids = tokenizer(scenes.captions)
    out = forward_features(model, pixels, ids, with_tokens=loss.needs_tokens)
    if loss.needs_tokens:
        out["token_mask"] = real_token_mask(tokenizer, ids)
    if loss.needs_inputs:
        out |= {"pixels": pixels, "ids": ids, "captions": scenes.captions, "model": model}
    return out


@pytest.fixture
def tiny(name: str) -> tuple[CLIP, object]:
    """The tiny model, with a sigmoid head (a learned `logit_bias`) for the loss that needs one."""
    torch.manual_seed(0)
    logit_bias = -10.0 if LOSSES[name] is SiglipLoss else None
    model = CLIP(**CFG, init_logit_bias=logit_bias, output_dict=True)
    return model, open_clip.get_tokenizer("ViT-B-32", context_length=16)


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_registered_loss_is_finite_named_and_trains_its_towers(name: str, tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    loss = create_loss(name, model=model, tokenizer=tokenizer)
    assert isinstance(loss, Loss) and loss.terms and set(loss.shares) <= set(loss.diagnostics)
    out = loss(**_batch(loss, model, tokenizer))
    assert {key for key in out if key.endswith("_loss")} == set(loss.terms)
    assert {key for key in out if not key.endswith("_loss")} == set(loss.diagnostics)
    assert all(value.ndim == 0 and math.isfinite(float(value.detach())) for value in out.values())
    # One step of the loss's own heads first: a head that starts at zero (PSL's) passes no gradient before it.
    heads = list(loss.parameters())
    if heads:
        sum(out[key] for key in loss.terms).backward()
        torch.optim.SGD(heads, lr=1.0).step()
        model.zero_grad(set_to_none=True)
        out = loss(**_batch(loss, model, tokenizer))
    sum(out[key] for key in loss.terms).backward()
    parameters = dict(model.named_parameters())
    for tower, parameter in TOWER_PARAMETERS.items():
        grad = parameters[parameter].grad
        reached = grad is not None and bool(grad.abs().sum() > 0)
        assert reached == (tower in loss.towers), f"{name}: gradients reach the {tower} tower: {reached}"
    loss.after_step()  # every loss has one (a no-op or an EMA update)


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_loss_config_names_its_options_and_rebuilds_it(name: str, tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    loss = create_loss(name, model=model, tokenizer=tokenizer)
    assert dataclasses.is_dataclass(loss.config) and loss.config.__dataclass_params__.frozen
    options = dataclasses.asdict(loss.config)  # what `save_loss_heads` writes beside a checkpoint
    assert create_loss(name, model=model, tokenizer=tokenizer, **options).config == loss.config
    with pytest.raises(ValueError, match="has no option 'nonsense'; its options: "):
        create_loss(name, model=model, tokenizer=tokenizer, nonsense=1)


def test_loss_keys_name_every_registered_term() -> None:
    assert "clip/contrastive_loss" in loss_keys("terms") and "psl/precision_at_3" in loss_keys("shares")
    assert all(key.split("/", 1)[0] in LOSSES for key in loss_keys("diagnostics"))
