"""PAMR against a reference written as the official code computes it (shift-kernel convolutions), plus invariants:
weights that sum to 1, constant maps kept, edges kept, and the NACLIP + PAMR map kind on the offline model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import SCENES_DIR
from vlviz.grounding.maps import PAMR_KIND, model_scene_maps
from vlviz.grounding.pamr import neighbours, pamr, pamr_affinities, refine_patch_maps
from vlviz.models.loading import GROUNDED_SPEC, load_model


def shift_kernels(centre: bool, sign: float) -> torch.Tensor:
    """The official code's 3x3 kernels: one per neighbour (row-major), `sign` at the neighbour, 1 at the centre
    when not `centre` and sign is -1 (its LocalAffinity), else only the neighbour (LocalAffinityCopy/LocalStDev)."""
    places = [(a, b) for a in range(3) for b in range(3) if centre or (a, b) != (1, 1)]
    weight = torch.zeros(len(places), 1, 3, 3)
    for i, (a, b) in enumerate(places):
        if sign < 0:
            weight[i, 0, 1, 1] = 1
        weight[i, 0, a, b] = sign if sign < 0 else 1
    return weight


def reference_pamr(image: torch.Tensor, mask: torch.Tensor, iterations: int, dilations: list[int]) -> torch.Tensor:
    def local(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape
        x = x.reshape(b * k, 1, h, w)
        parts = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
        return torch.cat(parts, 1).reshape(b, k, -1, h, w)

    spread = local(image, shift_kernels(True, 1.0)).std(2, keepdim=True)
    x = -local(image, shift_kernels(False, -1.0)).abs() / (1e-8 + 0.1 * spread)
    x = x.mean(1, keepdim=True).softmax(2)
    for _ in range(iterations):
        mask = (local(mask, shift_kernels(False, 1.0)) * x).sum(2)
    return mask


@pytest.mark.parametrize("dilations", [[1], [2, 4], [8, 16]])
def test_pamr_matches_the_official_shift_kernel_computation(dilations: list[int]) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 24, 20, generator=generator)
    maps = torch.rand(2, 5, 24, 20, generator=generator)
    expected = reference_pamr(image, maps, 3, dilations)
    torch.testing.assert_close(pamr(image, maps, 3, dilations), expected, rtol=1e-5, atol=1e-6)


def test_neighbours_are_the_shifted_pixels_with_replicated_edges() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    ring = neighbours(x, [1])[0, 0]  # (8, 4, 4)
    assert ring.shape == (8, 4, 4)
    assert ring[0, 1, 1] == x[0, 0, 0, 0]  # up-left of (1, 1)
    assert ring[7, 1, 1] == x[0, 0, 2, 2]  # down-right
    assert ring[0, 0, 0] == x[0, 0, 0, 0]  # outside the image: the edge pixel
    assert neighbours(x, [1, 2], centre=True).shape == (1, 1, 18, 4, 4)


def test_affinities_are_weights_and_constant_maps_stay_constant() -> None:
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    alpha = pamr_affinities(image, [1, 2])
    assert alpha.shape == (1, 16, 16, 16)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(1, 16, 16))
    constant = torch.full((1, 2, 16, 16), 0.3)
    torch.testing.assert_close(pamr(image, constant, 5, [1, 2]), constant)


def test_pamr_keeps_a_map_inside_its_region_where_a_flat_image_would_blur_it() -> None:
    halves = torch.zeros(1, 3, 16, 16)
    halves[:, 0, :, :8], halves[:, 2, :, 8:] = 1.0, 1.0  # red left, blue right
    halves += 0.01 * torch.randn(halves.shape, generator=torch.Generator().manual_seed(2))
    flat = 0.01 * torch.randn(halves.shape, generator=torch.Generator().manual_seed(2))
    word = torch.zeros(1, 1, 16, 16)
    word[..., :8] = 1.0  # the word's map on the red half
    on_edges = pamr(halves, word, 10, [1, 2])
    blurred = pamr(flat, word, 10, [1, 2])
    assert on_edges[..., 8:].max() < 0.05  # nothing leaks across the colour edge
    assert blurred[..., 8:].max() > 0.3  # a flat image spreads it
    assert on_edges[..., :8].min() > 0.95


def test_refined_patch_maps_keep_the_grid_and_refuse_a_wrong_size() -> None:
    generator = torch.Generator().manual_seed(3)
    maps, pixels = torch.rand(2, 4, 16, generator=generator), torch.randn(2, 3, 32, 32, generator=generator)
    refined = refine_patch_maps(maps, pixels, (4, 4), dilations=(2, 4))
    assert refined.shape == (2, 4, 16)
    assert refined.min() >= maps.min() - 1e-6 and refined.max() <= maps.max() + 1e-6  # averages stay in range
    with pytest.raises(ValueError, match="PAMR needs a map per image"):
        pamr(pixels[:1], torch.rand(2, 1, 32, 32))


def test_naclip_pamr_is_a_map_kind_of_the_offline_model(offline_model) -> None:
    images = [Image.open(path).convert("RGB") for path in sorted(SCENES_DIR.glob("*.png"))[:3]]
    captions = ["a red circle", "a blue square on the left", "a green triangle"]
    naclip, _ = model_scene_maps(offline_model, images, captions, "naclip", swapped=False)
    refined, previous = model_scene_maps(offline_model, images, captions, PAMR_KIND)
    assert refined.shape == naclip.shape and previous.shape == naclip.shape
    assert torch.isfinite(refined).all() and not torch.allclose(refined, naclip)
    torch.testing.assert_close(refined[:, -1], naclip[:, -1])  # tokens after the last real one are left alone


def test_naclip_pamr_refuses_a_model_read_before_any_block() -> None:
    grounded = load_model(GROUNDED_SPEC, device="cpu")
    image = Image.open(sorted(SCENES_DIR.glob("*.png"))[0]).convert("RGB")
    with pytest.raises(ValueError):
        model_scene_maps(grounded, [image], ["a red circle"], PAMR_KIND)
