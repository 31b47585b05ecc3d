"""PSL: the exact EMA update, the alpha ramp, the targets from keywords, and the loss's terms."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from torch import nn

from tests.conftest import TINY_VIT_CFG
from vlviz.keywords import caption_keywords, default_concepts
from vlviz.losses import LOSSES, create_loss
from vlviz.losses.heads import load_loss_heads, save_loss_heads
from vlviz.losses.psl import CAPACITY, PslLoss, ema_update

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
    loss = PslLoss(model, tokenizer, vocabulary_source="fixed", vocabulary=VOCABULARY)
    keywords, mentioned = loss.targets(tokenizer(captions), captions, model)
    voted = caption_keywords(model, tokenizer, captions, content_words_only=True).keywords  # PSL's default vote
    assert keywords.bool().tolist() == [[w in row for w in VOCABULARY] for row in voted]
    assert mentioned.tolist() == [
        [True, False, True, False, True, False, True, True],
        [False, True, False, True, False, True, False, False],
    ]


def test_the_captions_vocabulary_keeps_plurals_the_fixed_list_drops(tiny: tuple[CLIP, object]) -> None:
    """Four content words, all voted (4 candidates, 4 votes per head); the 315-word list knows only two."""
    model, tokenizer = tiny
    captions = ["two red circles near the tall towers"]
    ids = tokenizer(captions)
    grown = PslLoss(model, tokenizer)  # the default: the training captions' words
    assert grown.config.vocabulary_source == "captions" and grown.head.out_features == CAPACITY
    keywords, mentioned = grown.targets(ids, captions, model)
    assert grown.vocabulary == ["red", "circles", "tall", "towers"]  # stop words and numbers get no slot
    assert keywords.tolist() == [[1.0] * 4] and mentioned.tolist() == [[True] * 4]
    fixed = PslLoss(model, tokenizer, vocabulary_source="fixed")  # vlviz's previous vocabulary
    assert fixed.vocabulary == list(default_concepts()) and len(fixed.vocabulary) == 315
    keywords, _ = fixed.targets(ids, captions, model)
    assert sorted(fixed.vocabulary[v] for v in keywords[0].nonzero().flatten().tolist()) == ["red", "tall"]


def test_words_get_slots_while_training_and_room_lasts(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    loss = PslLoss(model, tokenizer, vocabulary=["blue"], capacity=3)
    captions = ["a red circle", "a blue square"]
    loss.targets(tokenizer(captions), captions, model)
    assert loss.vocabulary == ["blue", "red", "circle"] and loss.config.vocabulary == ("blue", "red", "circle")
    loss.eval().targets(tokenizer(["a green cross"]), ["a green cross"], model)
    assert loss.vocabulary == ["blue", "red", "circle"]  # full, and evaluation adds no word anyway
    with pytest.raises(ValueError, match="do not fit in capacity=1"):
        PslLoss(model, tokenizer, vocabulary=["red", "blue"], capacity=1)


def test_only_the_named_slots_learn_and_a_saved_config_rebuilds_them(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    captions = ["a small red circle at the top left", "a large blue square"]
    loss = PslLoss(model, tokenizer, alpha_ramp_steps=0)
    features = torch.nn.functional.normalize(torch.randn(2, TINY_VIT_CFG["embed_dim"]), dim=-1)
    out = loss(image_features=features, ids=tokenizer(captions), captions=captions, model=model)
    out["psl_loss"].backward()
    used = len(loss.vocabulary)
    assert used == 8 and loss.head.weight.grad[:used].abs().sum() > 0
    assert not loss.head.weight.grad[used:].any() and not loss.head.bias.grad[used:].any()
    assert loss.concept_probabilities(features).shape == (2, used)
    options = dataclasses.asdict(loss.config)  # what `save_loss_heads` writes beside a checkpoint
    rebuilt = create_loss("psl", model=model, tokenizer=tokenizer, **options)
    assert rebuilt.config == loss.config and rebuilt.vocabulary == loss.vocabulary
    rebuilt.load_state_dict(loss.state_dict())  # the same slots, the same shapes


def test_no_word_yet_gives_a_zero_loss_not_nan(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    loss = PslLoss(model, tokenizer).eval()  # evaluation names no word
    features = torch.nn.functional.normalize(torch.randn(1, TINY_VIT_CFG["embed_dim"]), dim=-1)
    out = loss(image_features=features, ids=tokenizer(["a red circle"]), captions=["a red circle"], model=model)
    assert out["psl_loss"].item() == 0.0 and out["precision_at_3"].item() == 0.0


def test_the_loss_is_bce_against_mixed_targets(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    captions = ["a small red circle at the top left", "a large blue square"]
    loss = create_loss("psl", model=model, tokenizer=tokenizer, vocabulary=VOCABULARY, alpha_ramp_steps=0)
    assert LOSSES["psl"] is PslLoss
    features = torch.nn.functional.normalize(torch.randn(2, TINY_VIT_CFG["embed_dim"]), dim=-1)
    out = loss(image_features=features, ids=tokenizer(captions), captions=captions, model=model)
    keywords, _ = loss.targets(tokenizer(captions), captions, model)
    used = len(VOCABULARY)  # the captions' words are all in VOCABULARY: no slot added, the other slots unused
    target = 0.6 * keywords + 0.4 * torch.sigmoid(loss.ema_head(features)[:, :used])
    reference = torch.nn.functional.binary_cross_entropy_with_logits(loss.head(features)[:, :used], target)
    assert out["psl_loss"].item() == pytest.approx(reference.item(), rel=1e-6)
    assert set(out) == {"psl_loss", "precision_at_3", "targets_per_caption", "alpha"}
    assert 0 <= float(out["precision_at_3"]) <= 1 and float(out["alpha"]) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"momentum": 1.0}, "momentum"), ({"vocabulary": [" "]}, "empty"), ({"vocabulary_source": "bpe"}, "captions")],
)
def test_bad_options_are_refused(tiny: tuple[CLIP, object], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PslLoss(*tiny, **kwargs)


def test_it_is_built_for_a_model() -> None:
    with pytest.raises(ValueError, match="pass model= and tokenizer="):
        create_loss("psl")


def test_heads_saved_before_the_vocabulary_option_load_with_the_fixed_list(
    tiny: tuple[CLIP, object], tmp_path: Path
) -> None:
    model, tokenizer = tiny
    old = create_loss("psl", model=model, tokenizer=tokenizer, vocabulary_source="fixed", content_words_only=False)
    save_loss_heads({"psl": old}, tmp_path)
    options_file = tmp_path / "loss_heads.json"
    saved = json.loads(options_file.read_text())
    del saved["psl"]["vocabulary_source"]  # as written before the option existed
    options_file.write_text(json.dumps(saved))
    loaded = load_loss_heads(tmp_path, model, tokenizer)["psl"]
    assert loaded.config.vocabulary_source == "fixed"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), old.state_dict().values()))
