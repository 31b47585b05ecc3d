"""The Dataset tab in Chromium: the map draws, hover shows a pair, search highlights its pairs, clusters colour the
map and one picked is selected, a lasso's pairs go to Analyze and fill the Affinity tab, and a linked map of the
same pairs by another model follows the hover."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser import open_page, wait_for_heatmap
from tests.conftest import free_port
from tests.ui.test_dataset_tab import embedded_folder
from vlviz.embedding.dataset import open_dataset
from vlviz.models.loading import OFFLINE_SPEC

pytestmark = pytest.mark.browser

N = 150
MAP = "() => document.querySelector('#dataset-map canvas')?.vlvizMap"
LINKED = "() => document.querySelector('#dataset-map-linked canvas')?.vlvizMap"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> list[Path]:
    """N scenes embedded by the offline model, and the same scenes by another model."""
    root = tmp_path_factory.mktemp("browser-dataset")
    return [embedded_folder(root, n=N), embedded_folder(root, n=N, model=str(tiny_vit_dir), name="scenes-vit")]


@pytest.fixture(scope="module")
def folder(folders: list[Path]) -> Path:
    return folders[0]


@pytest.fixture(scope="module")
def explore_url(folders: list[Path]) -> Iterator[str]:
    """The app as `explore FOLDER OTHER` starts it: both folders listed, no sample analysed."""
    from vlviz.ui import build_app, launch_kwargs

    demo = build_app(OFFLINE_SPEC, initial_sample=None, datasets=folders)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def map_page(browser, explore_url: str) -> Iterator[Page]:
    """A page on the app once the Dataset tab has drawn every point."""
    page = open_page(browser, explore_url, height=1100)
    page.wait_for_function(f"() => ({MAP})()?.drawn === {2 * N}")
    yield page
    page.context.close()


def _screen(page: Page, point: int) -> tuple[float, float]:
    """Where point `point` is drawn, in page coordinates."""
    x, y = page.evaluate(f"(i) => ({MAP})().plot.getScreenPosition(i)", point)
    box = page.locator("#dataset-map canvas").bounding_box()
    return box["x"] + x, box["y"] + y


def test_the_map_draws_and_hover_shows_the_pair(map_page: Page, folder: Path) -> None:
    expect(map_page.get_by_role("tab", name="Dataset")).to_have_attribute("aria-selected", "true")
    png = map_page.locator("#dataset-map canvas").screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    assert (np.abs(pixels - 255).sum(axis=2) > 30).mean() > 0.001  # points are on the canvas

    caption = open_dataset(folder, prepare=False).captions([4])[0]
    map_page.mouse.move(*_screen(map_page, N + 4))  # pair 5's caption point
    tip = map_page.locator("#dataset-map .vlviz-map-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(caption)
    expect(tip).to_contain_text("pair 5, caption")
    expect(tip.locator("img")).to_have_count(1)  # the pair's thumbnail
    fetched = map_page.evaluate(
        "() => performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('/points'))"
    )
    assert len(fetched) == 1 and "/first/" in fetched[0]  # the page's config named the map: fetched once, at once


def test_a_larger_map_is_drawn_first_from_the_servers_preview(
    browser, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawn from at most `preview` points first (every k-th, asked of the server beside the whole map), then whole:
    here a preview of 50 of the 300 points (k = 6)."""
    from vlviz.ui import build_app, dataset_tab, launch_kwargs

    monkeypatch.setattr(dataset_tab, "MAP_PREVIEW_POINTS", 50)
    demo = build_app(OFFLINE_SPEC, initial_sample=None, datasets=[folder])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    page = open_page(browser, f"http://127.0.0.1:{port}/", height=1100)
    try:
        page.wait_for_function(f"() => ({MAP})()?.drawn === {2 * N}")
        state = page.evaluate(f"() => {{ const m = ({MAP})(); return [m.previewed, m.shownAt <= m.drawnAt]; }}")
        assert state == [2 * N, True]
        sizes = page.evaluate(
            "() => performance.getEntriesByType('resource').filter((e) => e.name.includes('/points'))"
            ".map((e) => [e.name.split('/points')[1], e.decodedBodySize])"
        )
        assert sorted(sizes) == [["", 12 * 2 * N], ["?preview=50", 12 * 50]]
    finally:
        page.context.close()
        demo.close()


def test_zoomed_in_the_map_draws_thumbnails_over_its_images(map_page: Page) -> None:
    thumbnails = "#dataset-map .vlviz-map-thumbnails img"
    expect(map_page.locator(thumbnails)).to_have_count(0)  # the whole map: points only
    x, y = map_page.evaluate(f"() => {{ const s = ({MAP})(); return [s.points.x[0], s.points.y[0]]; }}")
    map_page.evaluate(f"([x, y]) => ({MAP})().plot.zoomToArea({{x: x - 0.2, y: y - 0.2, width: 0.4, height: 0.4}})",
                      [x, y])  # fmt: skip
    map_page.wait_for_function(f"() => ({MAP})().thumbnails.some((t) => t.index === 0)")  # image 0 is in view
    drawn = map_page.evaluate(f"() => ({MAP})().thumbnails.map((t) => t.index)")
    assert 0 < len(drawn) <= 60 and all(0 <= index < N for index in drawn)  # images' points only
    first = map_page.locator(thumbnails).first
    expect(first).to_have_attribute("src", re.compile(r"^data:image/jpeg;base64,"))
    assert map_page.evaluate("(image) => image.naturalWidth", first.element_handle()) > 0
    image_box, (px, py) = map_page.locator(thumbnails).nth(drawn.index(0)).bounding_box(), _screen(map_page, 0)
    assert (
        abs(image_box["x"] + image_box["width"] / 2 - px) < 2 and abs(image_box["y"] + image_box["height"] / 2 - py) < 2
    )

    map_page.evaluate(f"() => ({MAP})().plot.zoomToArea({{x: -1, y: -1, width: 2, height: 2}})")
    expect(map_page.locator(thumbnails)).to_have_count(0)  # zoomed out again


def test_search_highlights_its_pairs(map_page: Page) -> None:
    map_page.locator("#dataset-query textarea").fill("a red circle")
    map_page.locator("#dataset-search").click()
    map_page.wait_for_function(f"() => ({MAP})().plot.get('selectedPoints').length === 48")  # 24 pairs, 2 points each
    expect(map_page.locator("#dataset-selection")).to_contain_text("24 pairs selected")
    expect(map_page.locator("#dataset-hits")).to_contain_text("red")


def test_clusters_colour_the_map_and_one_picked_is_the_selection(map_page: Page, folder: Path) -> None:
    def hues() -> int:
        png = map_page.locator("#dataset-map canvas").screenshot()
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3) // 32
        coloured = pixels[np.ptp(pixels, axis=1) > 2]  # not white, grey or black: a point's colour
        return len({tuple(colour) for colour in coloured})

    by_modality = hues()
    map_page.locator("#dataset-colour").get_by_text("cluster", exact=True).click()
    map_page.wait_for_function(f"() => ({MAP})().plot.get('pointColor').length === 16")
    map_page.wait_for_timeout(300)  # the frame after the redraw
    assert hues() > by_modality  # 16 clusters' colours, not two
    clusters = open_dataset(folder, prepare=False).clusters
    kept = len(np.unique(clusters.points(0) % N))
    map_page.locator("#dataset-cluster input").click()
    map_page.get_by_role("option", name=re.compile(r"^1: ")).click()
    expect(map_page.locator("#dataset-selection")).to_contain_text(f"{kept} pairs selected (cluster 1's)")
    map_page.wait_for_function(f"() => ({MAP})().plot.get('selectedPoints').length === {2 * kept}")


def test_a_lasso_sends_its_pairs_to_analyze(map_page: Page) -> None:
    box = map_page.locator("#dataset-map canvas").bounding_box()
    left, top = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3
    right, bottom = box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7
    map_page.keyboard.down("Shift")  # shift-drag draws a lasso
    map_page.mouse.move(left, top)
    map_page.mouse.down()
    for x, y in ((right, top), (right, bottom), (left, bottom), (left, top + 1)):
        map_page.mouse.move(x, y, steps=8)
    map_page.mouse.up()
    map_page.keyboard.up("Shift")
    expect(map_page.locator("#dataset-selection")).to_contain_text("(the lasso's)")
    selected = map_page.evaluate(f"() => ({MAP})().plot.get('selectedPoints')")
    pairs = sorted({point % N for point in selected})
    assert 0 < len(pairs) < N

    map_page.locator("#dataset-analyze").click()
    rows = min(len(pairs), 200)
    wait_for_heatmap(map_page, "image-text-plot", rows=rows)
    expect(map_page.get_by_role("tab", name="Affinity")).to_have_attribute("aria-selected", "true")
    expect(map_page.locator("#model-status")).to_contain_text(f"{rows} pairs selected in the dataset")


def test_a_linked_map_follows_the_hover_and_colours_by_rank_shift(map_page: Page) -> None:
    map_page.locator("#dataset-linked input").click()
    map_page.get_by_role("option", name="scenes-vit").click()
    map_page.wait_for_function(f"() => ({LINKED})()?.drawn === {2 * N}")
    map_page.mouse.move(*_screen(map_page, 7))
    map_page.wait_for_function(f"() => ({LINKED})().linkedHover === 7")  # the same pair's image, in the other map
    map_page.mouse.move(5, 5)  # off the map: the other map's highlight goes too
    map_page.wait_for_function(f"() => ({LINKED})().linkedHover === null")

    map_page.locator("#dataset-colour").get_by_text("rank_shift").click()
    expect(map_page.locator("#dataset-info")).to_contain_text("own caption moved in image-to-caption retrieval")
    map_page.wait_for_function(f"() => ({LINKED})().plot.get('pointColor').length === 16")  # both on the ramp
    map_page.wait_for_function(f"() => ({MAP})().plot.get('pointColor').length === 16")
