"""Screenshot the app as it first opens: `python -m bench.screenshot --out assets/screenshot.png`.

Launches the app on the offline model on a free local port, opens it in headless Chromium (the
Debian `chromium` package), waits for the heatmaps of the bundled scenes analyzed on load, and
saves the top of the page: the model panel, the inputs and the image-text heatmap. With `--talk`
(`--out assets/talk.png`) it shows the talk page's grounding step with its speaker note instead; with
`--compare` (`--out assets/grounding_compare.png`) the Grounding tab's chosen word drawn by the offline
model beside its untrained twin ("Compare with"); `--model SPEC` and `--map LABEL` choose another model
and map there, e.g. the occlusion map of a word-region run (docs/results/peaks.md):

    python -m bench.screenshot --compare --model runs/peaks/word_region --map "occlusion map" \
        --pair 2 --word 9 --out assets/grounding_occlusion.png      # 'blue' of the second bundled scene
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui import build_app, launch_kwargs

VIEWPORT = {"width": 1400, "height": 1000}
PLOTS = ["image-text-plot", "image-image-plot", "text-text-plot"]
# True once every plot shows a heatmap and no status overlay (spinner, error) is left over any of them.
PLOTS_READY_JS = """(ids) => ids.every((id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    const trace = el && el._fullData && el._fullData[0];
    const busy = Array.from(document.querySelectorAll(`#${id} [data-testid="status-tracker"]`))
        .some((tracker) => getComputedStyle(tracker).opacity !== "0");
    return !!trace && trace.type === "heatmap" && !busy;
})"""


TALK_STEP_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    return !!el && !!el._fullData && el.offsetParent !== null;
}"""


def _talk(page: object, url: str, timeout_s: float) -> None:
    """The talk page at step 4 (grounding), speaker note shown."""
    page.goto(url + "talk")
    page.wait_for_function(TALK_STEP_JS, arg="talk-affinity-plot", timeout=timeout_s * 1000)
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(TALK_STEP_JS, arg="talk-grounding-plot", timeout=timeout_s * 1000)
    page.keyboard.press("n")


def _compare(
    page: object, url: str, timeout_s: float, model: str, map_label: str | None, pair: int, word: int
) -> dict[str, float]:
    """The Grounding tab of `pair` and `word` with the untrained model beside; returns the clip around both maps."""
    page.goto(url + "?" + urlencode({"model": model, "tab": "grounding", "pair": pair, "word": word}))
    page.wait_for_function(TALK_STEP_JS, arg="grounding-overlay", timeout=timeout_s * 1000)
    page.locator("#grounding-compare-with input").click()
    page.get_by_role("option", name="the untrained model (same architecture)").click()
    page.wait_for_function(TALK_STEP_JS, arg="grounding-compare", timeout=timeout_s * 1000)
    if map_label:
        page.locator("#grounding-kind").get_by_label(map_label, exact=True).check()
        for plot in ("grounding-overlay", "grounding-compare"):
            page.wait_for_function(
                "([id, label]) => (document.querySelector(`#${id} .js-plotly-plot`)?.layout.title?.text || '')"
                ".includes(label)",
                arg=[plot, map_label],
                timeout=timeout_s * 1000,
            )
    boxes = [page.locator(f"#{id}").bounding_box() for id in ("grounding-overlay", "grounding-compare")]
    scroll_x, scroll_y = page.evaluate("[window.scrollX, window.scrollY]")  # boxes are in viewport coordinates
    left, top = min(b["x"] for b in boxes) + scroll_x, min(b["y"] for b in boxes) + scroll_y
    right = max(b["x"] + b["width"] for b in boxes) + scroll_x
    bottom = max(b["y"] + b["height"] for b in boxes) + scroll_y
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def screenshot(
    out: Path, width: int, height: int, timeout_s: float, talk: bool = False, compare: bool = False,
    model: str = OFFLINE_SPEC, map_label: str | None = None, pair: int = 1, word: int = 3,
) -> None:  # fmt: skip
    """Launch the app, wait for the page-load heatmaps (or the talk's step 4), save a clip of the page's top."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Chromium is not installed: `apt-get install -y chromium`.")
    demo = build_app(OFFLINE_SPEC)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            start = time.perf_counter()
            clip = {"x": 0, "y": 0, "width": width, "height": height}
            if talk:
                _talk(page, f"http://127.0.0.1:{port}/", timeout_s)
            elif compare:
                clip = _compare(page, f"http://127.0.0.1:{port}/", timeout_s, model, map_label, pair, word)
            else:
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function(PLOTS_READY_JS, arg=PLOTS, timeout=timeout_s * 1000)
            page.wait_for_timeout(500)  # let overlays finish fading and plotly finish its layout pass
            print(f"figures drawn {time.perf_counter() - start:.1f} s after opening the page")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True, clip=clip)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {out} ({clip['width']:.0f}x{clip['height']:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("assets/screenshot.png"), help="PNG to write")
    parser.add_argument("--width", type=int, default=VIEWPORT["width"], help="clip width in pixels")
    parser.add_argument("--height", type=int, default=1100, help="clip height in pixels, from the page's top")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the heatmaps")
    parser.add_argument("--talk", action="store_true", help="the talk page's grounding step instead")
    parser.add_argument("--compare", action="store_true", help="the Grounding tab beside the untrained model instead")
    parser.add_argument("--model", default=OFFLINE_SPEC, help="with --compare: the model to show")
    parser.add_argument("--map", dest="map_label", help="with --compare: the map's label in the tab's switch")
    parser.add_argument("--pair", type=int, default=1, help="with --compare: the bundled pair, 1-based")
    parser.add_argument("--word", type=int, default=3, help="with --compare: the caption's word, 0-based")
    args = parser.parse_args()
    screenshot(
        args.out, args.width, args.height, args.timeout, args.talk, args.compare, args.model, args.map_label,
        args.pair, args.word,
    )  # fmt: skip


if __name__ == "__main__":
    main()
