"""View links in Chromium: a link opens the model, pairs, tab, pair and word it names; uploads travel by token;
bad parameters are ignored with a notice."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser import N_SAMPLE_PAIRS, TIMEOUT_MS, wait_for_heatmap, wait_for_title
from vlviz.data.samples import sample_files

pytestmark = pytest.mark.browser

CAPTIONS = sample_files("scenes")[1].splitlines()


def test_a_link_opens_grounding_on_its_pair_and_word(browser: object, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    word = CAPTIONS[2].replace(",", "").split()[3]
    page.goto(app_url + "?model=vlviz-scenes&sample=scenes&tab=grounding&pair=3&word=3")
    wait_for_title(page, "grounding-overlay", f"'{word}'")
    expect(page.get_by_role("tab", name="Grounding")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#grounding-pair input")).to_have_value("3. scene_02.png")
    page.close()


def test_the_link_button_names_the_view_and_carries_uploads_by_token(page: Page, app_url: str) -> None:
    page.locator("#view-link-button").click()
    link = page.locator("#view-link a")
    expect(link).to_have_attribute("href", "?model=vlviz-scenes&sample=scenes&tab=affinity", timeout=TIMEOUT_MS)

    edited = ["my own caption", *CAPTIONS[1:]]  # no longer the sample set: the link keeps the pairs
    page.locator("#captions textarea").fill("\n".join(edited))
    page.locator("#analyze").click()
    page.wait_for_function(
        "() => document.querySelector('#image-text-plot .js-plotly-plot')?.layout.xaxis.ticktext[0].includes('my own')",
        timeout=TIMEOUT_MS,
    )
    page.locator("#view-link-button").click()
    page.wait_for_function(
        "() => (document.querySelector('#view-link a')?.getAttribute('href') || '').includes('pairs=')"
    )
    href = link.get_attribute("href")
    assert "sample=" not in href and "/" not in href.split("pairs=")[1]

    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    other.goto(app_url + href)
    wait_for_heatmap(other, "image-text-plot", rows=N_SAMPLE_PAIRS)
    labels = other.evaluate("() => document.querySelector('#image-text-plot .js-plotly-plot').layout.xaxis.ticktext")
    assert labels[0].startswith("1. my own caption")
    expect(other.locator("#model-status")).to_contain_text("a link handed over")
    other.close()


def test_bad_link_parameters_are_ignored_with_a_notice(browser: object, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url + "?tab=../evil&pair=abc&word=-1&pairs=not-a-token")
    wait_for_heatmap(page, "image-text-plot", rows=N_SAMPLE_PAIRS)  # the page opens as usual
    expect(page.get_by_text("have expired").first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_role("tab", name="Affinity")).to_have_attribute("aria-selected", "true")

    # A local server loads local files (docs/hosting.md; a public one refuses paths): this one is no model,
    # and the page says so by its name alone.
    page.goto(app_url + "?model=/etc/passwd")
    message = page.get_by_text("expected weights ending in").first
    expect(message).to_be_visible(timeout=TIMEOUT_MS)
    assert "/etc/" not in message.inner_text()
    page.close()
