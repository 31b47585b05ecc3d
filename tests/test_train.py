"""The trainer: it learns, it stops on request, it freezes what it should, and its checkpoints load back exactly."""

from __future__ import annotations

import threading
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.conftest import TINY_VIT_CFG
from vlviz.data.sources import SceneSource
from vlviz.losses import LOSSES, clip_contrastive_loss, create_loss
from vlviz.models import load_model
from vlviz.train import TrainConfig, save_checkpoint, set_trainable, train

SCENES_TINY_CFG = {**TINY_VIT_CFG, "vision_cfg": {**TINY_VIT_CFG["vision_cfg"], "image_size": 32}}


def _tiny() -> tuple[CLIP, object]:
    torch.manual_seed(0)
    model = CLIP(**SCENES_TINY_CFG, output_dict=True)
    return model, open_clip.get_tokenizer("ViT-B-32", context_length=16)


def _scenes(held_out: int = 64) -> SceneSource:
    return SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=held_out)


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
    assert 0 <= records[-1]["image_to_text_r1"] <= 1 and "text_to_image_r1" in records[-1]
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

    monkeypatch.setattr("vlviz.train.save_file", crash)
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
