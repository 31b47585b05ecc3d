"""The talk page in Chromium: walked by keyboard with no network, each step's figure checked; variants,
notes, the snapshot, and a session's own pairs handed over."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.browser import N_SAMPLE_PAIRS, TIMEOUT_MS, wait_for_heatmap
from vlviz.ui.talk_page import STEP_KEYS

# What each step draws first: the first trace's type and the start of the figure's title.
FIRST_FIGURES = {
    "affinity": ("heatmap", "Image-text cosine"),
    "gap": ("scatter", "PCA"),
    "saco": ("scatter", ""),
    "grounding": ("image", "vlviz-scenes"),
    "training": (None, "Press t to train live"),
    "before-after": ("scatter", "Each pair from untrained"),
}

_FIGURE_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    if (!el || !el.layout || el.offsetParent === null) return null;
    const trace = el._fullData && el._fullData[0];
    return {type: trace ? trace.type : null, title: (el.layout.title && el.layout.title.text) || ""};
}"""


def _figure(page: object, key: str) -> dict | None:
    return page.evaluate(_FIGURE_JS, f"talk-{key}-plot")


def _wait_for_step(page: object, key: str) -> dict:
    page.wait_for_function(f"({_FIGURE_JS})('talk-{key}-plot') !== null", timeout=TIMEOUT_MS)
    return _figure(page, key)


# The drawn width of a step's figure (its SVG) and its container's, in px.
_WIDTHS_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    return [el.querySelector('.main-svg').getBoundingClientRect().width, el.parentElement.clientWidth];
}"""
FIT_MS = 1_000  # a figure refits within a frame or two of its step being shown; plotly's default width is 700 px


def _assert_fills(page: object, key: str) -> None:
    """The step's figure spans its container (within a few px), not plotly's default width."""
    fills = f"(([svg, box]) => box > 0 && Math.abs(svg - box) <= 3)(({_WIDTHS_JS})('talk-{key}-plot'))"
    try:
        page.wait_for_function(fills, timeout=FIT_MS)
    except PlaywrightTimeout:
        pytest.fail(f"step {key}: figure {page.evaluate(_WIDTHS_JS, f'talk-{key}-plot')} px (drawn, container)")


@pytest.fixture
def talk_page(browser: object, app_url: str, tmp_path: Path):
    """The talk page in a browser context that may reach the app and nothing else."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []

    def only_the_app(route: object) -> None:
        if route.request.url.startswith(app_url.rstrip("/")) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_app)
    page = context.new_page()
    yield page, outside
    context.close()


def test_the_talk_walks_by_keyboard_through_every_step(talk_page: tuple, app_url: str, tmp_path: Path) -> None:
    page, outside = talk_page
    page.goto(app_url + "talk")
    for index, key in enumerate(STEP_KEYS):
        figure = _wait_for_step(page, key)
        kind, title = FIRST_FIGURES[key]
        assert figure["title"].startswith(title) or title in figure["title"], (key, figure)
        if kind is not None:
            assert figure["type"] == kind, (key, figure)
        _assert_fills(page, key)
        if index < len(STEP_KEYS) - 1:
            page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    _wait_for_step(page, "training")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    _wait_for_step(page, "gap")
    page.keyboard.press("g")  # the gap closed
    page.wait_for_function(f"({_FIGURE_JS})('talk-gap-plot').title.includes('gap closed')", timeout=TIMEOUT_MS)
    page.keyboard.press("n")
    assert page.locator("#talk-gap-note").is_visible()
    page.click("#talk-snapshot")
    link = page.locator("#talk-snapshot-file a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    html = Path(download.value.path()).read_text(encoding="utf-8")
    assert html.count("<section") == len(STEP_KEYS) and "Plotly" in html
    assert not outside, outside  # nothing was fetched from outside the app


# Every step's figure drawn (the preload visits each step), and the page back at step 1.
_ALL_DRAWN_JS = f"""() => {STEP_KEYS}.every((key) => {{
    const el = document.querySelector(`#talk-${{key}}-plot .js-plotly-plot`);
    return !!el && !!el._fullLayout;
}}) && ({_FIGURE_JS})('talk-{STEP_KEYS[0]}-plot') !== null"""


@pytest.mark.parametrize("viewport", [{"width": 1024, "height": 768}, {"width": 1920, "height": 1080}])
def test_step_four_fills_the_window_it_is_first_shown_in(talk_page: tuple, app_url: str, viewport: dict) -> None:
    """Plotly measures a figure's container only when drawn and on a window resize, and a hidden step's container
    measures nothing: the step-4 figure, drawn in the background, must still fit the window it is shown in."""
    page, _ = talk_page
    page.goto(app_url + "talk")
    page.wait_for_function(_ALL_DRAWN_JS, timeout=TIMEOUT_MS)
    page.set_viewport_size(viewport)  # the presenter moves the window to the projector...
    _assert_fills(page, STEP_KEYS[0])  # ...and plotly has refit the shown step (hidden ones measure nothing)
    for _ in range(STEP_KEYS.index("grounding")):
        page.keyboard.press("ArrowRight")
    _wait_for_step(page, "grounding")
    _assert_fills(page, "grounding")


def test_a_session_tells_its_own_pairs(talk_page: tuple, app_url: str) -> None:
    page, _ = talk_page
    page.goto(app_url)
    wait_for_heatmap(page, "image-text-plot", rows=N_SAMPLE_PAIRS)
    page.click("#open-talk")
    link = page.locator("#talk-link a")
    link.wait_for()
    href = link.get_attribute("href")
    assert href.startswith("talk?story=") and f"{N_SAMPLE_PAIRS} pairs" in link.inner_text()
    page.goto(app_url + href)
    _wait_for_step(page, "affinity")
    page.goto(app_url + "talk?story=not-a-token")  # unknown: the built-in story, said so
    _wait_for_step(page, "affinity")


def test_t_trains_live_and_step_six_then_shows_that_run(talk_page: tuple, app_url: str) -> None:
    page, _ = talk_page
    page.goto(app_url + "talk")
    _wait_for_step(page, "affinity")
    page.keyboard.press("t")  # goes to step 5 and starts the run
    status = page.locator("#talk-train-status")
    expect(status).to_contain_text("step 5 /", timeout=3 * TIMEOUT_MS)
    assert _figure(page, "training")["title"].startswith("Training live")
    page.click("#talk-stop")
    expect(status).to_contain_text("step 6 now shows", timeout=3 * TIMEOUT_MS)
    page.keyboard.press("ArrowRight")
    figure = _wait_for_step(page, "before-after")
    assert figure["title"].startswith("Each pair from before the run")
