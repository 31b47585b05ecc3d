"""The Consistency and Embedding-space tabs in a real Chromium: open, press, and see them drawn."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser import N_SAMPLE_PAIRS, TIMEOUT_MS, wait_for_heatmap, wait_for_title

pytestmark = pytest.mark.browser

# Trace names and types of the plotly figure inside a gr.Plot, or null while none is drawn.
_TRACES_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    if (!el || !el._fullData) return null;
    return {names: el._fullData.map((t) => t.name || ""), types: el._fullData.map((t) => t.type),
            title: (el.layout.title && el.layout.title.text) || ""};
}"""


def traces(page: Page, elem_id: str) -> dict | None:
    return page.evaluate(_TRACES_JS, elem_id)


def wait_for_trace(page: Page, elem_id: str, name: str) -> None:
    """Wait until the plot `#elem_id` has a trace called `name`."""
    page.wait_for_function(
        f"([id, name]) => {{ const t = ({_TRACES_JS})(id); return !!t && t.names.includes(name); }}",
        arg=[elem_id, name],
        timeout=TIMEOUT_MS,
    )


def show_then_redraw_with_pca(page: Page) -> None:
    """Open the tab (it draws the default UMAP on first view), then redraw it with PCA."""
    page.get_by_role("tab", name="Embedding space").click()
    wait_for_title(page, "embedding-plot", f"UMAP of {N_SAMPLE_PAIRS} images")
    page.locator("#embedding-method").get_by_label("pca").check()
    page.locator("#embedding-button").click()
    wait_for_title(page, "embedding-plot", f"PCA of {N_SAMPLE_PAIRS} images")


def test_consistency_tab_draws_heatmaps_scatter_and_the_most_inconsistent_pairs(page: Page) -> None:
    page.get_by_role("tab", name="Consistency").click()  # drawn on first view: no button to press
    wait_for_heatmap(page, "consistency-image-plot", rows=N_SAMPLE_PAIRS, title_starts="Image-image A_I")
    wait_for_heatmap(page, "consistency-text-plot", rows=N_SAMPLE_PAIRS, title_starts="Text-text A_T")
    wait_for_heatmap(page, "inconsistency-plot", rows=N_SAMPLE_PAIRS, title_starts="SaCo inconsistency")
    expect(page.locator("#inconsistency-plot .js-plotly-plot")).to_be_visible()
    wait_for_trace(page, "affinity-scatter-plot", "most inconsistent")
    expect(page.locator("#inconsistent-pairs .saco-pair")).to_have_count(8)
    expect(page.locator("#inconsistent-pairs .saco-pair img").first).to_be_visible()

    page.locator("#consistency-view").get_by_label("signed A_I − A_T").check()
    wait_for_heatmap(page, "inconsistency-plot", rows=N_SAMPLE_PAIRS, title_starts="Signed inconsistency")


def test_embedding_tab_draws_both_modalities_and_rings_a_picked_sample(page: Page) -> None:
    show_then_redraw_with_pca(page)
    drawn = traces(page, "embedding-plot")
    assert drawn["names"] == ["image ↔ caption", "images", "captions"], drawn
    assert drawn["title"].startswith(f"PCA of {N_SAMPLE_PAIRS} images")

    page.locator("#embedding-picker input").click()
    page.get_by_role("option").first.click()
    wait_for_trace(page, "embedding-plot", "picked")
    expect(page.locator("#picked-samples img")).to_have_count(1)


def test_a_lasso_around_the_plot_lists_every_sample(page: Page) -> None:
    show_then_redraw_with_pca(page)
    area = page.locator("#embedding-plot .nsewdrag").first.bounding_box()
    left, top = area["x"] + 2, area["y"] + 2
    right, bottom = area["x"] + area["width"] - 2, area["y"] + area["height"] - 2
    page.mouse.move(left, top)
    page.mouse.down()
    for x, y in ((right, top), (right, bottom), (left, bottom), (left, top)):
        page.mouse.move(x, y, steps=10)
    page.mouse.up()
    wait_for_trace(page, "embedding-plot", "picked")
    expect(page.locator("#picked-samples img")).to_have_count(N_SAMPLE_PAIRS)
    expect(page.locator("#embedding-picker")).to_contain_text("1. scene_00.png")
