"""Screenshot the app as it first opens: `python -m bench.screenshot --out assets/screenshot.png`.

Launches the app on the offline model on a free local port, opens it in headless Chromium (the
Debian `chromium` package), waits for the heatmaps of the bundled scenes analyzed on load, and
saves the top of the page: the model panel, the inputs and the image-text heatmap. With `--talk`
(`--out assets/talk.png`) it shows the talk page's grounding step with its speaker note instead; with
`--compare` (`--out assets/grounding_compare.png`) the Grounding tab's chosen word drawn by the offline
model beside its untrained twin ("Compare with").
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port
from vlviz.models import OFFLINE_SPEC
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


def _compare(page: object, url: str, timeout_s: float) -> dict[str, float]:
    """The Grounding tab of pair 1 with the untrained model beside; returns the clip around both maps."""
    page.goto(url + "?tab=grounding&pair=1&word=3")
    page.wait_for_function(TALK_STEP_JS, arg="grounding-overlay", timeout=timeout_s * 1000)
    page.locator("#grounding-compare-with input").click()
    page.get_by_role("option", name="the untrained model (same architecture)").click()
    page.wait_for_function(TALK_STEP_JS, arg="grounding-compare", timeout=timeout_s * 1000)
    boxes = [page.locator(f"#{id}").bounding_box() for id in ("grounding-overlay", "grounding-compare")]
    scroll_x, scroll_y = page.evaluate("[window.scrollX, window.scrollY]")  # boxes are in viewport coordinates
    left, top = min(b["x"] for b in boxes) + scroll_x, min(b["y"] for b in boxes) + scroll_y
    right = max(b["x"] + b["width"] for b in boxes) + scroll_x
    bottom = max(b["y"] + b["height"] for b in boxes) + scroll_y
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def screenshot(out: Path, width: int, height: int, timeout_s: float, talk: bool = False, compare: bool = False) -> None:
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
                clip = _compare(page, f"http://127.0.0.1:{port}/", timeout_s)
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
    args = parser.parse_args()
    screenshot(args.out, args.width, args.height, args.timeout, args.talk, args.compare)


if __name__ == "__main__":
    main()
