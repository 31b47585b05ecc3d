"""The Keywords tab in a real Chromium: keywords highlighted in the caption, concepts marked, every pair listed."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.ui.test_keywords_api import simla_checkpoint
from vlviz.data.samples import sample_files
from vlviz.keywords import concept_vocabulary

pytestmark = pytest.mark.browser

CAPTIONS = sample_files("scenes")[1].splitlines()


def words(caption: str) -> list[str]:
    return caption.replace(",", "").split()


def shown_words(page: Page) -> list[str]:
    return [t.strip() for t in page.locator("#keywords-caption .token .text").all_inner_texts()]


def highlighted_words(page: Page) -> list[str]:
    return [t.strip() for t in page.locator("#keywords-caption .token.highlighted .text").all_inner_texts()]


@pytest.fixture
def page(page: Page) -> Page:
    """The app's page with the Keywords tab open and the first pair drawn."""
    page.get_by_role("tab", name="Keywords").click()
    expect(page.locator("#keywords-caption .token")).to_have_count(len(words(CAPTIONS[0])))
    return page


def test_the_caption_shows_its_keywords_and_the_image_its_concepts(page: Page) -> None:
    assert shown_words(page) == words(CAPTIONS[0])
    keywords = highlighted_words(page)
    assert 1 <= len(keywords) <= 5 and set(keywords) <= set(words(CAPTIONS[0]))
    expect(page.locator("#keywords-concepts .token.highlighted")).to_have_count(10)
    expect(page.locator("#keywords-notice")).to_contain_text("zero-shot")
    first_row = page.locator("#keywords-table").get_by_role("row").filter(has_text="scene_00.png")
    expect(first_row.get_by_role("gridcell", name=", ".join(keywords), exact=True)).to_be_visible()
    expect(page.locator("#keywords-image img")).to_be_visible()


def test_the_defaults_suit_the_offline_model(page: Page) -> None:
    """Issue 14: no 'forest' or 'galaxies' for a scenes model, no 'the' or 'at' among the keywords."""
    expect(page.locator("#keywords-vocabulary").get_by_label("the captions' words only")).to_be_checked()
    expect(page.locator("#keywords-content input")).to_be_checked()
    assert not {"a", "the", "at", "of", "on", "in"} & set(highlighted_words(page))
    every_word = {w for caption in CAPTIONS for w in words(caption)}
    concepts = page.locator("#keywords-concepts .token.highlighted .text").all_inner_texts()
    assert concepts and all(text.rsplit(" ", 1)[0] in every_word for text in concepts)


def test_another_pair_and_the_captions_vocabulary(page: Page) -> None:
    page.locator("#keywords-pair").click()
    page.get_by_role("option", name="2. scene_01.png").click()
    expect(page.locator("#keywords-caption .token")).to_have_count(len(words(CAPTIONS[1])))
    assert shown_words(page) == words(CAPTIONS[1])

    page.locator("#keywords-vocabulary").get_by_label("the captions' words only").check()
    vocabulary = concept_vocabulary([words(caption) for caption in CAPTIONS], defaults=())
    expect(page.locator("#keywords-notice")).to_contain_text(f"for each of {len(vocabulary)} concepts")
    every_word = {w for caption in CAPTIONS for w in words(caption)}
    concepts = page.locator("#keywords-concepts .token.highlighted .text").all_inner_texts()
    assert concepts and all(text.rsplit(" ", 1)[0] in every_word for text in concepts)


def test_the_grounding_tab_says_why_there_is_no_xmm_map(page: Page) -> None:
    page.get_by_role("tab", name="Grounding").click()
    expect(page.locator("#grounding-xmm-notice")).to_contain_text("has no trained XMM head")
    expect(page.locator("#grounding-xmm")).to_be_hidden()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simla_checkpoint(tmp_path_factory.mktemp("simla"))


def test_a_trained_xmm_head_draws_its_map_beside_sparcs(page: Page, checkpoint: Path) -> None:
    page.get_by_role("tab", name="Grounding").click()
    expect(page.locator("#grounding-xmm-notice")).to_contain_text("has no trained XMM head")
    model = page.locator("#model-spec input")
    model.fill(str(checkpoint))
    model.press("Enter")
    page.locator("#grounding-run").click()  # the model box alone changes nothing: the maps are the analysed model's
    expect(page.locator("#grounding-xmm-notice")).to_contain_text("vlviz-scenes has no trained XMM head")
    page.locator("#analyze").click()  # analysed with the checkpoint, the tab in view redraws with its XMM head
    expect(page.locator("#grounding-xmm-notice")).to_contain_text("when it is masked")
    expect(page.locator("#grounding-xmm .js-plotly-plot")).to_be_visible()
    title = page.evaluate("() => document.querySelector('#grounding-xmm .js-plotly-plot').layout.title.text")
    assert title == f"'{words(CAPTIONS[0])[2]}' masked: XMM cross-attention"  # the first content word (not a size)
    expect(page.locator("#grounding-overlay .js-plotly-plot")).to_be_visible()  # SPARC's weights beside it
