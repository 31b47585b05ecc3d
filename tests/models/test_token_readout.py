"""Where a model's token maps are read (`TokenReadout`): what each place holds, and that it travels with a checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vlviz.grounding.maps import untrained_model
from vlviz.models.checkpoints import save_checkpoint
from vlviz.models.encoding import image_embeddings, text_embeddings
from vlviz.models.loading import load_model
from vlviz.models.towers import TokenReadout, set_token_readout, token_readout, transformer_blocks
from vlviz.training.config import TrainConfig
from vlviz.training.runs import FRESH, prepare_run


@pytest.fixture
def tiny(tiny_vit_dir: Path) -> torch.nn.Module:
    return copy.deepcopy(load_model(str(tiny_vit_dir), device="cpu").model).float()


def _inputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    side = model.visual.image_size[0]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, side, side, generator=generator)
    ids = torch.randint(1, 400, (2, model.context_length), generator=generator)
    return pixels, ids


def test_reading_after_the_last_block_is_open_clips_own_tokens(tiny: torch.nn.Module) -> None:
    pixels, ids = _inputs(tiny)
    default = image_embeddings(tiny, pixels), text_embeddings(tiny, ids)
    blocks = transformer_blocks(tiny)
    set_token_readout(tiny, TokenReadout(blocks["visual.transformer"], blocks["transformer"]))
    for (features, tokens), (same_features, same_tokens) in zip(
        default, (image_embeddings(tiny, pixels), text_embeddings(tiny, ids)), strict=True
    ):
        assert torch.equal(features, same_features) and torch.equal(tokens, same_tokens)


def test_tokens_read_before_any_block_hold_their_own_patch_and_word_alone(tiny: torch.nn.Module) -> None:
    pixels, ids = _inputs(tiny)
    set_token_readout(tiny, TokenReadout(0, 0))
    features, patches = image_embeddings(tiny, pixels)
    moved = pixels.clone()
    patch = tiny.visual.patch_size[0]
    moved[:, :, :patch, :patch] += 1.0  # only the first patch changes
    _, moved_patches = image_embeddings(tiny, moved)
    assert not torch.allclose(moved_patches[:, 0], patches[:, 0])
    assert torch.allclose(moved_patches[:, 1:], patches[:, 1:], atol=1e-6)
    later = ids.clone()
    later[:, 2] = 7  # an earlier word changes: the later tokens do not (the causal tower has not mixed them yet)
    _, tokens = text_embeddings(tiny, ids)
    _, later_tokens = text_embeddings(tiny, later)
    assert torch.allclose(later_tokens[:, 3:], tokens[:, 3:], atol=1e-6)
    assert torch.equal(features, torch.nn.functional.normalize(tiny.encode_image(pixels), dim=-1))  # global kept


def test_the_gradient_reaches_the_embeddings_through_an_early_read(tiny: torch.nn.Module) -> None:
    pixels, ids = _inputs(tiny)
    set_token_readout(tiny, TokenReadout(0, 0))
    (image_embeddings(tiny, pixels)[1].sum() + text_embeddings(tiny, ids)[1].sum()).backward()
    assert tiny.visual.conv1.weight.grad.abs().sum() > 0 and tiny.token_embedding.weight.grad.abs().sum() > 0
    assert tiny.visual.transformer.resblocks[-1].mlp.c_fc.weight.grad is None  # read before it


@pytest.mark.parametrize("readout", [TokenReadout(-1, None), TokenReadout(None, 99), TokenReadout(True, None)])
def test_a_place_a_tower_does_not_have_is_refused(tiny: torch.nn.Module, readout: TokenReadout) -> None:
    with pytest.raises(ValueError, match="must be a whole number"):
        set_token_readout(tiny, readout)
    assert token_readout(tiny) == TokenReadout()


def test_the_readout_is_saved_with_the_weights_and_the_untrained_twin_reads_there_too(
    tiny: torch.nn.Module, tiny_vit_dir: Path, tmp_path: Path
) -> None:
    import json

    set_token_readout(tiny, TokenReadout(0, 1))
    config = json.loads((tiny_vit_dir / "open_clip_config.json").read_text())["model_cfg"]
    save_checkpoint(tiny, config, tmp_path / "grounded")
    loaded = load_model(str(tmp_path / "grounded"), device="cpu")
    assert token_readout(loaded.model) == TokenReadout(0, 1)
    assert token_readout(untrained_model(loaded).model) == TokenReadout(0, 1)
    save_checkpoint(load_model(str(tiny_vit_dir), device="cpu").model, config, tmp_path / "plain")
    assert "vlviz_token_readout" not in (tmp_path / "plain" / "open_clip_config.json").read_text()


def test_a_run_reads_where_its_config_says_and_its_checkpoint_keeps_it(tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, losses={"word_region": 1.0}, image_token_blocks=0,
                         text_token_blocks=0)  # fmt: skip
    run = prepare_run(FRESH, "scenes", config, tmp_path, device="cpu")
    records = list(run.records())
    assert "pointing_game_colour_named_1" in records[-1]
    assert token_readout(load_model(str(tmp_path), device="cpu").model) == TokenReadout(0, 0)
    with pytest.raises(ValueError, match="image_token_blocks"):
        TrainConfig(image_token_blocks=-1)


def test_dense_methods_re_read_the_last_block_the_model_reads_after() -> None:
    from vlviz.grounding.methods import dense_patches

    model = copy.deepcopy(load_model("vlviz-scenes", device="cpu").model).float()
    pixels, _ = _inputs(model)
    set_token_readout(model, TokenReadout(2, None))
    with torch.no_grad():
        assert torch.allclose(dense_patches(model, pixels, "clip"), image_embeddings(model, pixels)[1], atol=1e-5)
        set_token_readout(model, TokenReadout(0, None))
        with pytest.raises(ValueError, match="before any image block"):
            dense_patches(model, pixels, "maskclip")
