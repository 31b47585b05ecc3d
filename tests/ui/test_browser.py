"""The real app in a real Chromium, driven through Playwright: what a user sees after each action.

Needs the Debian `chromium` package (the `browser` fixture in conftest.py). Each test
opens a fresh page, which analyzes the bundled scenes on load; the browser is shared per module.
Plot data is read from the DOM: Gradio renders each gr.Plot as a plotly `.js-plotly-plot`
element, whose `_fullData` holds the traces with their `z` matrices decoded (the figure arrives
base64-encoded, so `data[0].z` is a `{dtype, bdata}` object, not an array).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser import N_SAMPLE_PAIRS, SCENES, heatmap, heatmap_z, wait_for_heatmap

pytestmark = pytest.mark.browser


def opaque_overlays(page: Page, elem_id: str) -> list[str]:
    """Texts of Gradio status overlays painted opaquely over `#elem_id` (its 'Error' or loading panel).

    Gradio draws one status tracker per component; when shown without the `hide` or `translucent`
    class it has the block's background colour and hides the component underneath.
    """
    return page.evaluate(
        """(id) => Array.from(document.querySelectorAll(`#${id} [data-testid="status-tracker"]`))
            .filter((el) => {
                const style = getComputedStyle(el);
                return style.display !== "none" && style.visibility !== "hidden" && style.opacity !== "0"
                    && style.backgroundColor !== "rgba(0, 0, 0, 0)" && style.backgroundColor !== "transparent";
            })
            .map((el) => el.innerText.trim())""",
        elem_id,
    )


def upload(page: Page, *names: str) -> None:
    """Replace the files in `#uploads` by these sample scenes, and wait until all are listed."""
    uploads = page.locator("#uploads")
    clear = uploads.get_by_role("button", name="Clear", exact=True)
    if clear.count():
        clear.click()
    expect(uploads.locator("tr.file")).to_have_count(0)
    uploads.locator("input[type=file]").set_input_files([SCENES / name for name in names])
    expect(uploads.locator("tr.file")).to_have_count(len(names))
    listed = uploads.locator("td.filename").evaluate_all("(cells) => cells.map((c) => c.getAttribute('aria-label'))")
    assert listed == list(names)


def analyze_two_pairs(page: Page) -> list[list[float]]:
    """Upload two scenes with two captions, press Analyze, and return the 2x2 image-text matrix."""
    upload(page, "scene_00.png", "scene_01.png")
    page.locator("#captions textarea").fill("a red circle\na blue square")
    page.locator("#analyze").click()
    wait_for_heatmap(page, "image-text-plot", rows=2)
    z = heatmap_z(page, "image-text-plot")
    assert z is not None and [len(row) for row in z] == [2, 2]
    return z


def enter_mismatched_captions(page: Page) -> None:
    """With two images uploaded, give three captions and press Analyze; wait for the error."""
    page.locator("#captions textarea").fill("a red circle\na blue square\na green triangle")
    page.locator("#analyze").click()
    message = page.get_by_text("2 images but 3 captions").filter(visible=True).first
    expect(message).to_be_visible()


# ------------------------------------------------------------------------------------------- tests


def test_page_load_draws_the_sample_heatmap_and_names_the_offline_model(page: Page) -> None:
    trace = heatmap(page, "image-text-plot")
    assert trace is not None and trace["type"] == "heatmap"
    assert [len(row) for row in trace["z"]] == [N_SAMPLE_PAIRS] * N_SAMPLE_PAIRS
    expect(page.locator("#image-text-plot .js-plotly-plot")).to_be_visible()
    assert opaque_overlays(page, "image-text-plot") == []
    status = page.locator("#model-status")
    expect(status).to_contain_text("vlviz-scenes")
    text = status.inner_text().lower()
    assert "shapes" in text and "colo" in text and "not photographs" in text, text


def test_two_uploaded_pairs_redraw_a_two_by_two_heatmap(page: Page) -> None:
    analyze_two_pairs(page)
    wait_for_heatmap(page, "image-image-plot", rows=2)
    wait_for_heatmap(page, "text-text-plot", rows=2)
    expect(page.locator("#image-text-plot .js-plotly-plot")).to_be_visible()


def test_mismatched_captions_show_the_error_and_keep_the_previous_heatmap(page: Page) -> None:
    before = analyze_two_pairs(page)
    enter_mismatched_captions(page)
    assert heatmap(page, "image-text-plot")["type"] == "heatmap"
    assert heatmap_z(page, "image-text-plot") == before
    expect(page.locator("#image-text-plot .js-plotly-plot")).to_be_visible()


def test_mismatched_captions_leave_the_previous_heatmap_uncovered(page: Page) -> None:
    """A bad input must not hide what is on screen: no opaque 'Error' panel over the heatmap."""
    analyze_two_pairs(page)
    enter_mismatched_captions(page)
    page.wait_for_timeout(500)  # let the status overlay's 0.1 s fade settle before reading its style
    assert opaque_overlays(page, "image-text-plot") == [], (
        "after the input error, Gradio's status tracker paints an opaque panel over the previous heatmap"
    )


def test_match_probability_redraws_the_image_text_plot_in_the_unit_interval(page: Page) -> None:
    cosine = heatmap_z(page, "image-text-plot")
    page.locator("#value-kind").get_by_label("match probability").check()
    wait_for_heatmap(page, "image-text-plot", rows=N_SAMPLE_PAIRS, title_starts="P(caption")
    z = heatmap_z(page, "image-text-plot")
    assert z != cosine
    values = [value for row in z for value in row]
    assert len(values) == N_SAMPLE_PAIRS**2
    assert all(0.0 <= value <= 1.0 for value in values), (min(values), max(values))
