"""Affinity math against hand-computed cases and invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlviz.metrics.affinity import (
    affinity_matrices,
    affinity_report,
    caption_recall_at_1,
    match_probabilities,
    pair_figures,
    partner_ranks,
    rank_images_by_text,
    recall_at_k,
    retrieval_ranks,
)

# Two images and two captions in 2-D: image 0 = e1, image 1 = (e1 + e2)/sqrt2; caption 0 = e1, caption 1 = e2.
IMAGES = torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
TEXTS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
R = 1 / math.sqrt(2)


def test_hand_computed_matrices() -> None:
    m = affinity_matrices(IMAGES, TEXTS)
    assert torch.allclose(m["image_text"], torch.tensor([[1.0, 0.0], [R, R]]))
    assert torch.allclose(m["image_image"], torch.tensor([[1.0, R], [R, 1.0]]))
    assert torch.allclose(m["text_text"], torch.eye(2))


def test_in_modal_matrices_are_symmetric_with_unit_diagonal() -> None:
    torch.manual_seed(0)
    x = F.normalize(torch.randn(7, 5), dim=-1)
    m = affinity_matrices(x, x.flip(0))
    for key in ("image_image", "text_text"):
        assert torch.allclose(m[key], m[key].T) and torch.allclose(m[key].diagonal(), torch.ones(7))


def test_clip_probabilities_are_softmaxes_and_siglip_sigmoids() -> None:
    i2t, t2i = match_probabilities(IMAGES, TEXTS, logit_scale=10.0)
    assert torch.allclose(i2t.sum(dim=1), torch.ones(2)) and torch.allclose(t2i.sum(dim=0), torch.ones(2))
    assert i2t[0, 0] == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-5)
    assert i2t[1, 0] == pytest.approx(0.5, rel=1e-5)  # equal cosines: a coin toss
    sig, sig_t = match_probabilities(IMAGES, TEXTS, logit_scale=10.0, logit_bias=-5.0)
    assert torch.equal(sig, sig_t)
    assert sig[0, 1] == pytest.approx(1 / (1 + math.exp(5)), rel=1e-5)
    assert sig[0, 0] == pytest.approx(1 / (1 + math.exp(-5)), rel=1e-5)


def test_ranks_count_ties_against_the_true_partner() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.3], [0.5, 0.5, 0.2], [0.8, 0.0, 0.1]])
    i2t, t2i = retrieval_ranks(similarity, torch.eye(similarity.shape[0]))  # images @ I^T = the similarity
    assert i2t.tolist() == [1, 2, 2]  # row 1 ties 0.5 with 0.5: the tie counts against it
    assert t2i.tolist() == [1, 1, 3]
    assert recall_at_k(i2t, 1) == pytest.approx(1 / 3)


def test_identical_captions_count_as_hits() -> None:
    similarity = torch.tensor([[0.1, 0.9], [0.2, 0.8]])
    assert caption_recall_at_1(similarity, ["a red circle", "a red circle"]) == 1.0
    assert caption_recall_at_1(similarity, ["a red circle", "a blue circle"]) == 0.5


def test_query_ranking_and_report() -> None:
    order, scores = rank_images_by_text(TEXTS[1], IMAGES)
    assert order == [1, 0] and scores == pytest.approx([R, 0.0], abs=1e-6)
    report = affinity_report(IMAGES, TEXTS, logit_scale=10.0)
    assert report.head == "softmax" and report.image_to_text_rank.tolist() == [1, 2]
    data = report.to_dict()
    assert data["image_text"][1] == pytest.approx([R, R], abs=1e-4) and data["text_to_image_rank"] == [1, 1]


def test_blockwise_ranks_equal_one_block() -> None:
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(30, 8, generator=generator), dim=-1)
    texts = F.normalize(images + torch.randn(30, 8, generator=generator), dim=-1)
    for queries, keys in ((images, texts), (texts, images)):
        assert torch.equal(partner_ranks(queries, keys, block_elements=30 * 7), partner_ranks(queries, keys))  # 7 rows


@pytest.mark.parametrize("bias", [None, -2.0])
def test_a_page_of_the_report_equals_the_same_slice_of_the_whole(bias: float | None) -> None:
    """Matrices of the shown pairs only; probabilities still normalised over all N, ranks over all N."""
    generator = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(12, 8, generator=generator), dim=-1)
    texts = F.normalize(images + torch.randn(12, 8, generator=generator), dim=-1)
    whole = affinity_report(images, texts, logit_scale=7.0, logit_bias=bias)
    shown = [3, 4, 5, 9]
    page = affinity_report(images, texts, logit_scale=7.0, logit_bias=bias, shown=shown)
    grid = (torch.tensor(shown)[:, None], torch.tensor(shown)[None, :])
    for name in ("image_text", "image_image", "text_text", "image_to_text_probability", "text_to_image_probability"):
        assert torch.allclose(getattr(page, name), getattr(whole, name)[grid], atol=1e-6), name
    for name in ("own_cosine", "own_probability", "image_to_text_rank", "text_to_image_rank"):
        assert torch.allclose(getattr(page, name).double(), getattr(whole, name).double(), atol=1e-6), name
    assert torch.allclose(whole.own_probability, whole.image_to_text_probability.diagonal(), atol=1e-6)
    assert page.shown.tolist() == shown and whole.shown.tolist() == list(range(12))


def test_a_page_reuses_the_pair_figures_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another page or value kind of the same pairs: no O(N^2 D) pass for the ranks again."""
    generator = torch.Generator().manual_seed(2)
    images = F.normalize(torch.randn(10, 8, generator=generator), dim=-1)
    texts = F.normalize(images + torch.randn(10, 8, generator=generator), dim=-1)
    figures = pair_figures(images, texts, logit_scale=5.0)
    whole = affinity_report(images, texts, logit_scale=5.0)
    assert torch.equal(figures.image_to_text_rank, whole.image_to_text_rank)
    assert torch.equal(figures.own_probability, whole.own_probability)

    def no_pass(*_: object) -> None:
        raise AssertionError("the ranks were computed again")

    monkeypatch.setattr("vlviz.metrics.affinity.retrieval_ranks", no_pass)
    page = affinity_report(images, texts, logit_scale=5.0, shown=[7, 8], pairs=figures)
    assert page.image_to_text_rank is figures.image_to_text_rank
    assert torch.allclose(page.image_text, whole.image_text[7:9, 7:9])
