"""The trainer: it learns, it stops on request, it freezes what it should, and its checkpoints load back exactly."""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.conftest import TINY_VIT_CFG
from vlviz.data.sources import SceneSource
from vlviz.losses import LOSSES, Loss, create_loss
from vlviz.losses.clip import clip_contrastive_loss
from vlviz.losses.heads import save_loss_heads
from vlviz.models.checkpoints import save_checkpoint
from vlviz.models.loading import load_model
from vlviz.training.config import MAX_BATCH_SIZE, MAX_STEPS, NonFiniteLossError, TrainConfig
from vlviz.training.loop import TokenIds, set_trainable, train

SCENES_TINY_CFG = {**TINY_VIT_CFG, "vision_cfg": {**TINY_VIT_CFG["vision_cfg"], "image_size": 32}}


def _tiny() -> tuple[CLIP, object]:
    torch.manual_seed(0)
    model = CLIP(**SCENES_TINY_CFG, output_dict=True)
    return model, open_clip.get_tokenizer("ViT-B-32", context_length=16)


def _scenes(held_out: int = 64) -> SceneSource:
    return SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=held_out)


@dataclass(frozen=True)
class NanConfig:
    nan_from: int = 3


class NanFromStep(Loss):
    """CLIP's loss until step `nan_from`, NaN from then on: a run that diverges deterministically, at once."""

    Config = NanConfig
    terms = ("contrastive_loss",)

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.nan_from, self.calls = self.config.nan_from, 0

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, **_: object
    ) -> dict[str, torch.Tensor]:
        self.calls += 1
        loss = clip_contrastive_loss(image_features, text_features, logit_scale)
        return {"contrastive_loss": loss * math.nan if self.calls >= self.nan_from else loss}


@pytest.fixture
def nan_loss(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register `NanFromStep` as the loss "nan" for one test."""
    monkeypatch.setitem(LOSSES, "nan", NanFromStep)
    return "nan"


def test_clip_loss_matches_a_hand_computed_case() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logits = 2.0 * image @ text.T  # [[2, 1.2], [0, 1.6]]; columns [[2, 0], [1.2, 1.6]]
    row = (torch.logsumexp(logits[0], 0) - 2 + torch.logsumexp(logits[1], 0) - 1.6) / 2
    col = (torch.logsumexp(logits[:, 0], 0) - 2 + torch.logsumexp(logits[:, 1], 0) - 1.6) / 2
    assert clip_contrastive_loss(image, text, torch.tensor(2.0)) == pytest.approx(float((row + col) / 2), rel=1e-6)


def test_loss_registry_gives_named_terms() -> None:
    assert "clip" in LOSSES
    out = create_loss("clip")(image_features=torch.eye(3), text_features=torch.eye(3), logit_scale=torch.tensor(5.0))
    assert set(out) == {"contrastive_loss", "logit_scale"}
    with pytest.raises(ValueError, match="Unknown loss 'nope'"):
        create_loss("nope")


def test_a_short_run_lowers_the_loss_and_reports_retrieval() -> None:
    model, tokenizer = _tiny()
    config = TrainConfig(steps=40, batch_size=16, lr=2e-3, warmup_steps=5, eval_every=40)
    records = list(train(model, tokenizer, _scenes(), config))
    assert [r["step"] for r in records] == list(range(1, 41))
    first, last = sum(r["total_loss"] for r in records[:5]) / 5, sum(r["total_loss"] for r in records[-5:]) / 5
    assert last < first - 0.2
    assert 0 <= records[-1]["image_to_caption_r1"] <= 1 and "text_to_image_r1" in records[-1]
    assert records[-1]["total_loss"] == pytest.approx(records[-1]["clip/contrastive_loss"])


def test_stop_event_ends_the_run() -> None:
    model, tokenizer = _tiny()
    stop = threading.Event()
    records = []
    for record in train(model, tokenizer, _scenes(8), TrainConfig(steps=50, batch_size=8, eval_every=1000), stop):
        records.append(record)
        if record["step"] == 3:
            stop.set()
    assert len(records) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"steps": 0}, "steps must be at least 1"), ({"batch_size": 1}, "batch_size must be at least 2"),
     ({"losses": {}}, "at least one loss"), ({"losses": {"nope": 1.0}}, "Unknown loss 'nope'"),
     ({"trainable": "some"}, "Unknown trainable 'some'")],
)  # fmt: skip
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 1e6}, "lr must be positive, finite and at most 1, got 1000000.0"),
        ({"lr": NAN}, "lr must be positive, finite and at most 1, got nan"),
        ({"lr": INF}, "lr must be positive, finite and at most 1, got inf"),
        ({"lr": 0.0}, "lr must be positive, finite and at most 1, got 0.0"),
        ({"lr": -1e-4}, "lr must be positive, finite and at most 1, got -0.0001"),
        ({"weight_decay": -0.1}, "weight_decay must be finite and at least 0, got -0.1"),
        ({"weight_decay": NAN}, "weight_decay must be finite and at least 0, got nan"),
        ({"weight_decay": INF}, "weight_decay must be finite and at least 0, got inf"),
        ({"warmup_steps": -1}, "warmup_steps must be at least 0, got -1"),
        ({"grad_clip": 0.0}, "grad_clip must be positive and finite, got 0.0"),
        ({"grad_clip": NAN}, "grad_clip must be positive and finite, got nan"),
        ({"grad_clip": INF}, "grad_clip must be positive and finite, got inf"),
        ({"steps": MAX_STEPS + 1}, f"steps must be at least 1 and at most {MAX_STEPS}, got {MAX_STEPS + 1}"),
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
        ({"batch_size": MAX_BATCH_SIZE + 1}, f"at most {MAX_BATCH_SIZE}, got {MAX_BATCH_SIZE + 1}"),
        ({"losses": {"clip": NAN}}, "losses['clip'] must be finite and at least 0, got nan"),
        ({"losses": {"clip": INF}}, "losses['clip'] must be finite and at least 0, got inf"),
        ({"losses": {"clip": 1.0, "saco": -0.5}}, "losses['saco'] must be finite and at least 0, got -0.5"),
        ({"losses": {"clip": 0.0, "saco": 0.0}}, "losses needs at least one weight above 0"),
        ({"last_blocks": 0}, "last_blocks must be at least 1, got 0"),
        ({"head_lr_scale": 0.0}, "head_lr_scale must be positive and finite, got 0.0"),
        ({"head_lr_scale": NAN}, "head_lr_scale must be positive and finite, got nan"),
        ({"head_lr_scale": INF}, "head_lr_scale must be positive and finite, got inf"),
        ({"eval_every": 0}, "eval_every must be at least 1, got 0"),
        ({"eval_every": 0.5}, "eval_every must be a whole number, got 0.5"),
        ({"seed": -1}, "seed must be at least 0 and at most 4294967295, got -1"),
        ({"loss_options": {"psl": 3}}, "loss_options must map loss names to keyword arguments"),
    ],
)
def test_each_setting_is_checked_with_its_range(kwargs: dict, message: str) -> None:
    """The library refuses what the UI's sliders would (an API call or a script can pass anything, NaN too)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**kwargs)


def test_settings_at_the_limits_are_accepted() -> None:
    TrainConfig(steps=MAX_STEPS, batch_size=MAX_BATCH_SIZE, lr=1.0, weight_decay=0.0, warmup_steps=0)
    TrainConfig(steps=1, batch_size=2, losses={"clip": 1.0, "saco": 0.0}, last_blocks=1, eval_every=1, seed=0)


def test_a_nan_loss_stops_the_run_before_it_touches_the_weights(nan_loss: str) -> None:
    model, tokenizer = _tiny()
    config = TrainConfig(steps=6, batch_size=4, lr=1e-3, eval_every=100, losses={nan_loss: 1.0})
    records, states = [], []
    with pytest.raises(NonFiniteLossError) as raised:
        for record in train(model, tokenizer, _scenes(8), config):
            records.append(record)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert [r["step"] for r in records] == [1, 2]  # the NaN step yields no record
    assert str(raised.value) == (
        "the loss became nan at step 3 (nan/contrastive_loss); lower the learning rate (now 0.001) and train again"
    )
    assert raised.value.step == 3 and raised.value.terms == ("nan/contrastive_loss",)
    assert isinstance(raised.value, ValueError)  # callers that show ValueErrors as messages show this one
    assert all(torch.equal(v, states[-1][k]) for k, v in model.state_dict().items())  # no backward, no update


def test_a_loss_that_is_nan_from_the_start_says_so(nan_loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = _tiny()
    config = TrainConfig(
        steps=3,
        batch_size=4,
        eval_every=100,
        losses={"clip": 1.0, nan_loss: 0.5},
        loss_options={nan_loss: {"nan_from": 1}},
    )
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 1 \(nan/contrastive_loss\); before any update"):
        list(train(model, tokenizer, _scenes(8), config))


@pytest.mark.parametrize(("value", "dtype"), [(math.nan, None), (math.inf, None), (1e6, torch.float16)])
def test_non_finite_weights_are_never_saved(tmp_path: Path, value: float, dtype: torch.dtype | None) -> None:
    """The last line of defence: a checkpoint that would load and compute only NaN is refused, and nothing is written."""
    model, _ = _tiny()
    with torch.no_grad():
        model.visual.proj[0, 0] = value  # 1e6 overflows fp16 to inf
    with pytest.raises(ValueError, match=r"Not saving the checkpoint: visual\.proj holds NaN or infinite values"):
        save_checkpoint(model, SCENES_TINY_CFG, tmp_path / "ckpt", dtype=dtype)
    assert not (tmp_path / "ckpt").exists()


def test_non_finite_loss_heads_are_never_saved(tmp_path: Path) -> None:
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.bias[0] = math.nan
    with pytest.raises(ValueError, match=r"Not saving the loss heads: psl\.bias holds NaN"):
        save_loss_heads({"psl": head}, tmp_path / "heads")
    assert not (tmp_path / "heads").exists()


def test_checkpoint_round_trips_bit_exactly(tmp_path: Path) -> None:
    model, _ = _tiny()
    save_checkpoint(model, SCENES_TINY_CFG, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    loaded = load_model(str(tmp_path / "ckpt"), device="cpu").model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _tiny()
    save_checkpoint(model, SCENES_TINY_CFG, tmp_path)
    before = (tmp_path / "open_clip_model.safetensors").read_bytes()

    def crash(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("vlviz.models.checkpoints.save_file", crash)
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, SCENES_TINY_CFG, tmp_path)
    assert (tmp_path / "open_clip_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]


def test_trainable_modes_freeze_the_rest() -> None:
    model, _ = _tiny()
    total = sum(p.numel() for p in model.parameters())
    heads = model.visual.proj.numel() + model.text_projection.numel() + model.logit_scale.numel()
    assert set_trainable(model, "projections") == heads
    assert not model.visual.transformer.resblocks[0].attn.in_proj_weight.requires_grad
    last = set_trainable(model, "last_blocks", last_blocks=1)
    assert heads < last < total and model.visual.transformer.resblocks[-1].mlp.c_fc.weight.requires_grad
    assert set_trainable(model, "all") == total


def test_projections_only_run_changes_only_the_heads() -> None:
    model, tokenizer = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=3, batch_size=8, eval_every=100, trainable="projections")
    list(train(model, tokenizer, _scenes(8), config))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"visual.proj", "text_projection", "logit_scale"}


def test_token_ids_tokenize_each_caption_once_and_match_the_tokenizer() -> None:
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    calls: list[list[str]] = []
    token_ids = TokenIds(lambda captions: calls.append(captions) or tokenizer(captions), most=3)
    first, second = ["a red circle", "a blue square", "a red circle"], ["a blue square", "a green cross"]
    assert torch.equal(token_ids(first), tokenizer(first)) and torch.equal(token_ids(second), tokenizer(second))
    assert calls == [["a red circle", "a blue square"], ["a green cross"]]  # each caption once, repeats from memory
    token_ids(["a white star"])  # a fourth caption: the oldest goes
    assert torch.equal(token_ids(["a red circle"]), tokenizer(["a red circle"])) and calls[-1] == ["a red circle"]
