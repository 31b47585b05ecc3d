"""The Grounding tab in a real Chromium: open it, pick a word, and see its map drawn over the image, alone and by every
method; score annotations uploaded, and see a bad upload named while the table stays."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import TIMEOUT_MS, wait_for_title
from tests.grounding.test_annotations import _write_scenes
from tests.ui.test_browser import opaque_overlays
from vlviz.data.samples import bundled_scenes, sample_files
from vlviz.ui.grounding_tab import EVERY_METHOD_KINDS
from vlviz.viz.views import MAP_LABELS

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


# Each panel's title (the subplot annotations) and the traces drawn, once the every-method figure is on screen.
_EVERY_JS = """() => {
    const el = document.querySelector("#grounding-every .js-plotly-plot");
    if (!el || !el._fullData) return null;
    return {
        title: (el.layout.title && el.layout.title.text) || "",
        panels: (el.layout.annotations || []).map((a) => a.text),
        types: el._fullData.map((t) => t.type),
    };
}"""


def test_every_method_draws_one_panel_per_method_and_follows_the_word(page: Page) -> None:
    wait_for_title(page, "grounding-overlay", f"'{FIRST_CAPTION_WORDS[2]}'")
    page.get_by_text("Every method: the chosen word by each map method").click()
    page.locator("#grounding-every-on input").check()
    drawn = ["image", "heatmap"] * len(EVERY_METHOD_KINDS)  # the offline model draws every method, occlusion too
    page.wait_for_function(f"({_EVERY_JS})()?.types.length === {len(drawn)}", timeout=TIMEOUT_MS)
    every = page.evaluate(_EVERY_JS)
    assert every["types"] == drawn and every["title"].startswith(f"'{FIRST_CAPTION_WORDS[2]}' by every method")
    assert [panel.split("<br>")[0] for panel in every["panels"]] == [MAP_LABELS[kind] for kind in EVERY_METHOD_KINDS]
    assert all("<br>pointing 0." in panel or "<br>pointing 1.00" in panel for panel in every["panels"])
    expect(page.locator("#grounding-every-notice")).to_contain_text("loaded bundled scenes")

    word = FIRST_CAPTION_WORDS[3]  # a new word redraws the main view, then every method
    page.locator("#grounding-words").get_by_label(word, exact=True).check()
    wait_for_title(page, "grounding-every", f"'{word}' by every method")
    assert page.evaluate(_EVERY_JS)["types"] == drawn


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two bundled scenes as COCO instances with their images zipped, and the same file with an unknown category."""
    folder = tmp_path_factory.mktemp("annotated")
    _write_scenes(bundled_scenes()[0], [0, 1], folder)
    with zipfile.ZipFile(folder / "images.zip", "w") as archive:
        for path in sorted((folder / "images").glob("*.png")):
            archive.write(path, path.name)
    coco = json.loads((folder / "coco_colour.json").read_text())
    coco["annotations"][0]["category_id"] = 99
    (folder / "unknown_category.json").write_text(json.dumps(coco))
    return folder


def _upload_and_score(page: Page, annotations: Path) -> None:
    box = page.locator("#grounding-annotations-file")
    clear = box.get_by_role("button", name="Clear", exact=True)
    if clear.count():
        clear.click()
    box.locator("input[type=file]").set_input_files(annotations)
    expect(box.locator("td.filename")).to_have_count(1)
    page.locator("#grounding-annotations-run").click()


def test_annotations_upload_shows_the_table_and_a_bad_one_is_named_and_loses_nothing(
    page: Page, annotated: Path
) -> None:
    page.get_by_text("Score on your own annotated images").click()
    images = page.locator("#grounding-annotations-images")
    images.locator("input[type=file]").set_input_files(annotated / "images.zip")
    expect(images.locator("td.filename")).to_have_count(1)
    _upload_and_score(page, annotated / "coco_colour.json")
    firsts = page.locator("#grounding-annotations-table").get_by_text("all objects").filter(visible=True)
    expect(firsts).to_have_count(2)  # each method's first row: SPARC weights and the dense cosine map, by default
    expect(page.locator("#grounding-annotations-csv td.filename")).to_have_attribute(
        "aria-label", "grounding_annotations.csv"
    )

    _upload_and_score(page, annotated / "unknown_category.json")
    message = page.get_by_text("has category 99, which the file does not list").filter(visible=True).first
    expect(message).to_be_visible()
    page.wait_for_timeout(500)  # let the status overlay's fade settle before reading its style
    assert opaque_overlays(page, "grounding-annotations-table") == []
    expect(firsts).to_have_count(2)
