"""The joint embedding space in 2-D (PCA, UMAP) and the modality gap.

Liang et al., "Mind the Gap" (NeurIPS 2022): a CLIP model's image and text embeddings sit in two
separate regions of the sphere. The gap is the difference of the modality centroids,
Delta = mean_i I_i - mean_i T_i, and its length ||Delta|| the gap distance. Shifting every image
by -Delta/2 and every caption by +Delta/2 closes it (the centroids meet) and leaves the structure
within each modality untouched, so what remains between the two clouds is alignment.

Layouts embed the 2N points [I; T] together (images first, then captions) and can be fitted once
and then `transform` later embeddings of the same pairs into the same frame, so plots taken
during training move only because the model moved. They run on the CPU (UMAP is numpy code).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlviz.embedding.umap_layout import UMAP_METRICS, umap_coordinates
from vlviz.metrics.affinity import affinity, recall_at_k, retrieval_ranks

METHODS = ("umap", "pca")
MIN_UMAP_POINTS = 10  # fewer points than this (5 pairs) are shown with PCA


def modality_gap(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The gap vector Delta = mean_i I_i - mean_i T_i, (D,)."""
    return image_features.float().mean(dim=0) - text_features.float().mean(dim=0)


def close_modality_gap(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images shifted by -Delta/2 and captions by +Delta/2, so both centroids sit at their midpoint.

    The shifted vectors are not re-normalised: cosine figures on them normalise (cosine does not
    see the length), and the plots show the translation alone.
    """
    half = modality_gap(image_features, text_features) / 2  # (D,)
    return image_features.float() - half, text_features.float() + half


@dataclass(frozen=True)
class AlignmentFigures:
    """How well N pairs line up across modalities, in cosine on the (possibly shifted) embeddings."""

    gap: float  # ||Delta||, the distance between the modality centroids
    matched_cosine: float  # mean cos(I_i, T_i)
    unmatched_cosine: float  # mean cos(I_i, T_j) over i != j (NaN for one pair)
    image_to_text_r1: float  # fraction of images whose own caption is the closest
    text_to_image_r1: float


def alignment_figures(image_features: torch.Tensor, text_features: torch.Tensor) -> AlignmentFigures:
    """The gap and the cosine/retrieval figures of N pairs."""
    images, texts = F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)
    similarity = affinity(images, texts)  # (N, N)
    n = similarity.shape[0]
    matched = similarity.diagonal()
    unmatched = (similarity.sum() - matched.sum()) / (n * (n - 1)) if n > 1 else torch.tensor(math.nan)
    image_to_text, text_to_image = retrieval_ranks(images, texts)
    return AlignmentFigures(
        gap=float(modality_gap(image_features, text_features).norm()),
        matched_cosine=float(matched.mean()),
        unmatched_cosine=float(unmatched),
        image_to_text_r1=recall_at_k(image_to_text, 1),
        text_to_image_r1=recall_at_k(text_to_image, 1),
    )


def gap_report(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, dict[str, float | None]]:
    """`alignment_figures` before and after closing the gap, as plain values (NaN -> None)."""
    after = close_modality_gap(image_features, text_features)
    return {
        name: {k: None if math.isnan(v) else v for k, v in asdict(figures).items()}
        for name, figures in (
            ("before", alignment_figures(image_features, text_features)),
            ("after", alignment_figures(*after)),
        )
    }


@dataclass(frozen=True)
class EmbeddingLayout:
    """A fitted 2-D layout of 2N points [images; captions], reusable through `transform`."""

    method: str  # what was fitted: "umap" or "pca"
    coordinates: torch.Tensor  # (2N, 2), images first, then captions
    axis_titles: tuple[str, str]
    note: str | None  # why the method differs from the one asked for, or other caveats
    dimension: int  # D the layout was fitted on
    projection: Any  # PCA: (mean (D,), components (D, 2)); UMAP: the fitted umap.UMAP

    def transform(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Place new embeddings of M pairs in this layout's frame: (2M, 2), images first."""
        points = _joint_points(image_features, text_features)
        if points.shape[1] != self.dimension:
            raise ValueError(f"This layout was fitted on {self.dimension}-d embeddings, got {points.shape[1]}-d.")
        if self.method == "pca":
            mean, components = self.projection
            return ((points - mean) @ components).float()
        return torch.from_numpy(self.projection.transform(points.float().numpy())).float()


UmapFit = Callable[..., tuple[np.ndarray, Any]]  # `umap_coordinates`' signature: (coordinates, reducer)


@dataclass(frozen=True)
class LayoutSettings:
    """How images and captions are laid out in 2-D: the method, and UMAP's parameters (McInnes et al. 2018)."""

    method: str = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse an unknown method or metric where the settings are made, before anything is fitted."""
        if self.method not in METHODS:
            raise ValueError(f"Unknown layout method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.metric not in UMAP_METRICS:
            raise ValueError(f"Unknown UMAP metric {self.metric!r}; choose one of {', '.join(UMAP_METRICS)}.")


DEFAULT_SETTINGS = LayoutSettings()  # what `fit_layout` and the views fit when not told otherwise


def fit_layout(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    settings: LayoutSettings = DEFAULT_SETTINGS,
    umap_fit: UmapFit = umap_coordinates,
) -> EmbeddingLayout:
    """Embed images and captions together in 2-D; the same inputs and seed give the same layout.

    PCA: the top two eigenvectors of the joint covariance, each signed so that its largest loading
    is positive. UMAP: `umap_coordinates` (single-threaded, hence reproducible), or `umap_fit` with its
    signature (the app's `LayoutWorker` fits in a child process). Fewer than MIN_UMAP_POINTS points fall
    back to PCA, with a note saying so.
    """
    method, n_neighbors = settings.method, settings.n_neighbors
    points = _joint_points(image_features, text_features)  # (2N, D)
    count, dimension = points.shape
    note = None
    if method == "umap" and count < MIN_UMAP_POINTS:
        note = (
            f"UMAP needs at least {MIN_UMAP_POINTS} points ({MIN_UMAP_POINTS // 2} pairs); {count} are shown with PCA."
        )
        method = "pca"
    if method == "pca":
        mean, components, explained = _principal_axes(points)
        coordinates = ((points - mean) @ components).float()
        titles = (f"PC1 ({explained[0]:.0%} of variance)", f"PC2 ({explained[1]:.0%} of variance)")
        return EmbeddingLayout("pca", coordinates, titles, note, dimension, (mean, components))

    neighbours = min(n_neighbors, count - 1)
    if neighbours < n_neighbors:
        note = f"n_neighbors lowered from {n_neighbors} to {neighbours}: there are only {count} points."
    coordinates, reducer = umap_fit(
        points.float().numpy(), n_neighbors=neighbours, min_dist=settings.min_dist, metric=settings.metric,
        seed=settings.seed,
    )  # fmt: skip
    coordinates = torch.from_numpy(coordinates).float()
    return EmbeddingLayout("umap", coordinates, ("UMAP 1", "UMAP 2"), note, dimension, reducer)


def _joint_points(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """[I; T] as one (2N, D) float64 CPU matrix."""
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"Expected image and text features of one shape (N, D), got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}."
        )
    return torch.cat([image_features, text_features]).detach().cpu().double()


def _principal_axes(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """Mean (D,), top-2 principal axes (D, 2) with a fixed sign, and their share of the variance."""
    mean = points.mean(dim=0)
    centred = points - mean
    covariance = centred.T @ centred / max(1, points.shape[0] - 1)  # (D, D)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    components = eigenvectors[:, -2:].flip(1)  # (D, 2), largest first
    strongest = components.abs().argmax(dim=0)
    components = components * components[strongest, torch.arange(2)].sign()
    total = float(eigenvalues.clamp_min(0).sum())
    top = eigenvalues[-2:].flip(0).clamp_min(0)
    explained = (float(top[0]) / total, float(top[1]) / total) if total > 0 else (0.0, 0.0)
    return mean, components, explained
