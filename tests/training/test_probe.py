"""The training probe: a fixed batch whose layout is fitted once, its numbers for any model state, and its figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch

from vlviz.data.sources import SceneSource
from vlviz.models.loading import load_model
from vlviz.models.towers import preprocess_stats
from vlviz.training.config import TrainConfig
from vlviz.training.evaluation import is_evaluation
from vlviz.training.probe import PROBE_PAIRS, ProbeBatch
from vlviz.training.runs import prepare_run
from vlviz.viz.views import probe_figures


def test_probe_keeps_the_step0_layout_and_draws_its_numbers(tiny_vit_dir: Path) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    probe = ProbeBatch(SceneSource(32, mean, std, held_out=6).held_out, mean, std, size=4)
    assert probe.first_image.shape == (32, 32, 3) and probe.first_image.dtype.name == "uint8"
    first = probe.measure(model.model, model.tokenizer, step=0)
    layout = probe.layout
    z = torch.from_numpy(first.inconsistency)
    assert z.shape == (4, 4) and torch.allclose(z, z.T) and torch.allclose(z.diagonal(), torch.zeros(4), atol=1e-5)
    assert first.coordinates.shape == (8, 2)
    maps = first.grounding
    assert maps is not None and maps.word_maps.shape == (len(maps.words), *model.grid_size)
    assert torch.allclose(maps.word_maps.flatten(1).sum(1), torch.ones(len(maps.words)), atol=1e-5)  # SPARC rows
    again = probe.measure(model.model, model.tokenizer, step=5)
    assert probe.layout is layout  # fitted once, reused
    assert np.allclose(first.coordinates, again.coordinates)  # same model, same points

    figures = probe_figures(**vars(first))
    assert set(figures) == {"inconsistency", "embedding", "grounding"}
    assert "step 0" in figures["grounding"].layout.title.text
    assert np.allclose(np.asarray(figures["inconsistency"].data[0].z, dtype=float), first.inconsistency)


def test_an_evaluation_embeds_the_held_out_pairs_once_for_its_figures_and_the_probe(
    tiny_vit_dir: Path, tmp_path: Path
) -> None:
    """Main embedded the held-out split for the figures, then the probe's 16 pairs again: one pass feeds both now,
    and the probe's numbers are the ones its own pass gives."""
    config = TrainConfig(steps=2, batch_size=4, eval_every=1)
    run = prepare_run(str(tiny_vit_dir), "scenes", config, tmp_path, device="cpu")
    passes: list[tuple[str, int]] = []  # (tower, images or captions in the pass), one per tower pass
    run.model.visual.conv1.register_forward_hook(lambda module, args, out: passes.append(("image", len(args[0]))))
    run.model.token_embedding.register_forward_hook(lambda module, args, out: passes.append(("text", len(args[0]))))
    held_out = len(run.source.held_out.captions)
    for record in run.records():
        assert is_evaluation(record)
        evaluated, passes[:] = list(passes), []
        measured = run.probe_measurement(record["step"])
        assert passes == []  # the probe read the evaluation's pass
        assert evaluated.count(("image", held_out)) == evaluated.count(("text", held_out)) == 1
        assert ("image", PROBE_PAIRS) not in evaluated and ("text", PROBE_PAIRS) not in evaluated
        alone = ProbeBatch(run.source.held_out, *preprocess_stats(run.model)).measure(run.model, run.tokenizer, 0)
        passes[:] = []
        assert np.allclose(measured.inconsistency, alone.inconsistency, atol=1e-5)
        assert measured.grounding is not None and alone.grounding is not None
        assert torch.allclose(measured.grounding.word_maps, alone.grounding.word_maps, atol=1e-5)
