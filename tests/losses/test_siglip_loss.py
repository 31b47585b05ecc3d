"""SigLIP's sigmoid loss: the paper's equation, open_clip's normalisation, its gradients, and the default it is."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss
from open_clip.model import CLIP, CustomTextCLIP

from tests.conftest import TINY_SIGLIP_CFG, TINY_VIT_CFG
from vlviz.data.sources import SceneSource
from vlviz.losses import LOSSES, create_loss
from vlviz.losses.siglip import SiglipLoss, siglip_sigmoid_loss
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.training.config import TrainConfig, default_losses
from vlviz.training.loop import train


def _siglip_model() -> CustomTextCLIP:
    torch.manual_seed(0)
    return CustomTextCLIP(**{k: v for k, v in TINY_SIGLIP_CFG.items() if k != "custom_text"}, output_dict=True)


def _clip_model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(**TINY_VIT_CFG, output_dict=True)


def _batch(n: int = 5, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image, text = torch.randn(2, n, dim, generator=generator)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def test_a_hand_computed_batch_of_two() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    # logits = 10 * I T^T - 5 = [[1, 3], [3, 1]]: the pairs (diagonal) at 1, the non-pairs at 3.
    # -log sigmoid(1) = log(1 + e^-1) for each pair, -log sigmoid(-3) = log(1 + e^3) for each non-pair; / N = 2.
    expected = (2 * math.log(1 + math.exp(-1)) + 2 * math.log(1 + math.exp(3))) / 2
    loss = siglip_sigmoid_loss(image, text, torch.tensor(10.0), torch.tensor(-5.0))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_it_equals_a_sum_over_every_pair() -> None:
    image, text = _batch(n=6, dim=5, seed=1)
    scale, bias = 7.5, -3.0
    total = 0.0
    for i in range(6):
        for j in range(6):
            sign = 1.0 if i == j else -1.0
            logit = scale * float(image[i] @ text[j]) + bias
            total += math.log(1 + math.exp(-sign * logit))
    loss = siglip_sigmoid_loss(image, text, torch.tensor(scale), torch.tensor(bias))
    assert float(loss) == pytest.approx(total / 6, rel=1e-5)


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (112.0, -16.5), (1.0, 0.0)])
def test_it_matches_open_clip_siglip_loss_in_one_process(scale: float, bias: float) -> None:
    image, text = _batch(n=8, dim=16, seed=2)
    scale_t, bias_t = torch.tensor(scale), torch.tensor(bias)
    expected = SigLipLoss()(image, text, scale_t, bias_t)
    assert torch.allclose(siglip_sigmoid_loss(image, text, scale_t, bias_t), expected, rtol=1e-6)


def test_gradients_reach_the_features_the_scale_and_the_bias() -> None:
    raw_image, raw_text = (t.clone().requires_grad_(True) for t in _batch(n=4, dim=3, seed=3))
    log_scale, bias = torch.tensor(math.log(10.0), requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    out = SiglipLoss()(
        image_features=F.normalize(raw_image, dim=-1),
        text_features=F.normalize(raw_text, dim=-1),
        logit_scale=log_scale.exp(),
        logit_bias=bias,
    )
    out["sigmoid_loss"].backward()
    for name, tensor in {"image": raw_image, "text": raw_text, "scale": log_scale, "bias": bias}.items():
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), name
        assert tensor.grad.abs().sum() > 0, name
    # At bias -10 nearly every logit is negative: the pairs pull the bias up (d loss / d b < 0).
    assert float(bias.grad) < 0
    assert set(out) == {"sigmoid_loss", "logit_scale", "logit_bias"} and not out["logit_bias"].requires_grad


def test_a_model_without_a_sigmoid_head_is_refused_clearly() -> None:
    image, text = _batch()
    with pytest.raises(ValueError, match=r"needs a model with a sigmoid head \(a logit_bias.*use the clip loss"):
        create_loss("siglip")(image_features=image, text_features=text, logit_scale=torch.tensor(10.0))
    # The trainer's config says so before any step.
    with pytest.raises(ValueError, match="needs a model with a sigmoid head"):
        TrainConfig(losses={"clip": 1.0, "siglip": 1.0}).losses_for(_clip_model())


def test_a_sigmoid_head_defaults_to_siglip_and_clip_stays_selectable() -> None:
    assert LOSSES["siglip"] is SiglipLoss
    assert default_losses(True) == {"siglip": 1.0} and default_losses(False) == {"clip": 1.0}
    siglip, clip = _siglip_model(), _clip_model()
    assert TrainConfig().losses_for(siglip) == {"siglip": 1.0} and TrainConfig().notices_for(siglip) == []
    assert TrainConfig().losses_for(clip) == {"clip": 1.0} and TrainConfig().notices_for(clip) == []
    # The offline model is a CLIP (no logit_bias): it keeps CLIP's InfoNCE.
    assert TrainConfig().losses_for(load_model(OFFLINE_SPEC).model) == {"clip": 1.0}
    # clip on a SigLIP model is allowed, with a notice that says what it leaves untrained.
    asked = TrainConfig(losses={"clip": 1.0})
    assert asked.losses_for(siglip) == {"clip": 1.0}
    [notice] = asked.notices_for(siglip)
    assert "logit_bias" in notice and "siglip" in notice
    assert TrainConfig(losses={"clip": 1.0}).notices_for(clip) == []


def test_the_trainer_trains_the_logit_bias_with_siglip() -> None:
    model = _siglip_model()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=8)
    before = float(model.logit_bias.detach())
    config = TrainConfig(steps=2, batch_size=8, lr=1e-2, warmup_steps=0, eval_every=100, losses={"siglip": 1.0})
    records = list(train(model, tokenizer, source, config))
    after = float(model.logit_bias.detach())
    assert records[0]["siglip/logit_bias"] == pytest.approx(before) and after != pytest.approx(before)
    assert all(math.isfinite(record["siglip/sigmoid_loss"]) for record in records)
