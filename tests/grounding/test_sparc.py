"""SPARC: alignment weights, the alternatives, per-word maps, the fine-grained loss and its training path."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.conftest import TINY_VIT_CFG
from vlviz.data.sources import SceneSource
from vlviz.grounding.sparc import (
    GROUNDING_MAPS,
    alignment_weights,
    grounding_maps,
    grouped_embeddings,
    no_sparsity_weights,
    word_maps,
)
from vlviz.losses import LOSSES, create_loss
from vlviz.losses.clip import clip_contrastive_loss
from vlviz.losses.sparc import SparcLoss, sparc_fine_grained_loss, sparc_loss
from vlviz.models.tokens import real_token_mask
from vlviz.training.config import TrainConfig
from vlviz.training.loop import forward_features, train

# Three tokens and four patches in 2-d. Raw similarities t . v, by hand:
#   t0 = (1, 0):    [1, 0, 1, -1]      -> min-max [1, .5, 1, 0]  -> / 2.5 -> [.4, .2, .4, 0]
#   t1 = (0, 2):    [0, 2, 2, 0]       -> min-max [0, 1, 1, 0]   -> / 2   -> [0, .5, .5, 0]
#   t2 = (1, -.6):  [1, -.6, .4, -1]   -> min-max [1, .2, .7, 0] -> .2 < 1/4 is dropped -> [1, 0, .7, 0] / 1.7
PATCHES = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])  # (1, 4, 2)
TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, -0.6]]])  # (1, 3, 2)
EXPECTED_WEIGHTS = torch.tensor([[[0.4, 0.2, 0.4, 0.0], [0.0, 0.5, 0.5, 0.0], [1 / 1.7, 0.0, 0.7 / 1.7, 0.0]]])


def _random(batch: int = 3, tokens: int = 5, patches: int = 16, dim: int = 8, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    token_emb = torch.randn(batch, tokens, dim, generator=generator)
    patch_emb = torch.randn(batch, patches, dim, generator=generator)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, -2:] = False  # a shorter caption in the batch
    return token_emb, patch_emb, mask


# --------------------------------------------------------------------------------------- weights


def test_alignment_weights_match_the_hand_computed_case() -> None:
    assert torch.allclose(alignment_weights(TOKENS, PATCHES), EXPECTED_WEIGHTS, atol=1e-6)


def test_without_the_threshold_the_small_entry_stays() -> None:
    expected = torch.tensor([1.0, 0.2, 0.7, 0.0]) / 1.9  # t2's min-max row, renormalised
    assert torch.allclose(no_sparsity_weights(TOKENS, PATCHES)[0, 2], expected, atol=1e-6)


def test_grouped_embeddings_are_the_weighted_patches() -> None:
    grouped = grouped_embeddings(EXPECTED_WEIGHTS, PATCHES)  # t0: .4 (1, 0) + .2 (0, 1) + .4 (1, 1)
    assert torch.allclose(grouped[0, 0], torch.tensor([0.8, 0.6]), atol=1e-6)
    assert torch.allclose(grouped[0, 1], torch.tensor([0.5, 1.0]), atol=1e-6)


def test_rows_sum_to_one_and_the_threshold_zeroes_entries_below_one_over_p() -> None:
    token_emb, patch_emb, _ = _random()
    weights = alignment_weights(token_emb, patch_emb)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-6)
    s = torch.einsum("btd,bpd->btp", token_emb, patch_emb)
    low, high = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
    normalised = (s - low) / (high - low)
    below = normalised < 1 / patch_emb.shape[1]
    assert below.any() and (weights[below] == 0).all()
    assert (weights[~below] > 0).all()


def test_a_degenerate_row_becomes_uniform_without_nans() -> None:
    token_emb = torch.cat([TOKENS, torch.zeros(1, 1, 2)], dim=1).requires_grad_()  # t3 = 0: all similarities equal
    patch_emb = PATCHES.clone().requires_grad_()
    weights = alignment_weights(token_emb, patch_emb)
    assert torch.allclose(weights[0, 3], torch.full((4,), 0.25))
    (weights * torch.arange(16.0).reshape(1, 4, 4)).sum().backward()
    assert torch.isfinite(token_emb.grad).all() and torch.isfinite(patch_emb.grad).all()


def test_threshold_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
        alignment_weights(TOKENS, PATCHES, threshold=1.5)


@pytest.mark.parametrize("kind", list(GROUNDING_MAPS))
def test_every_grounding_map_is_batched_and_finite(kind: str) -> None:
    token_emb, patch_emb, _ = _random()
    maps = grounding_maps(token_emb, patch_emb, kind)
    assert maps.shape == (3, 5, 16) and torch.isfinite(maps).all()
    one_sample = grounding_maps(token_emb[1:2], patch_emb[1:2], kind)
    assert torch.allclose(maps[1:2], one_sample, atol=1e-6)  # no mixing across samples
    if kind == "cosine":
        assert maps.abs().max() <= 1 + 1e-6
    else:
        assert (maps >= 0).all() and torch.allclose(maps.sum(-1), torch.ones(3, 5), atol=1e-5)


def test_unknown_grounding_map_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown grounding map 'nope'"):
        grounding_maps(TOKENS, PATCHES, "nope")


def test_softmax_weights_are_the_softmax_of_raw_similarities() -> None:
    expected = torch.softmax(torch.tensor([1.0, 0.0, 1.0, -1.0]), dim=0)  # t0's raw row
    assert torch.allclose(grounding_maps(TOKENS, PATCHES, "softmax")[0, 0], expected, atol=1e-6)


# ------------------------------------------------------------------------------------- word maps


def test_word_maps_merge_each_words_pieces() -> None:
    token_maps = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 0.5], [0.2, 0.8], [9.0, 9.0]]])  # (1, 5, 2)
    word_index = torch.tensor([[-1, 0, 0, 1, -1]])  # start, a word of two pieces, a one-piece word, end
    assert torch.allclose(word_maps(token_maps, word_index), torch.tensor([[[0.5, 0.25], [0.2, 0.8]]]))
    assert torch.allclose(word_maps(token_maps, word_index, "max"), torch.tensor([[[1.0, 0.5], [0.2, 0.8]]]))


def test_word_maps_leave_unfilled_word_slots_at_zero() -> None:
    token_maps = torch.rand(2, 4, 3)
    word_index = torch.tensor([[-1, 0, 1, 2], [-1, 0, -1, -1]])  # the second caption has one word
    maps = word_maps(token_maps, word_index)
    assert maps.shape == (2, 3, 3)
    assert torch.equal(maps[1, 1:], torch.zeros(2, 3)) and torch.allclose(maps[1, 0], token_maps[1, 1])


# ------------------------------------------------------------------------------------------ loss


def _numpy_fine_loss(tokens: np.ndarray, patches: np.ndarray, mask: np.ndarray, inverse_temperature: float) -> float:
    """The Appendix C pseudo-code, written out independently in numpy."""
    similarity = np.einsum("btd,bpd->btp", tokens, patches)
    low, high = similarity.min(-1, keepdims=True), similarity.max(-1, keepdims=True)
    similarity = (similarity - low) / (high - low)
    similarity = np.where(similarity < 1 / patches.shape[1], 0.0, similarity)
    weights = similarity / similarity.sum(-1, keepdims=True)
    grouped = np.einsum("btp,bpd->btd", weights, patches)
    grouped /= np.linalg.norm(grouped, axis=-1, keepdims=True)
    tokens = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)

    def masked_pairwise(a: np.ndarray, b: np.ndarray) -> float:
        logits = np.einsum("bmd,bnd->bmn", a, b) * inverse_temperature
        logits = np.where(mask[:, None, :], logits, -np.inf)  # padding columns
        log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        log_softmax -= logits.max(-1, keepdims=True)
        loss = -np.diagonal(log_softmax, axis1=1, axis2=2)  # target: the token's own position
        loss = np.where(mask, loss, 0.0)
        return loss.sum() / mask.sum()

    return (masked_pairwise(grouped, tokens) + masked_pairwise(tokens, grouped)) / 2


def test_fine_loss_matches_the_hand_computed_case() -> None:
    # The 3-token, 4-patch case; the hand weights give c_0 = (.8, .6), c_1 = (.5, 1), c_2 = (1, .7 / 1.7).
    c = np.array([[0.8, 0.6], [0.5, 1.0], [1.0, 0.7 / 1.7]])
    c /= np.linalg.norm(c, axis=-1, keepdims=True)
    t = TOKENS[0].numpy() / np.linalg.norm(TOKENS[0].numpy(), axis=-1, keepdims=True)
    logits = 2.0 * c @ t.T  # (3, 3): c_l . t_k at inverse temperature 2
    vl = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(3)])
    lv = np.mean([np.log(np.exp(logits[:, i]).sum()) - logits[i, i] for i in range(3)])
    loss = sparc_fine_grained_loss(TOKENS, PATCHES, torch.ones(1, 3), 2.0)
    assert float(loss) == pytest.approx((vl + lv) / 2, rel=1e-5)


def test_fine_loss_matches_the_pseudo_code_in_numpy() -> None:
    token_emb, patch_emb, mask = _random()
    expected = _numpy_fine_loss(token_emb.double().numpy(), patch_emb.double().numpy(), mask.numpy(), 10.0)
    assert float(sparc_fine_grained_loss(token_emb, patch_emb, mask, 10.0)) == pytest.approx(expected, rel=1e-5)


def test_fine_loss_is_invariant_to_the_order_of_samples() -> None:
    token_emb, patch_emb, mask = _random(batch=4)
    order = torch.tensor([2, 0, 3, 1])
    loss = sparc_fine_grained_loss(token_emb, patch_emb, mask, 5.0)
    permuted = sparc_fine_grained_loss(token_emb[order], patch_emb[order], mask[order], 5.0)
    assert float(permuted) == pytest.approx(float(loss), rel=1e-6)


def test_padding_tokens_change_nothing() -> None:
    token_emb, patch_emb, mask = _random()
    loss = sparc_fine_grained_loss(token_emb, patch_emb, mask, 5.0)
    changed = token_emb.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), token_emb.shape[-1]) * 100  # other padding embeddings
    more = torch.cat([changed, torch.randn(3, 4, token_emb.shape[-1])], dim=1)  # and more padding positions
    more_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    assert float(sparc_fine_grained_loss(changed, patch_emb, mask, 5.0)) == pytest.approx(float(loss), rel=1e-6)
    assert float(sparc_fine_grained_loss(more, patch_emb, more_mask, 5.0)) == pytest.approx(float(loss), rel=1e-6)


def test_gradients_reach_tokens_patches_and_the_temperature() -> None:
    token_emb, patch_emb, mask = (t.clone() for t in _random())
    token_emb.requires_grad_()
    patch_emb.requires_grad_()
    scale = torch.tensor(5.0, requires_grad=True)
    sparc_fine_grained_loss(token_emb, patch_emb, mask, scale).backward()
    for grad in (token_emb.grad, patch_emb.grad, scale.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(token_emb.grad[~mask], torch.zeros_like(token_emb.grad[~mask]))  # padding gets none


def test_sparc_loss_weighs_the_global_and_fine_terms() -> None:
    token_emb, patch_emb, mask = _random()
    image = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(10.0)
    global_term = clip_contrastive_loss(image, text, scale)
    fine_term = sparc_fine_grained_loss(token_emb, patch_emb, mask, scale)
    total = sparc_loss(image, text, token_emb, patch_emb, mask, scale)
    assert float(total) == pytest.approx(float(0.5 * global_term + fine_term), rel=1e-6)
    terms = create_loss("sparc", fine_weight=5.0)(
        image_features=image, text_features=text, logit_scale=scale,
        patch_features=patch_emb, token_features=token_emb, token_mask=mask,
    )  # fmt: skip
    assert LOSSES["sparc"] is SparcLoss and SparcLoss.needs_tokens
    assert float(terms["global_loss"]) == pytest.approx(float(0.5 * global_term), rel=1e-6)
    assert float(terms["fine_loss"]) == pytest.approx(float(5 * fine_term), rel=1e-6)


def test_mean_pooling_contrasts_the_means_of_the_patches_and_real_tokens() -> None:
    token_emb, patch_emb, mask = _random()
    scale = torch.tensor(10.0)
    image = torch.nn.functional.normalize(patch_emb.mean(dim=1), dim=-1)
    text = torch.stack([token_emb[b][mask[b].bool()].mean(dim=0) for b in range(len(mask))])  # by hand, per sample
    expected = 0.5 * clip_contrastive_loss(image, torch.nn.functional.normalize(text, dim=-1), scale)
    unused = torch.zeros(3, 8)  # the model's own pooled features do not enter
    terms = create_loss("sparc", global_pooling="mean")(
        image_features=unused, text_features=unused, logit_scale=scale,
        patch_features=patch_emb, token_features=token_emb, token_mask=mask,
    )  # fmt: skip
    assert float(terms["global_loss"]) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="global_pooling"):
        create_loss("sparc", global_pooling="max")


# ----------------------------------------------------------------------------- through the model


def _tiny() -> tuple[CLIP, object]:
    torch.manual_seed(0)
    return CLIP(**TINY_VIT_CFG, output_dict=True), open_clip.get_tokenizer("ViT-B-32", context_length=16)


def test_fine_loss_gradients_reach_both_towers_through_the_trainer_path() -> None:
    model, tokenizer = _tiny()
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=2)
    pixels, captions = source.batch(0, 4, seed=0)
    ids = tokenizer(captions)
    out = forward_features(model, pixels, ids, with_tokens=True) | {"token_mask": real_token_mask(tokenizer, ids)}
    assert out["patch_features"].shape == (4, 16, 16) and out["token_features"].shape == (4, 16, 16)
    terms = SparcLoss(global_weight=0.0)(**out)  # the fine term alone
    terms["fine_loss"].backward()
    for name in ("visual.conv1.weight", "visual.proj", "transformer.resblocks.0.mlp.c_fc.weight", "text_projection"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_twenty_steps_of_clip_plus_sparc_give_finite_terms() -> None:
    model, tokenizer = _tiny()
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=16)
    config = TrainConfig(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, eval_every=20, losses={"clip": 1, "sparc": 1})
    records = list(train(model, tokenizer, source, config))
    assert len(records) == 20
    for record in records:
        assert {"clip/contrastive_loss", "sparc/global_loss", "sparc/fine_loss"} <= set(record)
        assert all(math.isfinite(value) for value in record.values())
    assert records[-1]["total_loss"] == pytest.approx(
        records[-1]["clip/contrastive_loss"] + records[-1]["sparc/global_loss"] + records[-1]["sparc/fine_loss"],
        rel=1e-5,
    )
