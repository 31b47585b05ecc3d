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

With `--dataset FOLDER` (`--out assets/dataset_zoom.png`) the Dataset tab on an embedding folder, coloured by
`--colour` and zoomed in until thumbnails are drawn over the images (with `--cluster K`: the whole map, cluster K
picked in Select a cluster); a FOLDER that does not exist yet is made of
DATASET_SCENES bundled-style scenes as webdataset tars whose .json gives each scene's objects and their mean size
(`bench.embed.write_scene_tars`), embedded by the offline model with its layout:

    python -m bench.screenshot --dataset /tmp/scenes-3k --colour "source: objects" --out assets/dataset_zoom.png
    python -m bench.screenshot --dataset /tmp/scenes-3k --colour cluster --cluster 7 --out assets/dataset_clusters.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import sync_playwright

from bench.embed import write_scene_tars
from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port
from vlviz.cli.main import main as vlviz_main
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


DATASET_SCENES = 3000
MAP_JS = "document.querySelector('#dataset-map canvas')?.vlvizMap"
ZOOM_SPAN = 0.3  # the zoomed view's side, in the map's [-1, 1] units


def _scene_folder(folder: Path) -> None:
    """DATASET_SCENES scenes with their numbers as webdataset tars, embedded with a layout into `folder`."""
    source = write_scene_tars(folder.with_name(folder.name + "-source"), DATASET_SCENES, fields=True)
    args = ["embed", "--model", OFFLINE_SPEC, "--data", source, "--out", str(folder), "--layout"]
    if vlviz_main(args) != 0:
        raise SystemExit(f"embedding the scenes into {folder} failed")


def _dataset(page: object, url: str, timeout_s: float, colour: str | None, cluster: int | None) -> dict[str, float]:
    """The Dataset tab coloured by `colour`, zoomed in on its densest part until thumbnails are drawn (or, with
    `cluster`, the whole map with that cluster picked in Select a cluster); the clip of the map and its legend."""
    page.goto(url)
    page.wait_for_function(f"() => !!{MAP_JS}?.points", timeout=timeout_s * 1000)  # every point drawn
    if colour:
        page.locator("#dataset-colour").get_by_text(colour, exact=True).click()
        page.wait_for_function(f"() => {MAP_JS}.plot.get('pointColor').length === 16", timeout=timeout_s * 1000)
    if cluster is not None:
        page.locator("#dataset-cluster input").click()
        page.get_by_role("option", name=re.compile(rf"^{cluster}: ")).click()
        page.wait_for_function(f"() => {MAP_JS}.plot.get('selectedPoints').length > 0", timeout=timeout_s * 1000)
        page.evaluate("() => window.scrollTo(0, 0)")  # boxes are measured in the view; the clip is of the page
        top = page.locator("#dataset-info").bounding_box()
        bottom = page.locator("#dataset-cluster").bounding_box()
        frame = page.locator("#dataset-map").bounding_box()
        return {
            "x": frame["x"],
            "y": top["y"],
            "width": frame["width"],
            "height": bottom["y"] + bottom["height"] - top["y"],
        }
    # the image point with the most image points within ZOOM_SPAN / 2 of it: the view is full of thumbnails
    centre = page.evaluate(f"""(span) => {{
        const m = {MAP_JS}, images = m.drawn / 2, {{ x, y }} = m.points;
        let best = 0, most = -1;
        for (let i = 0; i < images; i += Math.max(1, Math.floor(images / 500))) {{
            let near = 0;
            for (let j = 0; j < images; j += 1) near += Math.abs(x[j] - x[i]) < span / 2 && Math.abs(y[j] - y[i]) < span / 2;
            if (near > most) {{ most = near; best = i; }}
        }}
        return [x[best], y[best]];
    }}""", ZOOM_SPAN)  # fmt: skip
    page.evaluate(
        f"([x, y, s]) => {MAP_JS}.plot.zoomToArea({{x: x - s / 2, y: y - s / 2, width: s, height: s}})",
        [*centre, ZOOM_SPAN],
    )
    page.wait_for_function(f"() => {MAP_JS}.thumbnails.length >= 10", timeout=timeout_s * 1000)
    page.wait_for_timeout(1000)  # the thumbnails' images decoded
    top = page.locator("#dataset-info").bounding_box()
    frame = page.locator("#dataset-map").bounding_box()
    return {"x": frame["x"], "y": top["y"], "width": frame["width"], "height": frame["y"] + frame["height"] - top["y"]}


def screenshot(
    out: Path, width: int, height: int, timeout_s: float, talk: bool = False, compare: bool = False,
    model: str = OFFLINE_SPEC, map_label: str | None = None, pair: int = 1, word: int = 3,
    dataset: Path | None = None, colour: str | None = None, cluster: int | None = None,
) -> None:  # fmt: skip
    """Launch the app, wait for the page-load heatmaps (or the talk's step 4, or a dataset's map), save a clip."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Chromium is not installed: `apt-get install -y chromium`.")
    if dataset is not None and not dataset.exists():
        _scene_folder(dataset)
    demo = build_app(OFFLINE_SPEC, **({"initial_sample": None, "datasets": [dataset]} if dataset else {}))
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
            elif dataset is not None:
                clip = _dataset(page, f"http://127.0.0.1:{port}/", timeout_s, colour, cluster)
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
    parser.add_argument("--dataset", type=Path, help="the Dataset tab on this embedding folder (made when missing)")
    parser.add_argument("--colour", help="with --dataset: the colour column, e.g. 'source: objects'")
    parser.add_argument("--cluster", type=int, help="with --dataset: pick this cluster (1-based), the whole map shown")
    args = parser.parse_args()
    screenshot(
        args.out, args.width, args.height, args.timeout, args.talk, args.compare, args.model, args.map_label,
        args.pair, args.word, args.dataset, args.colour, args.cluster,
    )  # fmt: skip


if __name__ == "__main__":
    main()
