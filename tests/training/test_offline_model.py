"""The shipped offline model is real: it retrieves held-out scenes and loads with open_clip alone."""

import open_clip

from vlviz.cli.main import main
from vlviz.data.sources import SceneSource
from vlviz.models.loading import OFFLINE_MODEL_DIR, load_model
from vlviz.models.towers import preprocess_stats
from vlviz.training.evaluation import evaluate


def test_offline_model_retrieves_held_out_scenes() -> None:
    model = load_model("vlviz-scenes", device="cpu")
    source = SceneSource(64, *preprocess_stats(model.model), held_out=1000)
    figures = evaluate(model.model, model.tokenizer, source.held_out)
    assert figures["image_to_caption_r1"] >= 0.8, figures
    for word in ("colour", "shape"):  # grounding on scenes: the pointing game and object accuracy
        assert 0.0 <= figures[f"pointing_game_{word}"] <= 1.0
        assert 0.0 <= figures[f"object_accuracy_{word}"] <= 1.0


def test_offline_model_is_a_plain_open_clip_folder() -> None:
    model = open_clip.create_model(f"local-dir:{OFFLINE_MODEL_DIR}")
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    assert (OFFLINE_MODEL_DIR / "open_clip_model.safetensors").stat().st_size < 12 * 2**20


def test_eval_command_prints_the_figures(capsys) -> None:
    assert main(["eval-scenes", "--n", "64"]) == 0
    assert '"image_to_caption_r1"' in capsys.readouterr().out
