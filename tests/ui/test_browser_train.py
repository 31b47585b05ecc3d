"""The Train tab in a real Chromium: press Train, watch the curves draw, and stop a run."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser import TIMEOUT_MS

pytestmark = pytest.mark.browser

# Per trace of the plotly figure inside a gr.Plot: its name and how many points it has.
_LINES_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    return el && el._fullData ? el._fullData.map((t) => [t.name, (t.x || []).length]) : [];
}"""


def lines(page: Page, elem_id: str, points: dict[str, int] | None = None) -> dict[str, int]:
    """The traces of `#elem_id` once it draws any, and each named in `points` with at least that many points.

    Plotly redraws after the status text has changed, so reading the figure at once can see the last one.
    """
    page.wait_for_function(
        f"""([id, points]) => {{
            const drawn = Object.fromEntries(({_LINES_JS})(id));
            return Object.keys(drawn).length > 0 && Object.entries(points).every(([n, k]) => (drawn[n] ?? -1) >= k);
        }}""",
        arg=[elem_id, points or {}],
        timeout=TIMEOUT_MS,
    )
    return dict(page.evaluate(_LINES_JS, elem_id))


def set_slider(page: Page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_train_draws_curves_while_it_runs_and_offers_the_checkpoint(page: Page) -> None:
    page.get_by_role("tab", name="Train").click()
    set_slider(page, "train-steps", 6)
    set_slider(page, "train-eval-every", 3)
    page.locator("#train").click()
    expect(page.locator("#train-status")).to_contain_text("finished after 6 steps", timeout=3 * TIMEOUT_MS)
    losses = lines(page, "loss-plot", {"clip/contrastive_loss": 6})
    assert losses.get("clip/contrastive_loss", 0) == 6 and losses.get("saco/saco_loss", 0) == 6  # the default demo
    retrieval = lines(page, "metric-plot", {"image_to_caption_r1": 3})
    assert retrieval["image_to_caption_r1"] == 3  # steps 0 (the start model), 3 and 6
    assert lines(page, "alignment-plot", {"mean_abs_inconsistency": 3})["mean_abs_inconsistency"] == 3
    expect(page.locator('#train-checkpoint [aria-label="checkpoint.safetensors"]')).to_be_visible()  # a download
    expect(page.locator("#train-status")).to_contain_text("load it as session run 1")  # a name, not a server path
    for probe in ("probe-grounding-plot", "probe-inconsistency-plot", "probe-embedding-plot"):
        assert lines(page, probe), f"{probe} drew nothing"
    assert "images" in lines(page, "probe-embedding-plot")

    # The before/after lens of that run on the scenes analysed on load, then WiSE-FT halfway.
    page.get_by_text("Before/after lens and WiSE-FT").click()
    page.locator("#lens-button").click()
    expect(page.locator("#lens-summary")).to_contain_text("start → α=1", timeout=3 * TIMEOUT_MS)
    lines(page, "lens-movement", {"images, start": 0, "images, α=1": 0, "captions moved": 0})
    assert [n for n, k in lines(page, "lens-wise-ft").items() if k == 5]  # R@1 and retention at 5 alphas
    expect(page.locator("#lens-moved")).to_contain_text("→")
    set_slider(page, "lens-alpha", 0.5)
    page.locator("#lens-alpha input[type=range]").dispatch_event("pointerup")  # the slider's release
    expect(page.locator("#lens-summary")).to_contain_text("start → α=0.5", timeout=3 * TIMEOUT_MS)


def test_stop_ends_a_long_run_and_keeps_what_it_drew(page: Page) -> None:
    page.get_by_role("tab", name="Train").click()
    set_slider(page, "train-steps", 2000)
    page.locator("#train").click()
    expect(page.locator("#train-status")).to_contain_text("step 5 /", timeout=3 * TIMEOUT_MS)
    page.locator("#stop").click()
    expect(page.locator("#train-status")).to_contain_text("stopped after", timeout=3 * TIMEOUT_MS)
    assert lines(page, "loss-plot").get("total_loss", 0) >= 5
