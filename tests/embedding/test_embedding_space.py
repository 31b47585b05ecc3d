"""Layouts of the joint embedding space and the modality gap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlviz.embedding.space import (
    MIN_UMAP_POINTS,
    EmbeddingLayout,
    LayoutSettings,
    alignment_figures,
    close_modality_gap,
    fit_layout,
    gap_report,
    modality_gap,
)


def _pairs(n: int, seed: int = 0, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs with a modality gap: images around +e0, captions around -e0, partners close."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=generator)
    offset = torch.zeros(d)
    offset[0] = 3.0
    images = F.normalize(shared + offset + 0.3 * torch.randn(n, d, generator=generator), dim=-1)
    texts = F.normalize(shared - offset + 0.3 * torch.randn(n, d, generator=generator), dim=-1)
    return images, texts


@pytest.fixture(scope="module")
def umap_layout() -> tuple[EmbeddingLayout, torch.Tensor, torch.Tensor]:
    images, texts = _pairs(20)
    return fit_layout(images, texts, LayoutSettings(n_neighbors=8, seed=3)), images, texts


def test_gap_by_hand() -> None:
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert torch.equal(modality_gap(images, texts), torch.tensor([1.0, -1.0]))
    figures = alignment_figures(images, texts)
    assert figures.gap == pytest.approx(math.sqrt(2))
    assert figures.matched_cosine == pytest.approx(0.0) and figures.unmatched_cosine == pytest.approx(0.0)


def test_closing_the_gap_zeroes_the_centroid_difference_and_keeps_in_modal_structure() -> None:
    images, texts = _pairs(12)
    assert modality_gap(images, texts).norm() > 1.0
    shifted_images, shifted_texts = close_modality_gap(images, texts)
    assert torch.allclose(modality_gap(shifted_images, shifted_texts), torch.zeros(16), atol=1e-6)
    assert torch.allclose(shifted_images - shifted_images[0], images - images[0], atol=1e-6)
    assert torch.allclose(shifted_texts - shifted_texts[0], texts - texts[0], atol=1e-6)
    report = gap_report(images, texts)
    assert report["after"]["gap"] == pytest.approx(0.0, abs=1e-6)
    assert report["before"]["gap"] == pytest.approx(float(modality_gap(images, texts).norm()))
    # Without the gap, partners are far more alike in cosine than with it.
    assert report["after"]["matched_cosine"] > report["before"]["matched_cosine"] + 0.2


def test_one_pair_has_no_unmatched_cosine() -> None:
    images, texts = _pairs(1)
    assert gap_report(images, texts)["before"]["unmatched_cosine"] is None


def test_pca_is_deterministic_and_transform_reproduces_the_fit() -> None:
    images, texts = _pairs(15)
    layout = fit_layout(images, texts, LayoutSettings("pca"))
    assert layout.method == "pca" and layout.note is None and layout.coordinates.shape == (30, 2)
    assert torch.equal(layout.coordinates, fit_layout(images, texts, LayoutSettings("pca")).coordinates)
    assert torch.allclose(layout.transform(images, texts), layout.coordinates, atol=1e-5)
    # The modality gap lies along e0, the direction of most variance: PC1 separates the modalities.
    assert layout.axis_titles[0].startswith("PC1")
    assert bool((layout.coordinates[:15, 0] > 0).all()) and bool((layout.coordinates[15:, 0] < 0).all())
    # A fitted frame stays put: closing the gap moves the points along PC1 only by the projected shift.
    moved = layout.transform(*close_modality_gap(images, texts))
    assert moved[:15, 0].mean() < layout.coordinates[:15, 0].mean()


def test_umap_is_deterministic_for_a_fixed_seed(umap_layout) -> None:
    layout, images, texts = umap_layout
    assert layout.method == "umap" and layout.coordinates.shape == (40, 2)
    again = fit_layout(images, texts, LayoutSettings(n_neighbors=8, seed=3))
    assert torch.equal(layout.coordinates, again.coordinates)


def test_umap_layout_transforms_new_embeddings_into_its_frame(umap_layout) -> None:
    layout, images, texts = umap_layout
    later_images, later_texts = F.normalize(images + 0.01, dim=-1), F.normalize(texts + 0.01, dim=-1)
    placed = layout.transform(later_images, later_texts)
    assert placed.shape == (40, 2) and bool(torch.isfinite(placed).all())
    assert torch.equal(placed, layout.transform(later_images, later_texts))
    with pytest.raises(ValueError, match="16-d"):
        layout.transform(torch.zeros(2, 8), torch.zeros(2, 8))


def test_few_points_fall_back_to_pca_with_a_note() -> None:
    images, texts = _pairs(MIN_UMAP_POINTS // 2 - 1)
    layout = fit_layout(images, texts)
    assert layout.method == "pca" and "UMAP needs at least" in layout.note
    assert layout.coordinates.shape == (2 * images.shape[0], 2)


def test_bad_options_are_named() -> None:
    images, texts = _pairs(3)
    with pytest.raises(ValueError, match="'tsne'"):
        LayoutSettings("tsne")
    with pytest.raises(ValueError, match="'manhattan'"):
        LayoutSettings(metric="manhattan")
    with pytest.raises(ValueError, match="one shape"):
        fit_layout(images, texts[:2])
