"""vlviz's word-region contrast: SPARC's grouping across the batch's images, a token choosing its own image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlviz.grounding.sparc import alignment_weights, grouped_embeddings
from vlviz.losses import create_loss
from vlviz.losses.sparc import sparc_fine_grained_loss
from vlviz.losses.word_region import cross_image_grouped_embeddings, word_region_loss


def test_the_diagonal_is_sparc_grouping_of_each_pair() -> None:
    torch.manual_seed(0)
    tokens, patches = torch.randn(3, 5, 8), torch.randn(3, 16, 8)
    crossed = cross_image_grouped_embeddings(tokens, patches)
    assert crossed.shape == (3, 3, 5, 8)
    own = grouped_embeddings(alignment_weights(tokens, patches), patches)
    torch.testing.assert_close(crossed.diagonal(dim1=0, dim2=1).permute(2, 0, 1), own)
    # off the diagonal: caption 0 grouped over image 2's patches
    torch.testing.assert_close(
        crossed[0, 2], grouped_embeddings(alignment_weights(tokens[:1], patches[2:]), patches[2:])[0]
    )


def test_a_hand_computed_batch_of_two() -> None:
    # one token per caption, two patches per image, D = 2; every row of weights keeps one patch
    tokens = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (B=2, T=1, D)
    patches = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 3.0]]])  # (B=2, P=2, D)
    # token 0 over image 0: sims (2, 0) -> weights (1, 0) -> c = (2, 0), cos 1
    # token 0 over image 1: sims (1, 0) -> (1, 0) -> c = (1, 1), cos 1/sqrt(2)
    # token 1 over image 0: sims (0, 1) -> (0, 1) -> c = (0, 1), cos 1
    # token 1 over image 1: sims (1, 3) -> (0, 1) -> c = (0, 3), cos 1
    scale = 2.0
    expected_0 = -math.log(math.exp(scale) / (math.exp(scale) + math.exp(scale / math.sqrt(2))))
    expected_1 = -math.log(math.exp(scale) / (math.exp(scale) + math.exp(scale)))  # ties: log 2
    loss = word_region_loss(tokens, patches, torch.ones(2, 1), scale)
    assert math.isclose(loss.item(), (expected_0 + expected_1) / 2, rel_tol=1e-6)


def test_position_tied_maps_cannot_lower_it_but_satisfy_sparc() -> None:
    """Patches that hold only their place (the same in every image): SPARC's within-caption loss can be
    driven low by tying token l to place l; the word-region loss stays at chance, log B, whatever the scale."""
    batch, length, dim = 4, 6, 6
    places = torch.eye(dim)  # place l's embedding, identical across images
    patches = places[None].expand(batch, dim, dim).clone()
    tokens = places[:length][None].expand(batch, length, dim).clone()  # token l points at place l
    mask = torch.ones(batch, length)
    assert word_region_loss(tokens, patches, mask, 50.0).item() == pytest.approx(math.log(batch), rel=1e-5)
    assert sparc_fine_grained_loss(tokens, patches, mask, 50.0).item() < 1e-6


def test_padding_tokens_do_not_count() -> None:
    torch.manual_seed(1)
    tokens, patches = torch.randn(3, 4, 8), torch.randn(3, 9, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    changed = tokens.clone()
    changed[mask == 0] = torch.randn(int((mask == 0).sum()), 8)
    torch.testing.assert_close(
        word_region_loss(tokens, patches, mask, 5.0), word_region_loss(changed, patches, mask, 5.0)
    )


def test_content_found_in_the_own_image_lowers_it_and_gradients_reach_both_towers() -> None:
    torch.manual_seed(2)
    tokens = torch.randn(4, 3, 8, requires_grad=True)
    patches = torch.randn(4, 10, 8)
    patches[:, 0] = F.normalize(tokens.detach()[:, 0], dim=-1) * 3  # image i holds caption i's first word
    patches.requires_grad_(True)
    mask = torch.tensor([[1, 0, 0]] * 4)
    loss = word_region_loss(tokens, patches, mask, 10.0)
    swapped = word_region_loss(tokens, patches.roll(1, dims=0), mask, 10.0)  # image i holds caption i-1's word
    assert loss.item() < 0.5 * math.log(4) < math.log(4) < swapped.item()
    loss.backward()
    assert tokens.grad.abs().sum() > 0 and patches.grad.abs().sum() > 0


def test_the_registered_loss_weights_its_two_terms() -> None:
    torch.manual_seed(3)
    features = {
        "image_features": F.normalize(torch.randn(3, 8), dim=-1),
        "text_features": F.normalize(torch.randn(3, 8), dim=-1),
        "logit_scale": torch.tensor(10.0),
        "patch_features": torch.randn(3, 9, 8),
        "token_features": torch.randn(3, 4, 8),
        "token_mask": torch.ones(3, 4),
    }
    halves = create_loss("word_region")(**features)
    doubled = create_loss("word_region", global_weight=1.0, fine_weight=2.0)(**features)
    torch.testing.assert_close(doubled["global_loss"], 2 * halves["global_loss"])
    torch.testing.assert_close(doubled["word_region_loss"], 2 * halves["word_region_loss"])


def test_a_higher_threshold_groups_only_the_patches_near_the_peak() -> None:
    tokens = torch.tensor([[[1.0, 0.0]]])
    patches = torch.tensor([[[3.0, 0.0], [2.0, 1.0], [0.0, 1.0]]])  # sims 3, 2, 0 -> min-max 1, 2/3, 0
    loose = cross_image_grouped_embeddings(tokens, patches)[0, 0, 0]  # keeps 1 and 2/3
    torch.testing.assert_close(loose, (3 * patches[0, 0] + 2 * patches[0, 1]) / 5)
    sharp = cross_image_grouped_embeddings(tokens, patches, threshold=0.9)[0, 0, 0]  # only the peak
    torch.testing.assert_close(sharp, patches[0, 0])
    with pytest.raises(ValueError, match="threshold"):
        create_loss("word_region", threshold=2.0)


def test_a_batch_too_large_for_the_cross_image_grouping_is_refused_with_the_largest_that_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import vlviz.losses.word_region as word_region

    monkeypatch.setattr(word_region, "MAX_CROSS_CELLS", 4 * 4 * 3 * 9)  # batch 4 of 3 tokens and 9 patches, D 8
    tokens, patches = torch.randn(5, 3, 8), torch.randn(5, 9, 8)
    with pytest.raises(ValueError, match="Use a batch of at most 4"):
        word_region_loss(tokens, patches, torch.ones(5, 3), 1.0)
    assert torch.isfinite(word_region_loss(tokens[:4], patches[:4], torch.ones(4, 3), 1.0))
