"""Analyze at real sizes, end to end, against the bare read + encode of the same pairs in this process.

`python -m bench.app [--sizes 24,300,1000] [--no-browser]` generates scene pairs, starts the app in a
fresh process, and measures:

- `first_embedding_map_s`: from the moment the app answers to the first embedding map in Chromium
  (the page analyses the 24 sample scenes on load; the tab draws on first view: PCA first while
  UMAP's numba code still compiles), against its baseline `bare_gradio_plot_s`: the same time for a
  bare Gradio page that draws one small Plotly figure on load (what any Gradio page costs here);
- `first_embedding_map_api_s`: from the moment a second fresh app answers, `/analyze` on the sample
  scenes and `/embedding_space` through gradio_client (the server's part, no page to render);
- per size N: in Chromium the time from choosing the files to every Affinity heatmap drawn (the
  target), and `/analyze` through gradio_client with the response size (the client uploads the files
  one request each and downloads the gallery's images, so its time is mostly the client's);
- the baseline: reading the same image files and encoding them with the same open_clip model in
  plain batches, in this process; the ratios divide the app's times by it.

Prints one JSON object. Targets (issue 11): analyze <= 5x the baseline at 1,000 pairs, response
<= 10 MB, first embedding map <= 5 s (through the API, and in Chromium beyond the bare page).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port
from vlviz.data.samples import sample_files
from vlviz.data.scenes import generate_scenes
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.viz.views import HEATMAP_PAGE

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256


def write_pairs(folder: Path, n: int, seed: int = 7) -> tuple[list[Path], list[str]]:
    """N fresh scenes as PNG files named bench_NNNNN.png, with their captions."""
    scenes = generate_scenes(n, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(scenes.pil_images()):
        files.append(folder / f"bench_{i:05d}.png")
        image.save(files[-1])
    with (folder / "captions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("file", "caption"), *((f.name, c) for f, c in zip(files, scenes.captions))])
    return files, list(scenes.captions)


@torch.inference_mode()
def bare_read_and_encode(files: list[Path], captions: list[str]) -> float:
    """Seconds to decode the files and encode images and captions with the plain open_clip model, in batches."""
    model = load_model(OFFLINE_SPEC, "cpu")
    start = time.perf_counter()
    images = [Image.open(path).convert("RGB") for path in files]
    for i in range(0, len(images), BATCH):
        pixels = torch.stack([model.preprocess(image) for image in images[i : i + BATCH]])
        model.model.encode_image(pixels.to(model.dtype), normalize=True)
        model.model.encode_text(model.tokenizer(captions[i : i + BATCH]), normalize=True)
    return time.perf_counter() - start


BARE_APP = """
import gradio as gr
import plotly.graph_objects as go
with gr.Blocks() as demo:
    plot = gr.Plot(elem_id="bare-plot")
    demo.load(lambda: go.Figure(go.Heatmap(z=[[0, 1], [1, 0]])), None, plot)
demo.launch()
"""


def start_app(port: int, data_dir: Path, program: str | None = None) -> tuple[subprocess.Popen, float]:
    """Launch app.py (or the Python `program`) in a fresh process; return it and the monotonic time at which
    it first answered."""
    env = os.environ | {"GRADIO_SERVER_PORT": str(port), "VLVIZ_DATA_DIR": str(data_dir), "VLVIZ_PUBLIC": "0"}
    command = [sys.executable, "app.py"] if program is None else [sys.executable, "-c", program]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return process, time.monotonic()
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the app did not answer within 300 s")


@contextlib.contextmanager
def chromium_page(url: str) -> Iterator[Page]:
    """A page of headless Chromium at `url` (the Debian build; Playwright's own download fails offline)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(600_000)
        page.goto(url)
        yield page
        browser.close()


def first_embedding_map(url: str, ready: float) -> float:
    """Seconds from the app's first answer to an embedding map in Chromium: open the page (it analyses the
    sample scenes on load) and show the Embedding-space tab, which draws itself on first view."""
    with chromium_page(url) as page:
        page.wait_for_selector("#image-text-plot .js-plotly-plot")
        page.get_by_role("tab", name="Embedding space").click()
        page.wait_for_function(
            """() => { const el = document.querySelector('#embedding-plot .js-plotly-plot');
                       return !!el && !!el._fullData && el._fullData.some((t) => t.name === 'captions'); }"""
        )
        return time.monotonic() - ready


def bare_gradio_plot(url: str, ready: float) -> float:
    """Seconds from a bare Gradio app's first answer to its one Plotly figure in Chromium (the baseline)."""
    with chromium_page(url) as page:
        page.wait_for_selector("#bare-plot .js-plotly-plot")
        return time.monotonic() - ready


def first_embedding_map_api(url: str, ready: float) -> float:
    """Seconds from the app's first answer to an embedding map through gradio_client: `/analyze` on the
    sample scenes, then `/embedding_space` (UMAP: PCA while its code compiles, as in the page)."""
    from gradio_client import Client, handle_file

    files, captions = sample_files("scenes")
    client = Client(url, verbose=False)
    client.predict([handle_file(f) for f in files], captions, OFFLINE_SPEC, "cosine similarity", api_name="/analyze")
    job = client.submit("umap", 15, 0.1, "cosine", 0, False, False, api_name="/embedding_space")
    for outputs in job:  # the first map: PCA while UMAP compiles (the job goes on to the UMAP)
        if outputs[0]:
            return time.monotonic() - ready
    raise RuntimeError(f"/embedding_space returned no figure: {job.exception()}")


def analyze_api(url: str, files: list[Path], captions: list[str]) -> tuple[float, float]:
    """Seconds for `/analyze` through gradio_client, and the response's size in MB (as JSON)."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    start = time.perf_counter()
    result = client.predict([handle_file(str(f)) for f in files], "\n".join(captions), OFFLINE_SPEC,
                            "cosine similarity", api_name="/analyze")  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, len(json.dumps(result, default=str).encode()) / 1e6


def analyze_browser(url: str, files: list[Path], captions: list[str]) -> float:
    """Seconds in Chromium from choosing the files to all three Affinity heatmaps drawn with the new pairs."""
    rows = min(len(files), HEATMAP_PAGE)
    drawn = """([firsts, rows]) => Object.entries(firsts).every(([id, first]) => {
        const el = document.querySelector(`#${id} .js-plotly-plot`);
        const trace = el && el._fullData && el._fullData[0];
        return !!trace && trace.z.length === rows && String(trace.y[0]) === first;
    })"""
    image = f"image 1 ({files[0].name})"
    firsts = {"image-text-plot": image, "image-image-plot": image, "text-text-plot": f"caption 1: {captions[0]}"}
    with chromium_page(url) as page:
        page.wait_for_selector("#image-text-plot .js-plotly-plot")  # the sample scenes analysed on load
        page.locator("#uploads").get_by_role("button", name="Clear", exact=True).click()  # the sample files
        page.wait_for_function("() => document.querySelectorAll('#uploads td.filename').length === 0")
        start = time.perf_counter()
        page.locator("#uploads input[type=file]").set_input_files([str(f) for f in files])
        uploaded = """(n) => document.querySelectorAll('#uploads td.filename[aria-label^="bench_"]').length === n"""
        page.wait_for_function(uploaded, arg=len(files))  # every file uploaded and listed
        page.locator("#captions textarea").fill("\n".join(captions))
        page.locator("#analyze").click()
        page.wait_for_function(drawn, arg=[firsts, rows])  # each heatmap's first row is the new pairs' first
        return time.perf_counter() - start


def first_map_in_browser(work: Path) -> dict[str, float]:
    """The first embedding map in Chromium after a fresh app's first answer, against a bare Gradio page."""
    process, ready = start_app(port := free_port(), work / "bare", BARE_APP)
    try:
        bare = bare_gradio_plot(f"http://127.0.0.1:{port}/", ready)
    finally:
        process.terminate()
        process.wait(timeout=30)
    process, ready = start_app(port := free_port(), work / "data")
    try:
        first = first_embedding_map(f"http://127.0.0.1:{port}/", ready)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"first_embedding_map_s": round(first, 2), "bare_gradio_plot_s": round(bare, 2),
            "first_map_beyond_bare_page_s": round(first - bare, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="24,300,1000")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vlviz-bench-app-"))
    try:
        files, captions = write_pairs(work / "pairs", max(sizes))
        result: dict[str, object] = {}
        if not args.no_browser:
            result |= first_map_in_browser(work)
        process, ready = start_app(port := free_port(), work / "data")
        try:
            result["first_embedding_map_api_s"] = round(first_embedding_map_api(f"http://127.0.0.1:{port}/", ready), 2)
        finally:
            process.terminate()
            process.wait(timeout=30)
        print(json.dumps(result), file=sys.stderr, flush=True)
        process, ready = start_app(port := free_port(), work / "data")
        url = f"http://127.0.0.1:{port}/"
        result["sizes"] = []
        try:
            for n in sizes:
                baseline = bare_read_and_encode(files[:n], captions[:n])
                api_s, megabytes = analyze_api(url, files[:n], captions[:n])
                row = {"pairs": n, "baseline_read_encode_s": round(baseline, 3), "analyze_api_s": round(api_s, 2),
                       "api_ratio": round(api_s / baseline, 2), "response_mb": round(megabytes, 2)}  # fmt: skip
                if not args.no_browser:
                    browser_s = analyze_browser(url, files[:n], captions[:n])
                    row |= {"analyze_browser_s": round(browser_s, 2), "browser_ratio": round(browser_s / baseline, 2)}
                result["sizes"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
