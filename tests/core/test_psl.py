"""PSL: the exact EMA update, the alpha ramp, the targets from keywords, and the loss's terms."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from torch import nn

from tests.conftest import TINY_VIT_CFG
from vlviz.keywords import caption_keywords
from vlviz.losses import LOSSES, create_loss
from vlviz.losses.psl import PslLoss, ema_update

VOCABULARY = ["red", "blue", "circle", "square", "small", "large", "top", "left"]


@pytest.fixture(scope="module")
def tiny() -> tuple[CLIP, object]:
    torch.manual_seed(0)
    return CLIP(**TINY_VIT_CFG, output_dict=True), open_clip.get_tokenizer("ViT-B-32", context_length=16)


def test_ema_update_is_exact() -> None:
    ema, online = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        ema.weight.copy_(torch.tensor([[1.0, -2.0]]))
        ema.bias.fill_(0.5)
        online.weight.copy_(torch.tensor([[3.0, 2.0]]))
        online.bias.fill_(-1.5)
    ema_update(ema, online, momentum=0.75)  # 0.75 * ema + 0.25 * online, exact in binary floating point
    assert ema.weight.tolist() == [[1.5, -1.0]] and ema.bias.tolist() == [0.0]
    assert online.weight.tolist() == [[3.0, 2.0]]  # the online head is untouched


def test_after_step_moves_the_momentum_head_by_0_005(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    loss = PslLoss(model, tokenizer, vocabulary=VOCABULARY)
    assert loss.config.momentum == 0.995 and loss.config.alpha == 0.4
    assert all(torch.equal(e, o) for e, o in zip(loss.ema_head.parameters(), loss.head.parameters()))  # a copy
    with torch.no_grad():
        loss.head.weight.fill_(1.0)
        loss.ema_head.weight.fill_(0.0)
    loss.after_step()
    expected = torch.full_like(loss.head.weight, 0.995 * 0.0 + 0.005 * 1.0)
    assert torch.allclose(loss.ema_head.weight, expected, rtol=0, atol=1e-9) and int(loss.steps) == 1
    assert not any(p.requires_grad for p in loss.ema_head.parameters())


def test_alpha_ramps_up_over_the_first_steps(tiny: tuple[CLIP, object]) -> None:
    loss = PslLoss(*tiny, vocabulary=VOCABULARY, alpha_ramp_steps=4)
    alphas = []
    for _ in range(6):
        alphas.append(loss.current_alpha())
        loss.after_step()
    assert alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert PslLoss(*tiny, vocabulary=VOCABULARY, alpha_ramp_steps=0).current_alpha() == 0.4


def test_targets_are_the_keywords_in_the_vocabulary(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    captions = ["a small red circle at the top left", "a large blue square"]
    loss = PslLoss(model, tokenizer, vocabulary=VOCABULARY)
    keywords, mentioned = loss.targets(tokenizer(captions), captions, model)
    expected = [[w in row for w in VOCABULARY] for row in caption_keywords(model, tokenizer, captions).keywords]
    assert keywords.bool().tolist() == expected
    assert mentioned.tolist() == [
        [True, False, True, False, True, False, True, True],
        [False, True, False, True, False, True, False, False],
    ]


def test_the_loss_is_bce_against_mixed_targets(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    captions = ["a small red circle at the top left", "a large blue square"]
    loss = create_loss("psl", model=model, tokenizer=tokenizer, vocabulary=VOCABULARY, alpha_ramp_steps=0)
    assert LOSSES["psl"] is PslLoss
    features = torch.nn.functional.normalize(torch.randn(2, TINY_VIT_CFG["embed_dim"]), dim=-1)
    out = loss(image_features=features, ids=tokenizer(captions), captions=captions, model=model)
    keywords, _ = loss.targets(tokenizer(captions), captions, model)
    target = 0.6 * keywords + 0.4 * torch.sigmoid(loss.ema_head(features))
    reference = torch.nn.functional.binary_cross_entropy_with_logits(loss.head(features), target)
    assert out["psl_loss"].item() == pytest.approx(reference.item(), rel=1e-6)
    assert set(out) == {"psl_loss", "precision_at_3", "targets_per_caption", "alpha"}
    assert 0 <= float(out["precision_at_3"]) <= 1 and float(out["alpha"]) == pytest.approx(0.4)


@pytest.mark.parametrize(("kwargs", "message"), [({"momentum": 1.0}, "momentum"), ({"vocabulary": [" "]}, "empty")])
def test_bad_options_are_refused(tiny: tuple[CLIP, object], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PslLoss(*tiny, **kwargs)


def test_it_is_built_for_a_model() -> None:
    with pytest.raises(ValueError, match="pass model= and tokenizer="):
        create_loss("psl")
