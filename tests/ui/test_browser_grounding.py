"""The Grounding tab in a real Chromium: open it, pick a word, and see its map drawn over the image."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser import wait_for_title
from vlviz.data.samples import sample_files

pytestmark = pytest.mark.browser

FIRST_CAPTION_WORDS = sample_files("scenes")[1].splitlines()[0].replace(",", "").split()

# The plotly figure inside a gr.Plot: trace types, title, each heatmap's z shape, the image traces'
# sources, and how many <image> elements plotly drew (one per image trace and one per heatmap).
_FIGURE_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    if (!el || !el._fullData) return null;
    return {
        types: el._fullData.map((t) => t.type),
        title: (el.layout.title && el.layout.title.text) || "",
        shapes: el._fullData.filter((t) => t.type === "heatmap").map((t) => [t.z.length, t.z[0].length]),
        sources: el._fullData.filter((t) => t.type === "image").map((t) => (t.source || "").slice(0, 22)),
        drawn: el.querySelectorAll("image").length,
    };
}"""


def figure(page: Page, elem_id: str) -> dict | None:
    return page.evaluate(_FIGURE_JS, elem_id)


@pytest.fixture
def page(page: Page) -> Page:
    """The app's page with the Grounding tab open."""
    page.get_by_role("tab", name="Grounding").click()
    return page


def test_choosing_a_word_draws_its_map_over_the_image(page: Page) -> None:
    chips = page.locator("#grounding-words label")
    expect(chips).to_have_count(len(FIRST_CAPTION_WORDS))
    assert chips.all_inner_texts() == FIRST_CAPTION_WORDS
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}'")  # the first content word (not a size)

    word = FIRST_CAPTION_WORDS[3]
    page.locator("#grounding-words").get_by_label(word, exact=True).check()
    wait_for_title(page, "grounding-overlay", f"'{word}': SPARC weights")
    overlay = figure(page, "grounding-overlay")
    assert overlay["types"] == ["image", "heatmap"] and overlay["shapes"] == [[8, 8]]
    assert overlay["sources"] == ["data:image/png;base64,"] and overlay["drawn"] == 2  # the scene, then the map
    expect(page.locator("#grounding-overlay .js-plotly-plot")).to_be_visible()

    grid_types = ["image", "heatmap"] * len(FIRST_CAPTION_WORDS)
    page.wait_for_function(f"({_FIGURE_JS})('grounding-grid')?.types.length === {len(grid_types)}")
    assert figure(page, "grounding-grid")["types"] == grid_types
    expect(page.locator("#grounding-score")).to_contain_text("pointing game")


def test_the_switch_redraws_the_dense_cosine_map_and_the_occlusion_map(page: Page) -> None:
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}'")
    page.locator("#grounding-kind").get_by_label("dense cosine map").check()
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}': dense cosine map")
    wait_for_title(page, "grounding-matrix", "Token x patch: dense cosine map")
    page.locator("#grounding-kind").get_by_label("occlusion map").check()
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}': occlusion map")
    expect(page.locator("#grounding-score")).to_contain_text("occlusion")


def test_the_untrained_model_is_drawn_beside_on_the_same_word(page: Page) -> None:
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}'")
    expect(page.locator("#grounding-compare")).to_be_hidden()
    page.locator("#grounding-compare-with input").click()
    page.get_by_role("option", name="the untrained model (same architecture)").click()
    wait_for_title(
        page, "grounding-compare", f"'{FIRST_CAPTION_WORDS[2]}': SPARC weights<br><sup>vlviz-scenes (untrained"
    )
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}': SPARC weights<br><sup>vlviz-scenes</sup>")
    assert figure(page, "grounding-compare")["shapes"] == [[8, 8]]

    word = FIRST_CAPTION_WORDS[3]  # a new word redraws both
    page.locator("#grounding-words").get_by_label(word, exact=True).check()
    wait_for_title(page, "grounding-compare", f"'{word}': SPARC weights<br><sup>vlviz-scenes (untrained")
