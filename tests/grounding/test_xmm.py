"""XMM: the 80/10/10 split, block masking, the output slots, the loss and its gradients, the word maps, a short run."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.conftest import TINY_RESNET_CFG, TINY_VIT_CFG
from vlviz.cli.main import main
from vlviz.data.sources import SceneSource
from vlviz.losses import LOSSES, create_loss
from vlviz.losses.heads import load_loss_heads, save_loss_heads
from vlviz.losses.xmm import XmmLoss, block_mask, mask_tokens, masked_word_attention, substituted
from vlviz.models.loading import load_model
from vlviz.models.tokens import real_token_mask
from vlviz.models.towers import preprocess_stats
from vlviz.training.config import TrainConfig
from vlviz.training.distributed import DistributedContext
from vlviz.training.loop import build_losses, forward_features, train

CAPTIONS = ["a small red circle at the top left", "a large blue square on the right and a green cross"]


@pytest.fixture(scope="module")
def tiny() -> tuple[CLIP, object]:
    torch.manual_seed(0)
    return CLIP(**TINY_VIT_CFG, output_dict=True), open_clip.get_tokenizer("ViT-B-32", context_length=16)


def _batch(model: CLIP, tokenizer, captions: list[str] = CAPTIONS) -> dict:
    ids = tokenizer(captions)
    pixels = torch.randn(len(captions), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = forward_features(model, pixels, ids, with_tokens=True)
    return out | {"token_mask": real_token_mask(tokenizer, ids), "pixels": pixels, "ids": ids, "model": model}


# ----------------------------------------------------------------------------------------- masking


def test_masking_follows_the_80_10_10_split() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (4000, 40), generator=generator)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :5] = False  # e.g. start tokens and padding: never chosen
    replacements = torch.arange(5000, 6000)
    new_ids, chosen, masked = mask_tokens(ids, maskable, replacements, generator=generator)
    assert not chosen[:, :5].any() and not (masked & ~chosen).any()
    share = chosen.sum() / maskable.sum()  # 140,000 draws: one standard error is 0.001
    assert share == pytest.approx(0.15, abs=0.005)
    randomised = chosen & (new_ids != ids)
    kept = chosen & ~masked & (new_ids == ids)
    n = chosen.sum()  # about 21,000 chosen tokens: standard errors 0.003 (80%) and 0.002 (10%)
    assert masked.sum() / n == pytest.approx(0.8, abs=0.012)
    assert randomised.sum() / n == pytest.approx(0.1, abs=0.008)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.008)
    assert torch.isin(new_ids[randomised], replacements).all() and torch.equal(new_ids[~chosen], ids[~chosen])
    assert not (new_ids[masked] != ids[masked]).any()  # a masked token keeps its id; its embedding becomes [MASK]


def test_every_caption_with_words_gets_a_token_to_predict() -> None:
    ids = torch.arange(60).view(20, 3)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[0] = False  # a caption without words gets none
    _, chosen, _ = mask_tokens(ids, maskable, torch.arange(3), probability=0.0)
    assert chosen.sum(1).tolist() == [0] + [1] * 19


@pytest.mark.parametrize(("grid", "expected", "smallest"), [((16, 16), 75, 16), ((8, 8), 19, 4)])
def test_block_masking_masks_the_share_in_blocks(grid: tuple[int, int], expected: int, smallest: int) -> None:
    mask = block_mask(500, grid, generator=torch.Generator().manual_seed(0))
    counts = mask.sum(1)
    assert mask.shape == (500, grid[0] * grid[1]) and counts.max() <= expected
    assert counts.float().mean() >= expected - 1 and (counts >= expected - smallest).all()
    # Blocks, not scattered patches: most masked patches have a masked neighbour to the right or below.
    cells = mask.view(500, *grid)
    neighbours = (cells[:, :, :-1] & cells[:, :, 1:]).sum() + (cells[:, :-1, :] & cells[:, 1:, :]).sum()
    assert neighbours / cells.sum() > 0.6


def test_substitution_replaces_outputs_only_inside_the_block() -> None:
    embedding = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, 2, 3]])
    where = torch.tensor([[False, True, False]])[..., None]
    with substituted(embedding, where, torch.full((3,), 7.0)):
        inside = embedding(ids)
    assert inside[0, 1].tolist() == [7.0] * 3 and torch.equal(inside[0, [0, 2]], embedding(ids)[0, [0, 2]])
    assert not embedding._forward_hooks


def test_substitution_leaves_other_threads_passes_alone() -> None:
    """Models are shared by sessions: a pass another request makes meanwhile sees the real outputs."""
    embedding = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, 2, 3]])
    where = torch.tensor([[False, True, False]])[..., None]
    seen = []
    with substituted(embedding, where, torch.full((3,), 7.0)):
        other = threading.Thread(target=lambda: seen.append(embedding(ids)))
        other.start()
        other.join()
    assert torch.equal(seen[0], embedding(ids))


# ------------------------------------------------------------------------------------------- module


def test_tokens_get_output_slots_once_while_they_last(tiny: tuple[CLIP, object]) -> None:
    xmm = XmmLoss(*tiny, heads=2, vocabulary_size=4)
    xmm.add_tokens(torch.tensor([7, 5, 7]))
    xmm.add_tokens(torch.tensor([5, 9, 11, 13]))
    assert int(xmm.slots_used) == 4 and xmm.slot_of[[5, 7, 9, 11, 13]].tolist() == [0, 1, 2, 3, -1]


def test_the_loss_trains_heads_and_towers(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    torch.manual_seed(0)
    xmm = create_loss("xmm", model=model, tokenizer=tokenizer, heads=2)
    assert LOSSES["xmm"] is XmmLoss and XmmLoss.needs_tokens and XmmLoss.needs_inputs
    out = xmm(**_batch(model, tokenizer))
    assert set(out) == {
        "text_loss", "image_loss", "mlm_accuracy", "mlm_accuracy_noise", "cross_modal_gain", "patch_cosine",
    }  # fmt: skip
    assert all(torch.isfinite(v) for v in out.values())
    assert float(out["cross_modal_gain"]) == pytest.approx(float(out["mlm_accuracy"] - out["mlm_accuracy_noise"]))
    model.zero_grad()
    (out["text_loss"] + out["image_loss"]).backward()
    for name in ("text_mask_embedding", "image_mask_embedding", "token_head.3.weight", "patch_predictor.weight"):
        assert xmm.get_parameter(name).grad.abs().sum() > 0, name
    for name in ("token_embedding.weight", "visual.conv1.weight", "visual.proj", "text_projection"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name  # the masked passes reach the towers


def test_a_side_weighted_zero_is_skipped(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    text_only = XmmLoss(model, tokenizer, heads=2, image_weight=0.0)(**_batch(model, tokenizer))
    image_only = XmmLoss(model, tokenizer, heads=2, text_weight=0.0)(**_batch(model, tokenizer))
    assert "image_loss" not in text_only and "text_loss" in text_only
    assert set(image_only) == {"image_loss", "patch_cosine"}


def test_towers_without_patches_are_refused(tiny: tuple[CLIP, object]) -> None:
    resnet = CLIP(**TINY_RESNET_CFG, output_dict=True)
    with pytest.raises(ValueError, match="needs a ViT image tower, not ModifiedResNet"):
        XmmLoss(resnet, tiny[1])


def test_masked_word_maps_are_attention_over_the_image(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    xmm = XmmLoss(model, tokenizer, heads=2).eval()
    found = masked_word_attention(xmm, model, tokenizer, torch.randn(1, 3, 32, 32), "a small red circle")
    assert found.layout.words[0] == ["a", "small", "red", "circle"]
    assert found.patch_maps.shape == (4, 16) and (found.patch_maps >= 0).all()
    assert torch.allclose(found.patch_maps.sum(1) + found.global_share, torch.ones(4), atol=1e-5)


# ------------------------------------------------------------------------------------------ trainer


def test_the_trainer_trains_steps_and_saves_the_heads(tiny: tuple[CLIP, object], tmp_path: Path) -> None:
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=8)
    config = TrainConfig(
        steps=3, batch_size=8, eval_every=100, losses={"clip": 1.0, "xmm": 1.0, "psl": 0.5},
        loss_options={"xmm": {"heads": 2}},
    )  # fmt: skip
    heads = build_losses(config, model, tokenizer, torch.device("cpu"))
    before = {k: v.clone() for k, v in heads["xmm"].state_dict().items()}
    records = list(train(model, tokenizer, source, config, loss_modules=heads))
    assert {"xmm/text_loss", "xmm/cross_modal_gain", "psl/psl_loss", "psl/precision_at_3"} <= set(records[-1])
    assert not torch.equal(before["token_head.3.weight"], heads["xmm"].token_head[3].weight)  # the optimiser trains it
    assert int(heads["psl"].steps) == 3  # after_step ran after every optimiser step

    save_loss_heads(heads, tmp_path)
    loaded = load_loss_heads(tmp_path, model, tokenizer)
    assert set(loaded) == {"xmm", "psl"} and not loaded["xmm"].training
    for name, module in loaded.items():
        saved = heads[name].state_dict()
        assert saved.keys() == module.state_dict().keys()
        assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items()), name
    assert loaded["psl"].vocabulary == heads["psl"].vocabulary
    assert load_loss_heads(tmp_path / "nothing", model, tokenizer) == {}


def test_heads_train_in_one_process_only(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=8)
    config = TrainConfig(steps=1, batch_size=4, losses={"clip": 1.0, "xmm": 1.0}, loss_options={"xmm": {"heads": 2}})
    with pytest.raises(ValueError, match="xmm: losses with their own heads train in one process only"):
        next(train(model, tokenizer, source, config, context=DistributedContext(rank=0, world_size=2)))


def test_a_short_scenes_run_reads_the_image_to_fill_the_blanks() -> None:
    """Continual training of the offline model with CLIP + XMM's text side (the image side is tested above).

    After 100 steps, held-out masked tokens are predicted better attending to the true image than to
    noise images: the cross-modal gain. Measured on 256 held-out scenes, about 600 masked tokens.
    """
    loaded = load_model("vlviz-scenes", device="cpu")
    model, tokenizer = copy.deepcopy(loaded.model).float(), loaded.tokenizer
    source = SceneSource(64, *preprocess_stats(model), held_out=256)
    config = TrainConfig(
        steps=100, batch_size=32, lr=1e-4, warmup_steps=10, eval_every=1000, losses={"clip": 1.0, "xmm": 1.0},
        loss_options={"xmm": {"image_weight": 0.0}},
    )  # fmt: skip
    heads = build_losses(config, model, tokenizer, torch.device("cpu"))
    records = list(train(model, tokenizer, source, config, loss_modules=heads))
    assert records[-1]["xmm/text_loss"] < records[0]["xmm/text_loss"] - 1.0
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        ids = tokenizer(source.held_out.captions)
        out = forward_features(model, source.held_out.pixels, ids, with_tokens=True)
        held_out = heads["xmm"].eval()(
            **out, token_mask=real_token_mask(tokenizer, ids), pixels=source.held_out.pixels, ids=ids, model=model
        )
    assert held_out["mlm_accuracy"] > held_out["mlm_accuracy_noise"] + 0.03, held_out  # measured: 0.54 vs 0.46


def test_the_train_command_passes_loss_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = [
        "train",
        "--model",
        "fresh",
        "--loss",
        "clip=1,xmm=1",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--loss-options", '{"xmm": {"heads": 3}}']) == 2
    assert "not divisible by 3 heads" in capsys.readouterr().err  # the options reached the XMM head
    assert main([*args, "--loss-options", "heads=3"]) == 2
    assert "--loss-options must be a JSON object" in capsys.readouterr().err
