"""A whole run, as the command line and the Train tab drive it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.test_train import NanFromStep
from vlviz.cli.main import main
from vlviz.losses import LOSSES
from vlviz.losses.heads import load_loss_heads
from vlviz.models.loading import load_model
from vlviz.training.config import NonFiniteLossError, TrainConfig
from vlviz.training.runs import FRESH, WEIGHTS_NAME, parse_loss_weights, prepare_run


def test_parse_loss_weights() -> None:
    assert parse_loss_weights("clip=1, saco=0.5,sparc") == {"clip": 1.0, "saco": 0.5, "sparc": 1.0}
    with pytest.raises(ValueError, match="Bad loss weight 'saco=lots'"):
        parse_loss_weights("saco=lots")
    with pytest.raises(ValueError, match="at least one loss"):
        parse_loss_weights(" , ")


def test_run_writes_metrics_and_a_loadable_checkpoint(tiny_vit_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=4, batch_size=8, eval_every=2)
    run = prepare_run(str(tiny_vit_dir), "scenes", config, tmp_path / "run", device="cpu")
    records = list(run.records())
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]  # step 0: the start model's figures
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert {"image_to_caption_r1", "probe_image_to_caption_r1"} <= set(lines[0]) and "total_loss" in lines[-1]
    trained = load_model(str(tmp_path / "run" / WEIGHTS_NAME), device="cpu").model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in run.model.state_dict().items())
    start = load_model(str(tiny_vit_dir), device="cpu").model.state_dict()
    assert not torch.equal(start["visual.proj"], trained["visual.proj"])  # the cached start model is untouched


def test_stopping_keeps_the_checkpoint_of_the_steps_done(tmp_path: Path) -> None:
    run = prepare_run(FRESH, "scenes", TrainConfig(steps=50, batch_size=4, eval_every=100), tmp_path, device="cpu")
    for record in run.records():
        if record["step"] == 2:
            run.stop.set()
    assert (tmp_path / WEIGHTS_NAME).is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


@pytest.mark.parametrize(
    ("data", "config", "message"),
    [
        ("photos", TrainConfig(batch_size=32), "batch_size 32 is larger than the 6 training pairs"),
        ("/no/such/folder", TrainConfig(), "no/such/folder"),
    ],
)
def test_bad_settings_fail_before_training(data: str, config: TrainConfig, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_run(FRESH, data, config, tmp_path, device="cpu")


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "train",
        "--model",
        "fresh",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    assert (tmp_path / WEIGHTS_NAME).is_file() and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_same_settings_give_the_same_curves(tiny_vit_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=3, batch_size=8, eval_every=3, losses={"clip": 1.0, "saco": 0.5})
    first, second = (
        list(prepare_run(str(tiny_vit_dir), "scenes", config, tmp_path / name, device="cpu").records())
        for name in ("a", "b")
    )
    assert first == second


def test_saco_lowers_inconsistency_where_clip_alone_does_not(tmp_path: Path) -> None:
    """Continual training of the offline model: SaCo's term must pull A_I and A_T together."""
    ends = {}
    for name, losses in (("clip", {"clip": 1.0}), ("saco", {"clip": 1.0, "saco": 1.0})):
        config = TrainConfig(steps=15, batch_size=32, eval_every=15, losses=losses)
        records = list(prepare_run("vlviz-scenes", "scenes", config, tmp_path / name, device="cpu").records())
        start, end = records[0]["mean_abs_inconsistency"], records[-1]["mean_abs_inconsistency"]
        ends[name] = end - start
    assert ends["saco"] < ends["clip"] - 0.01, ends  # clip alone drifts apart; SaCo holds it


def test_a_run_saves_its_loss_heads_beside_the_checkpoint(tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, losses={"clip": 1.0, "xmm": 1.0, "psl": 1.0})
    run = prepare_run(FRESH, "scenes", config, tmp_path, device="cpu")
    list(run.records())
    heads = load_loss_heads(tmp_path, run.model, run.tokenizer)
    assert set(heads) == {"xmm", "psl"} and int(heads["psl"].steps) == 2


def test_bad_loss_options_fail_before_training(tmp_path: Path) -> None:
    config = TrainConfig(losses={"clip": 1.0, "psl": 1.0}, loss_options={"psl": {"vocabulary": []}})
    with pytest.raises(ValueError, match="The PSL vocabulary is empty"):
        prepare_run(FRESH, "scenes", config, tmp_path, device="cpu")


def test_a_resnet_start_model_can_train_on_scenes(tiny_resnet_dir: Path, tmp_path: Path) -> None:
    run = prepare_run(
        str(tiny_resnet_dir), "scenes", TrainConfig(steps=1, batch_size=4, eval_every=1), tmp_path, device="cpu"
    )
    records = list(run.records())
    assert records[-1]["step"] == 1 and "pointing_game_colour" not in records[-1]  # no patch tokens to ground


def test_a_diverged_run_raises_and_writes_no_checkpoint(
    tiny_vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN weights must never reach disk: no checkpoint, no loss heads; the error reaches the caller."""
    monkeypatch.setitem(LOSSES, "nan", NanFromStep)  # CLIP's loss, then NaN from the third step on
    config = TrainConfig(steps=6, batch_size=4, eval_every=2, losses={"clip": 1.0, "psl": 1.0, "nan": 1.0})
    run = prepare_run(str(tiny_vit_dir), "scenes", config, tmp_path, device="cpu")
    steps = []
    with pytest.raises(NonFiniteLossError, match=r"the loss became nan at step 3 \(nan/contrastive_loss\)"):
        for record in run.records():
            steps.append(record["step"])
    assert steps == [0, 1, 2]
    assert not (tmp_path / WEIGHTS_NAME).exists() and not list(tmp_path.glob("loss_heads*"))
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 2]


def test_train_command_reports_bad_settings_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--model", "fresh", "--steps", "2", "--lr", "1e6", "--out", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: lr must be") and not (tmp_path / WEIGHTS_NAME).exists()
