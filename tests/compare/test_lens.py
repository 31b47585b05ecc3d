"""The before/after lens: movements checked on a hand-built case, differences and the shared layout's invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlviz.compare.lens import (
    affinity_difference,
    grounding_difference,
    inconsistency_difference,
    pair_movement,
    shared_layout,
)


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows), dim=-1)


# Before: image 0 sits closer to caption 1 than to its own; after: every pair matches.
BEFORE = (
    _unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]),
    _unit([0.6, 0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]),
)
AFTER = (BEFORE[0], BEFORE[0].clone())


def test_movement_of_a_hand_built_case() -> None:
    movement = pair_movement(BEFORE, AFTER)
    # image 0: cos(caption 0) = 0.6 < cos(caption 1) = 0.8, so its caption ranks 2nd before, 1st after
    assert movement.image_to_text_rank.tolist() == [[2, 2, 1], [1, 1, 1]]
    assert movement.own_similarity[0].tolist() == pytest.approx([0.6, 0.6, 1.0])
    assert movement.own_similarity[1].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert movement.inconsistency[1].tolist() == pytest.approx([0.0, 0.0, 0.0])  # images and captions agree
    assert movement.moved_most(2).tolist() == [0, 1]  # pair 2 did not move
    assert movement.image_to_text_rank.shape == (2, 3)


def test_differences_are_after_minus_before() -> None:
    assert torch.allclose(affinity_difference(BEFORE, BEFORE), torch.zeros(3, 3))
    difference = affinity_difference(BEFORE, AFTER)
    assert difference[0, 0] == pytest.approx(0.4) and difference[2, 2] == pytest.approx(0.0)
    change = inconsistency_difference(BEFORE, AFTER)
    assert torch.allclose(change, change.T) and bool((change <= 1e-6).all())  # symmetric; only falls here
    with pytest.raises(ValueError, match="same pairs"):
        affinity_difference(BEFORE, (AFTER[0][:2], AFTER[1][:2]))


def test_shared_layout_keeps_an_unmoved_pair_in_place() -> None:
    torch.manual_seed(0)
    before = (F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1))
    after = (before[0].clone(), F.normalize(before[1] + 0.5 * torch.randn(6, 8), dim=-1))
    after[1][0] = before[1][0]  # caption 0 does not move
    layout = shared_layout(before, after)
    assert layout.shape == (2, 2, 6, 2)
    assert torch.allclose(layout[0, 0], layout[1, 0], atol=1e-5)  # the images did not move
    assert torch.allclose(layout[0, 1, 0], layout[1, 1, 0], atol=1e-5)
    assert not torch.allclose(layout[0, 1, 1:], layout[1, 1, 1:], atol=1e-3)
    assert torch.allclose(layout.reshape(-1, 2).mean(dim=0), torch.zeros(2), atol=1e-5)  # centred


def test_grounding_difference_needs_one_grid() -> None:
    maps = torch.rand(3, 4, 4)
    assert torch.equal(grounding_difference(maps, maps), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="patch grid"):
        grounding_difference(maps, torch.rand(3, 2, 2))
