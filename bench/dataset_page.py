"""The Dataset tab on a large folder in Chromium: from opening the page to every point drawn, and the app's memory.

`python -m bench.dataset_page FOLDER [FOLDER ...] [--repeats 3] [--screenshot assets/dataset_1m.png] [--docs]` serves
the app in this process with each FOLDER listed in turn (as `python -m vlviz explore FOLDER` does; the folder prepared beforehand, e.g. by
`bench.dataset` or `explore` itself), then in headless Chromium (the project's flags: WebGL on the CPU) times each
fresh page from navigation to the first drawn map (a preview of every k-th point, or all of them) and to the
map's last point drawn, by the page's own clock (the bundle's `shownAt` and `drawnAt`): the server opens the folder,
sends the points as raw float32 and the page draws them. Baseline, in the same process and browser: a bare
Gradio page whose one gr.HTML says it has loaded, the page cost no map can avoid. Also the resident memory of this
process (the app; Chromium runs in its own) with the folder open, against issue 24's targets (first draw <= 5 s,
<= 3 GB at a million pairs). The screenshot is of the last folder. Prints one JSON object (a record per folder),
written to bench/results/dataset_page.json
(`--docs`: its table in docs/results/dataset_page.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
from playwright.sync_api import sync_playwright

from bench.readme import write_results_block
from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port
from vlviz.embedding.dataset import open_dataset
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui import build_app, launch_kwargs

RESULTS = Path(__file__).resolve().parent / "results" / "dataset_page.json"
TARGETS = {"first_draw_s": 5.0, "app_rss_mb": 3072}
MAP = "document.querySelector('#dataset-map canvas')?.vlvizMap"
TIMEOUT_MS = 300_000
BARE_READY_JS = "() => !!document.querySelector('[data-loaded]')"
BARE_LOADED_AT = "Number(document.querySelector('[data-loaded]').dataset.loaded)"


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def _bare_page() -> gr.Blocks:
    with gr.Blocks() as demo:
        gr.HTML("", js_on_load="element.dataset.loaded = performance.now();", elem_id="bare")
    return demo


def _timed(browser: Any, url: str, ready_js: str, *times_js: str, screenshot: Path | None = None) -> list[float]:
    """Seconds from navigation to each of `times_js`'s moments (the page's own clock, ms from navigation), read
    once `ready_js` is true, in a fresh page. The page keeps its times itself: a poll from outside runs on the
    page's main thread, so it would wait out the drawing that follows a moment (the whole map after its preview)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(ready_js, timeout=TIMEOUT_MS, polling=50)
    seconds = [page.evaluate(f"() => {moment}") / 1000 for moment in times_js]
    if screenshot is not None:
        page.wait_for_timeout(500)
        page.screenshot(path=str(screenshot))
    context.close()
    return seconds


def run(folder: Path, repeats: int, screenshot: Path | None) -> dict[str, Any]:
    pairs = len(open_dataset(folder, prepare=False))
    rss_before = _rss_mb()
    app, bare = build_app(OFFLINE_SPEC, initial_sample=None, datasets=[folder]), _bare_page()
    ports = free_port(), free_port()
    app.launch(server_port=ports[0], prevent_thread_lock=True, quiet=True, **launch_kwargs())
    bare.launch(server_port=ports[1], prevent_thread_lock=True, quiet=True)
    drawn_js = f"() => ({MAP})?.drawn === {2 * pairs}"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            first, every, baseline = [], [], []
            for repeat in range(repeats):  # interleaved
                baseline += _timed(browser, f"http://127.0.0.1:{ports[1]}/", BARE_READY_JS, BARE_LOADED_AT)
                shot = screenshot if repeat == repeats - 1 else None
                shown, drawn = _timed(  # the first map (a preview, or all) and every point
                    browser,
                    f"http://127.0.0.1:{ports[0]}/",
                    drawn_js,
                    f"{MAP}.shownAt",
                    f"{MAP}.drawnAt",
                    screenshot=shot,
                )
                first.append(shown)
                every.append(drawn)
            browser.close()
    finally:
        app.close()
        bare.close()
    best, base = min(first), min(baseline)
    rss = _rss_mb()
    return {
        "pairs": pairs, "points": 2 * pairs, "repeats": repeats,
        "first_draw_s": round(best, 2), "first_draw_all_s": [round(s, 2) for s in first],
        "every_point_s": round(min(every), 2), "every_point_all_s": [round(s, 2) for s in every],
        "bare_page_s": round(base, 2), "ratio_vs_bare_page": round(best / base, 1),
        "app_rss_mb": round(rss), "rss_before_app_mb": round(rss_before),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "targets": TARGETS,
        "targets_met": {"first_draw_s": best <= TARGETS["first_draw_s"], "app_rss_mb": rss <= TARGETS["app_rss_mb"]},
    }  # fmt: skip


def docs_block(results: list[dict[str, Any]]) -> str:
    head = (
        "| pairs (points) | page to the first drawn map | to every point drawn | bare Gradio page "
        "| app RSS with the folder open |\n|---|---|---|---|---|"
    )
    return "\n".join([head, *map(_docs_row, results)])


def _docs_row(result: dict[str, Any]) -> str:
    met = result["targets_met"]
    return (
        f"| {result['pairs']:,} ({result['points']:,}) | **{result['first_draw_s']} s** (best of "
        f"{result['repeats']}: {', '.join(map(str, result['first_draw_all_s']))}; target 5 s: "
        f"{'met' if met['first_draw_s'] else 'not met'}) | {result['every_point_s']} s "
        f"| {result['bare_page_s']} s "
        f"({result['ratio_vs_bare_page']}x) | {result['app_rss_mb']:,} MB (target 3,072: "
        f"{'met' if met['app_rss_mb'] else 'not met'}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, default=None, help="a PNG of the last page, map drawn")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/dataset_page.md")
    args = parser.parse_args()
    results = [
        run(folder, args.repeats, args.screenshot if folder == args.folders[-1] else None) for folder in args.folders
    ]
    RESULTS.write_text(json.dumps({"folders": results}, indent=1))
    print(json.dumps({"folders": results}))
    if args.docs:
        write_results_block("dataset_page", docs_block(results))


if __name__ == "__main__":
    main()
