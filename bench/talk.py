"""How fast the talk page moves between steps in Chromium: `python -m bench.talk`.

The issue's target is under 300 ms from the key press to the next step's figure on screen. The page is
measured in the browser itself (a keydown dispatched, then animation frames until the step's plot is
visible and drawn), so Playwright's own latency is not counted. Baseline, in the same run: a bare
Gradio page of six tabs with one plotly heatmap each, switched by clicking its tab buttons. Prints JSON:
per-step times, the slowest, and its ratio to the baseline's slowest.
"""

from __future__ import annotations

import argparse
import json
import shutil

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from playwright.sync_api import sync_playwright

from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui import build_app, launch_kwargs
from vlviz.ui.talk_page import STEP_KEYS

# Dispatch `press()` and wait, frame by frame, until the plot `#id` is visible with its SVG drawn: ms taken.
SWITCH_JS = """async ([id, how]) => {
  const shown = () => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    return !!el && el.offsetParent !== null && !!el.querySelector('.main-svg');
  };
  const start = performance.now();
  if (how === 'key') document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight', bubbles: true}));
  else document.getElementById(how).click();
  while (!shown()) await new Promise(r => requestAnimationFrame(r));
  return performance.now() - start;
}"""
READY_JS = """(id) => { const el = document.querySelector(`#${id} .js-plotly-plot`);
  return !!el && el.offsetParent !== null && !!el.querySelector('.main-svg'); }"""


def bare_tabs() -> gr.Blocks:
    """Six tabs with one 24 x 24 heatmap each: what switching tabs costs in Gradio itself."""
    rng = np.random.default_rng(0)
    with gr.Blocks() as demo, gr.Tabs():
        for i in range(6):
            with gr.Tab(f"step {i + 1}", id=i, elem_id=f"bare-{i}"):
                gr.Plot(go.Figure(go.Heatmap(z=rng.random((24, 24)))), elem_id=f"bare-{i}-plot")
    return demo


def measure(page: object, url: str, talk: bool, timeout_ms: float) -> list[float]:
    """Switch through every step once after the page has drawn (and, on the talk page, preloaded) them."""
    page.goto(url)
    first = "talk-affinity-plot" if talk else "bare-0-plot"
    page.wait_for_function(READY_JS, arg=first, timeout=timeout_ms)
    page.wait_for_timeout(3000)  # the talk page visits every step once after loading (its preload)
    if talk:
        return [page.evaluate(SWITCH_JS, [f"talk-{key}-plot", "key"]) for key in STEP_KEYS[1:]]
    return [page.evaluate(SWITCH_JS, [f"bare-{i}-plot", f"bare-{i}-button"]) for i in range(1, 6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a page's first figure")
    args = parser.parse_args()
    results = {}
    for name, demo, path in (("bare_tabs", bare_tabs(), ""), ("talk", build_app(OFFLINE_SPEC), "talk")):
        port = free_port()
        kwargs = launch_kwargs() if name == "talk" else {}
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **kwargs)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                times = measure(page, f"http://127.0.0.1:{port}/{path}", name == "talk", args.timeout * 1000)
                browser.close()
        finally:
            demo.close()
        results[name] = {"switch_ms": [round(t, 1) for t in times], "slowest_ms": round(max(times), 1)}
    results["talk_slowest_over_bare_slowest"] = round(
        results["talk"]["slowest_ms"] / results["bare_tabs"]["slowest_ms"], 2
    )
    results["target_ms"] = 300
    print(json.dumps(results))


if __name__ == "__main__":
    main()
