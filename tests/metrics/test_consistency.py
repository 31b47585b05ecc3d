"""SaCo consistency math: hand-computed 3x3 cases, invariants, chunked == dense, and the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata, spearmanr

from vlviz.losses import LOSSES, create_loss
from vlviz.losses.saco import SACO_DISTANCES, SacoLoss, saco_loss
from vlviz.metrics.consistency import (
    average_ranks,
    cluster_order,
    consistency_figures,
    consistency_summary,
    in_modal_affinities,
    inconsistency_matrix,
    off_diagonal,
    pair_affinities,
    pearson_correlation,
    row_symmetric_kl,
    sample_inconsistency,
    sample_pairs,
    spearman_correlation,
)

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
# Images 0 and 1 are alike, image 2 differs; captions 1 and 2 are alike, caption 0 differs:
# A_I = [[1,1,0],[1,1,0],[0,0,1]], A_T = [[1,0,0],[0,1,1],[0,1,1]].
IMAGES = torch.stack([E1, E1, E2])
TEXTS = torch.stack([E1, E2, E2])
# Sigmoid of 1: the softmax of the logits [1, 0] is [S, 1 - S].
S = 1 / (1 + math.exp(-1))


def _random_pairs(n: int, d: int = 8, seed: int = 0, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random L2-normalised pairs; `offset` moves every vector towards one direction (mean cosine far from 0)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=generator) + offset
    texts = images + 0.8 * torch.randn(n, d, generator=generator)
    return F.normalize(images, dim=-1), F.normalize(texts, dim=-1)


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) + KL(q || p), written out."""
    return sum((a - b) * (math.log(a) - math.log(b)) for a, b in zip(p, q))


# ------------------------------------------------------------------------------- hand-computed 3x3


def test_affinities_and_inconsistency_by_hand() -> None:
    image_image, text_text = in_modal_affinities(IMAGES, TEXTS)
    assert torch.equal(image_image, torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    assert torch.equal(text_text, torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 1, 1]]))
    signed = torch.tensor([[0.0, 1, 0], [1, 0, -1], [0, -1, 0]])
    assert torch.equal(inconsistency_matrix(IMAGES, TEXTS, signed=True), signed)
    assert torch.equal(inconsistency_matrix(IMAGES, TEXTS), signed.abs())


def test_per_sample_inconsistency_by_hand() -> None:
    # Row means of |A_I - A_T| without the diagonal: (1 + 0)/2, (1 + 1)/2, (0 + 1)/2.
    assert torch.allclose(sample_inconsistency(IMAGES, TEXTS), torch.tensor([0.5, 1.0, 0.5]))


def test_global_figures_by_hand() -> None:
    figures = consistency_figures(IMAGES, TEXTS, temperature=1.0)
    # Pairs (0,1), (0,2), (1,2): A_I = 1, 0, 0 and A_T = 0, 0, 1.
    assert figures.mean_abs_inconsistency == pytest.approx(2 / 3)
    # Centred x = (2, -1, -1)/3 and y = (-1, -1, 2)/3: cov = -3/9, var = 6/9 each, r = -1/2.
    assert figures.pearson == pytest.approx(-0.5)
    # Ranks x = (3, 1.5, 1.5), y = (1.5, 1.5, 3): centred (1, -.5, -.5), (-.5, -.5, 1): rho = -0.75 / 1.5.
    assert figures.spearman == pytest.approx(-0.5)
    # Row softmaxes over j != i at tau = 1: row 0 p = (S, 1-S), q = (.5, .5); row 1 p = (S, 1-S),
    # q = (1-S, S); row 2 p = (.5, .5), q = (1-S, S).
    rows = [_kl([S, 1 - S], [0.5, 0.5]), _kl([S, 1 - S], [1 - S, S]), _kl([0.5, 0.5], [1 - S, S])]
    assert figures.symmetric_kl == pytest.approx(sum(rows) / 3)
    assert figures.pairs == 3 and figures.spearman_pairs == 3 and figures.spearman_exact


def test_row_symmetric_kl_by_hand_at_a_temperature() -> None:
    rows = row_symmetric_kl(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 0.0]]), temperature=0.5)
    assert rows.item() == pytest.approx(_kl([S, 1 - S], [0.5, 0.5]))  # 0.5 / 0.5 = the logit 1
    with pytest.raises(ValueError, match="temperature"):
        row_symmetric_kl(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)


def test_off_diagonal_drops_each_rows_own_entry() -> None:
    matrix = torch.arange(9.0).view(3, 3)
    assert torch.equal(off_diagonal(matrix), torch.tensor([[1.0, 2], [3, 5], [6, 7]]))
    assert torch.equal(off_diagonal(matrix[1:], row_offset=1), torch.tensor([[3.0, 5], [6, 7]]))


def test_correlations_and_ranks() -> None:
    x, y = torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 2, 3, 100])
    assert spearman_correlation(x, y) == pytest.approx(1.0)  # monotone: rho = 1 ...
    assert pearson_correlation(x, y) < 0.9  # ... while r is pulled down by the outlier
    assert math.isnan(pearson_correlation(x, torch.ones(4)))
    values = torch.tensor([3.0, 1, 3, 2, 1, 3])
    assert average_ranks(values).tolist() == rankdata(values.numpy()).tolist()
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randint(5, (50,), generator=generator).float(), torch.randn(50, generator=generator)
    assert spearman_correlation(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic)


# ------------------------------------------------------------------------------------- invariants


def test_one_shared_embedding_is_perfectly_consistent() -> None:
    images, _ = _random_pairs(9)
    assert torch.allclose(inconsistency_matrix(images, images), torch.zeros(9, 9))
    figures = consistency_figures(images, images)
    assert figures.mean_abs_inconsistency == pytest.approx(0.0, abs=1e-7)
    assert figures.symmetric_kl == pytest.approx(0.0, abs=1e-6)
    assert figures.pearson == pytest.approx(1.0) and figures.spearman == pytest.approx(1.0)
    summary = consistency_summary(images, images, k=3, chunk_size=4)
    assert summary.figures.mean_abs_inconsistency == pytest.approx(0.0, abs=1e-6)
    assert summary.figures.pearson == pytest.approx(1.0) and summary.figures.symmetric_kl == pytest.approx(0, abs=1e-5)


def test_matrices_are_symmetric() -> None:
    images, texts = _random_pairs(11)
    for matrix in (*in_modal_affinities(images, texts), inconsistency_matrix(images, texts, signed=True)):
        assert torch.allclose(matrix, matrix.T)


def test_two_pairs_have_no_correlation_and_give_none_in_json() -> None:
    images, texts = _random_pairs(2)
    figures = consistency_figures(images, texts)
    assert math.isnan(figures.pearson) and figures.to_dict()["pearson"] is None
    assert consistency_summary(images, texts).figures.to_dict()["spearman"] is None


def test_bad_shapes_and_single_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        consistency_figures(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        consistency_summary(torch.ones(1, 4), torch.ones(1, 4))


# -------------------------------------------------------------------------------- chunked == dense


@pytest.mark.parametrize(("chunk_size", "temperature"), [(1, 0.05), (5, 0.05), (5, 0.002), (37, 0.05), (None, 0.5)])
def test_chunked_figures_equal_the_dense_ones(chunk_size: int | None, temperature: float) -> None:
    images, texts = _random_pairs(37, offset=1.5)  # mean cosine far from 0: tests the moment merging
    dense = consistency_figures(images, texts, temperature=temperature)
    summary = consistency_summary(images, texts, k=5, temperature=temperature, chunk_size=chunk_size)
    chunked = summary.figures
    assert chunked.mean_abs_inconsistency == pytest.approx(dense.mean_abs_inconsistency, rel=1e-5)
    assert chunked.pearson == pytest.approx(dense.pearson, rel=1e-5)
    # Float rounding (matmul vs. elementwise dot) may swap the ranks of near-equal values.
    assert chunked.spearman == pytest.approx(dense.spearman, rel=1e-4)
    assert chunked.symmetric_kl == pytest.approx(dense.symmetric_kl, rel=1e-4)
    assert chunked.spearman_exact and chunked.spearman_pairs == 37 * 36 // 2
    assert torch.allclose(summary.sample_inconsistency, sample_inconsistency(images, texts), atol=1e-6)


@pytest.mark.parametrize("chunk_size", [3, None])
def test_top_k_matches_a_dense_argsort(chunk_size: int | None) -> None:
    images, texts = _random_pairs(23, seed=3)
    difference = inconsistency_matrix(images, texts)
    first, second = torch.triu_indices(23, 23, offset=1)
    values = difference[first, second]
    best = values.argsort(descending=True)[:7]
    top = consistency_summary(images, texts, k=7, chunk_size=chunk_size).top_pairs
    assert top.first.tolist() == first[best].tolist() and top.second.tolist() == second[best].tolist()
    assert torch.allclose(top.inconsistency, values[best], atol=1e-6)
    image_image, text_text = in_modal_affinities(images, texts)
    assert torch.allclose(top.image_affinity, image_image[top.first, top.second], atol=1e-6)
    assert torch.allclose(top.text_affinity, text_text[top.first, top.second], atol=1e-6)


def test_top_k_is_capped_at_the_number_of_pairs() -> None:
    images, texts = _random_pairs(4)
    top = consistency_summary(images, texts, k=100, chunk_size=1).top_pairs
    assert top.first.numel() == 6 and bool((top.first < top.second).all())
    assert {(i, j) for i, j in zip(top.first.tolist(), top.second.tolist())} == {
        (i, j) for i in range(4) for j in range(i + 1, 4)
    }


def test_spearman_on_a_seeded_sample_when_pairs_exceed_the_budget() -> None:
    images, texts = _random_pairs(60, offset=0.5)
    dense = consistency_figures(images, texts)
    sampled = consistency_summary(images, texts, spearman_pairs=800, seed=7).figures
    again = consistency_summary(images, texts, spearman_pairs=800, seed=7).figures
    assert not sampled.spearman_exact and sampled.spearman_pairs == 800
    assert sampled.spearman == again.spearman  # seeded: reproducible
    assert sampled.spearman == pytest.approx(dense.spearman, abs=0.1)
    assert sampled.pearson == pytest.approx(dense.pearson, rel=1e-5)  # Pearson stays exact


def test_sample_pairs_lists_all_pairs_or_a_distinct_seeded_sample() -> None:
    assert sample_pairs(4, 10).tolist() == [[0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3]]
    pairs = sample_pairs(1000, 5000, seed=1)
    first, second = pairs
    assert bool((first < second).all()) and int(second.max()) < 1000
    assert torch.unique(first * 1000 + second).numel() == pairs.shape[1] == 5000
    assert torch.equal(pairs, sample_pairs(1000, 5000, seed=1))
    images, texts = _random_pairs(30)
    x, y = pair_affinities(images, texts, pairs[:, :3] % 30)
    assert torch.allclose(x, (images[pairs[0, :3] % 30] * images[pairs[1, :3] % 30]).sum(1))
    assert y.shape == (3,)


def test_cluster_order_groups_similar_samples() -> None:
    # Samples 0, 2, 4 point one way and 1, 3, 5 another, in both modalities.
    base = torch.stack([E1 if i % 2 == 0 else E2 for i in range(6)])
    images = F.normalize(base + 0.05 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), dim=-1)
    order = cluster_order(*in_modal_affinities(images, images))
    assert sorted(order.tolist()) == list(range(6))
    assert {i % 2 for i in order[:3].tolist()} in ({0}, {1})


# -------------------------------------------------------------------------------------- saco_loss

# Images e1, (e1 + e2)/sqrt2, e2 and three identical captions e1: A_T = 1 everywhere and the
# off-diagonal A_I is R, 0, R (pairs 01, 02, 12), so A_I - A_T = R - 1, -1, R - 1.
R = 1 / math.sqrt(2)
LOSS_IMAGES = torch.stack([E1, (E1 + E2) * R, E2])
LOSS_TEXTS = torch.stack([E1, E1, E1])


def test_saco_distances_by_hand() -> None:
    assert saco_loss(LOSS_IMAGES, LOSS_TEXTS).item() == pytest.approx((2 * (1 - R) + 1) / 3)
    assert saco_loss(LOSS_IMAGES, LOSS_TEXTS, "l2").item() == pytest.approx((2 * (1 - R) ** 2 + 1) / 3)
    # tau = R: row 0 p = softmax(R/R, 0) = (S, 1-S) against a uniform q; row 1 p is uniform (R, R):
    # no divergence; row 2 mirrors row 0.
    expected = 2 * _kl([S, 1 - S], [0.5, 0.5]) / 3
    assert saco_loss(LOSS_IMAGES, LOSS_TEXTS, "kl", temperature=R).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("distance", SACO_DISTANCES)
def test_saco_gradients_reach_both_modalities(distance: str) -> None:
    generator = torch.Generator().manual_seed(0)
    raw_images = torch.randn(6, 8, generator=generator, requires_grad=True)
    raw_texts = torch.randn(6, 8, generator=generator, requires_grad=True)
    loss = saco_loss(F.normalize(raw_images, dim=-1), F.normalize(raw_texts, dim=-1), distance)
    loss.backward()
    for raw in (raw_images, raw_texts):
        assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


@pytest.mark.parametrize("distance", SACO_DISTANCES)
def test_saco_is_zero_for_one_shared_embedding(distance: str) -> None:
    images, _ = _random_pairs(5)
    assert saco_loss(images, images, distance).item() == pytest.approx(0.0, abs=1e-6)


def test_saco_module_is_registered_and_takes_model_outputs() -> None:
    assert LOSSES["saco"] is SacoLoss
    out = create_loss("saco")(image_features=LOSS_IMAGES, text_features=LOSS_TEXTS, logit_scale=torch.tensor(10.0))
    assert set(out) == {"saco_loss", "inconsistency"}
    assert out["saco_loss"].item() == pytest.approx((2 * (1 - R) + 1) / 3)
    kl = SacoLoss(distance="kl")(LOSS_IMAGES, LOSS_TEXTS)
    assert (
        kl["inconsistency"].item() == pytest.approx(out["saco_loss"].item()) and not kl["inconsistency"].requires_grad
    )
    with pytest.raises(ValueError, match="Unknown SaCo distance 'cos'"):
        SacoLoss(distance="cos")
    with pytest.raises(ValueError, match="at least 2 pairs"):
        saco_loss(E1[None], E1[None])
