"""Which engine draws the Dataset tab's 2-D map (issue 24): plotly scattergl, regl-scatterplot, embedding-atlas.

`python -m bench.draw_engines [--sizes 100000,1000000] [--repeats 3] [--docs]` draws N seeded synthetic
points (clustered like a UMAP layout, one colour category each) with each engine in headless Chromium,
a fresh browser per run, and prints one JSON object (also written to `bench/results/draw_engines.json`):

- `first_draw_ms`: from navigation start to the first frame after the engine drew (its own promise, or
  its first WebGL draw call, then one requestAnimationFrame), code and data loading included; a
  screenshot then checks that points are on the canvas (`drawn_share`, the share of non-white pixels);
- `step_ms` median and p95: 30 wheel-zoom then 30 drag-pan steps (trusted CDP input), each from sending the
  input to the page's next animation frame; `frame_ms_max`: the longest requestAnimationFrame interval of
  the gesture; `draw_calls`: the WebGL draw calls it caused (the engine did redraw); `floor`: the same on a
  blank page, the harness's own cost;
- `js_heap_mb` (CDP `JSHeapUsedSize` after a forced GC) and `rss_mb` / `pss_mb`: every process of this
  browser (browser, renderer, GPU: SwiftShader's buffers live in the GPU process) from /proc;
- `data_bytes` and `code_bytes`: what the local server sent to the page;
- the ratios of each to plotly scattergl's (the baseline: what a gr.Plot of a Scattergl ships and draws)
  at the same N, in this run; `transport`: fetching and decoding the same points as plain JSON, as
  plotly's figure JSON (base64 typed arrays) and as raw Float32Array/Uint8Array;
- `gradio_proof`: the kept engine inside a Gradio 6 Blocks page (a gr.HTML whose `js_on_load` imports the
  bundle and fetches the points, both served by routes added through `launch(app_kwargs={"routes": ...})`),
  first draw of 1M points measured the same way.

Chromium runs with the project's flags (`tests.browser.CHROMIUM_ARGS`, `--disable-gpu`): WebGL is drawn by
SwiftShader on the CPU, the same for every engine, so absolute times are far above a GPU's. The engines'
JavaScript is installed with npm into `bench/.draw_engines` (ignored by git) and bundled with esbuild.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import plotly
import plotly.graph_objects as go
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from bench.readme import write_results_block
from tests.browser import CHROMIUM_ARGS
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".draw_engines"  # node_modules and bundles, ignored by git
DIST = WORK / "dist"
RESULTS = ROOT / "bench" / "results" / "draw_engines.json"
SIZES = (100_000, 1_000_000)
WIDTH, HEIGHT = 1000, 700
SEED = 24
WHEEL_STEPS, DRAG_STEPS = 30, 30
PHASE_BUDGET_S = 60
# Wheel pixels a step, so that 30 steps zoom about 4.5× in each engine: plotly zooms exp(10/200) = 1.051× for 10 px,
# embedding-atlas about 1.055×, regl-scatterplot (dom-2d-camera) exp(px / canvas height), so 35 px for 1.051×.
WHEEL_DELTA = {"regl-scatterplot": 35}
DEFAULT_WHEEL_DELTA = 10
PAGE_TIMEOUT_S = 240
PALETTE = [
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#000000",
    "#999999",
    "#882255",
]  # Okabe-Ito and two more: one colour per category
N_CATEGORIES = len(PALETTE)
BASELINE = "plotly-scattergl"
KEPT = "regl-scatterplot"  # the verdict of docs/results/draw_engines.md; the proof draws with it

NPM_PACKAGES = {
    "regl-scatterplot": "1.16.0",
    "regl": "2.1.1",
    "pub-sub-es": "3.0.0",
    "embedding-atlas": "0.26.0",
    "embedding-atlas-0.23": "npm:embedding-atlas@0.23.0",
    "esbuild": "0.28.2",
}
# embedding-atlas's view component imports Mosaic (DuckDB) at module level for its Mosaic-bound twin; EmbeddingView
# never calls it, and @uwdata/mosaic-core cannot be installed here (its dependency @uwdata/wk-geojson is not served),
# so esbuild resolves both packages to a stub that throws if called. The entries import the package's component
# module (EmbeddingView and its Mosaic twin only), not its index (the whole Embedding Atlas app).
MOSAIC_STUB = """const missing = () => { throw new Error("Mosaic is not bundled: EmbeddingView does not use it"); };
export const coordinator = missing, makeClient = missing, isSelection = () => false;
"""
ENTRIES = {
    "regl-scatterplot": 'export { default as createScatterplot } from "regl-scatterplot";\n',
    "embedding-atlas-0.23": 'export { EmbeddingView } from "./node_modules/embedding-atlas-0.23/dist/component.js";\n',
    "embedding-atlas-0.26": 'export { EmbeddingView } from "./node_modules/embedding-atlas/dist/component.js";\n',
}
ENGINE_PACKAGE = {"embedding-atlas-0.23": "embedding-atlas-0.23", "embedding-atlas-0.26": "embedding-atlas"}

# Runs before any script of the page: counts WebGL draw calls, keeps the marks of the run.
INIT_JS = """
window.__bench = {gl: 0, marks: {}, result: null, frames: [], recording: false};
window.__bench.mark = (name) => { window.__bench.marks[name] = performance.now(); };
for (const C of [window.WebGLRenderingContext, window.WebGL2RenderingContext]) {
  if (!C) continue;
  for (const m of ["drawArrays", "drawElements", "drawArraysInstanced", "drawElementsInstanced"]) {
    const f = C.prototype[m];
    if (f) C.prototype[m] = function (...a) { window.__bench.gl++; return f.apply(this, a); };
  }
}
if (window.ANGLEInstancedArrays) {
  for (const m of ["drawArraysInstancedANGLE", "drawElementsInstancedANGLE"]) {
    const f = ANGLEInstancedArrays.prototype[m];
    if (f) ANGLEInstancedArrays.prototype[m] = function (...a) { window.__bench.gl++; return f.apply(this, a); };
  }
}
"""

# Shared by every engine's page: load the points, draw, wait for the first frame after the draw.
HARNESS_JS = """
const B = window.__bench;
const raf = () => new Promise((resolve) => requestAnimationFrame(resolve));
B.startFrames = () => {
  B.frames = []; B.recording = true; B.glAtStart = B.gl;
  const loop = (t) => { if (!B.recording) return; B.frames.push([t, B.gl]); requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
};
B.stopFrames = () => { B.recording = false; return {frames: B.frames, gl: B.gl - B.glAtStart}; };
async function loadBinary(base) {
  const get = async (name) => (await fetch(`${base}/${name}`)).arrayBuffer();
  const [x, y, cat] = await Promise.all([get("x.f32"), get("y.f32"), get("cat.u8")]);
  return {x: new Float32Array(x), y: new Float32Array(y), cat: new Uint8Array(cat)};
}
async function drawnFrame(failed) {
  const start = performance.now();
  while (B.gl === 0) {
    await raf();
    const why = failed && failed();
    if (why) throw new Error(why);
    if (performance.now() - start > 60000) throw new Error("no WebGL draw call within 60 s of the engine's draw call");
  }
  await raf();
}
async function run(load, draw, failed) {
  try {
    B.mark("start");
    const data = await load();
    B.mark("data");
    await draw(document.getElementById("view"), data);
    B.mark("engine_done");
    await drawnFrame(failed);
    B.mark("first_frame");
    B.result = {ok: true, marks: B.marks};
  } catch (error) {
    B.result = {ok: false, error: String(error && error.stack || error), marks: B.marks};
  }
}
"""

# Each engine: what the page's <head> loads, and the module that draws with it.
ENGINE_JS: dict[str, dict[str, str]] = {
    "plotly-scattergl": {
        "head": '<script src="/code/plotly.min.js"></script>',
        "module": """
run(async () => (await fetch(`${DATA}/figure.json`)).json(),
    async (el, fig) => { await Plotly.newPlot(el, fig.data, fig.layout, {scrollZoom: true, displayModeBar: false}); });
""",
    },
    "regl-scatterplot": {
        "head": "",
        "module": """
import { createScatterplot } from "/code/regl-scatterplot.js";
run(() => loadBinary(DATA), async (el, d) => {
  const canvas = document.createElement("canvas");
  canvas.style.width = `${W}px`; canvas.style.height = `${H}px`;
  el.appendChild(canvas);
  const plot = createScatterplot({canvas, width: W, height: H, pointSize: 2, colorBy: "valueA", pointColor: PALETTE});
  await plot.draw({x: d.x, y: d.y, valueA: d.cat}, {zDataType: "categorical"});
  window.__engine = plot;
});
""",
    },
    "embedding-atlas-0.23": {
        "head": "",
        "module": """
import { EmbeddingView } from "/code/embedding-atlas-0.23/index.js";
run(() => loadBinary(DATA), async (el, d) => {
  window.__engine = new EmbeddingView(el, {data: {x: d.x, y: d.y, category: d.cat}, categoryColors: PALETTE,
                                           width: W, height: H, pixelRatio: 1});
}, () => document.body.innerText.match(/WebGPU is unavailable[^\\n]*|Could not get WebGL[^\\n]*/)?.[0]);
""",
    },
    "embedding-atlas-0.26": {
        "head": "",
        "module": """
import { EmbeddingView } from "/code/embedding-atlas-0.26/index.js";
run(() => loadBinary(DATA), async (el, d) => {
  window.__engine = new EmbeddingView(el, {data: {x: d.x, y: d.y, category: d.cat}, categoryColors: PALETTE,
                                           width: W, height: H, pixelRatio: 1});
}, () => document.body.innerText.match(/WebGPU is unavailable[^\\n]*/)?.[0]);
""",
    },
}
# The harness's own floor: a page that clears a WebGL canvas once and draws no data.
ENGINE_JS["blank"] = {
    "head": "",
    "module": """
run(async () => null, async (el) => {
  const canvas = document.createElement("canvas");
  el.appendChild(canvas);
  const gl = canvas.getContext("webgl");
  gl.clearColor(1, 1, 1, 1); gl.clear(gl.COLOR_BUFFER_BIT); gl.drawArrays(gl.POINTS, 0, 0);
});
""",
}
ENGINES = [engine for engine in ENGINE_JS if engine != "blank"]

PAGE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{engine}</title><link rel="icon" href="data:,">
<style>html, body {{ margin: 0; background: #fff; }} #view {{ width: {w}px; height: {h}px; position: relative; }}</style>
{head}
<script>{harness}</script>
</head><body><div id="view"></div>
<script type="module">
const DATA = "/data/{n}", W = {w}, H = {h}, PALETTE = {palette};
{module}
</script></body></html>
"""


# ---------------------------------------------------------------------------------------------- data


def umap_like_points(n: int, seed: int = SEED, clusters: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N points in [-0.95, 0.95]²: rotated anisotropic blobs and arcs of very unequal sizes, 1% noise; a category each."""
    rng = np.random.default_rng(seed)
    n_noise = n // 100
    counts = rng.multinomial(n - n_noise, rng.dirichlet(np.full(clusters, 0.6)))
    xs, ys, cats = [], [], []
    for k, count in enumerate(counts):
        centre = rng.uniform(-0.75, 0.75, 2)
        if k % 3 == 2:  # an arc, as UMAP draws a continuum
            angle = rng.uniform(0, 2 * np.pi) + rng.uniform(0.5, 2.5) * rng.random(count)
            radius = rng.uniform(0.08, 0.25) + rng.normal(0, 0.012, count)
            points = np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None] + centre
        else:  # a blob, stretched and turned
            scale = rng.uniform(0.008, 0.07, 2)
            turn = rng.uniform(0, np.pi)
            rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
            points = (rng.standard_normal((count, 2)) * scale) @ rotation.T + centre
        xs.append(points[:, 0])
        ys.append(points[:, 1])
        cats.append(np.full(count, k % N_CATEGORIES))
    noise = rng.uniform(-1, 1, (n_noise, 2))
    x, y = np.concatenate([*xs, noise[:, 0]]), np.concatenate([*ys, noise[:, 1]])
    cat = np.concatenate([*cats, rng.integers(0, N_CATEGORIES, n_noise)])
    order = rng.permutation(n)  # dataset order, not cluster order
    span = max(np.abs(x).max(), np.abs(y).max())
    return (
        (x[order] / span * 0.95).astype(np.float32),
        (y[order] / span * 0.95).astype(np.float32),
        cat[order].astype(np.uint8),
    )


def plotly_figure(x: np.ndarray, y: np.ndarray, cat: np.ndarray) -> go.Figure:
    """The baseline: one Scattergl trace coloured by category, as a gr.Plot of the map would be."""
    colorscale = [[i / (N_CATEGORIES - 1), colour] for i, colour in enumerate(PALETTE)]
    trace = go.Scattergl(
        x=x,
        y=y,
        mode="markers",
        marker={"size": 2, "color": cat, "colorscale": colorscale, "cmin": 0, "cmax": N_CATEGORIES - 1},
    )
    axis = {"visible": False, "range": [-1, 1]}
    layout = {
        "width": WIDTH,
        "height": HEIGHT,
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
        "xaxis": axis,
        "yaxis": axis,
        "dragmode": "pan",
        "hovermode": "closest",
        "template": "none",
        "showlegend": False,
    }
    return go.Figure(trace, layout)


def write_data(folder: Path, n: int) -> None:
    """N points as x.f32, y.f32, cat.u8 (raw little-endian), plotly's figure.json and plain.json (number lists)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y, cat = umap_like_points(n)
    (folder / "x.f32").write_bytes(x.tobytes())
    (folder / "y.f32").write_bytes(y.tobytes())
    (folder / "cat.u8").write_bytes(cat.tobytes())
    (folder / "figure.json").write_text(plotly_figure(x, y, cat).to_json())
    plain = {"x": np.round(x.astype(np.float64), 5).tolist(), "y": np.round(y.astype(np.float64), 5).tolist()}
    (folder / "plain.json").write_text(json.dumps({**plain, "cat": cat.tolist()}, separators=(",", ":")))


# ---------------------------------------------------------------------------------------------- engines


def _run(command: list[str], cwd: Path, timeout: int = 600) -> None:
    """Run a build step; raise with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout)[-2000:]}")


def build_engines() -> dict[str, str | None]:
    """Install the engines with npm into bench/.draw_engines, bundle each with esbuild; the error of each that fails."""
    WORK.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "vlviz-draw-engines-bench", "private": True, "dependencies": NPM_PACKAGES}
    package = WORK / "package.json"
    stale = not package.exists() or json.loads(package.read_text()) != manifest
    if stale or not (WORK / "node_modules" / ".bin" / "esbuild").exists():
        package.write_text(json.dumps(manifest, indent=2) + "\n")
        try:  # --legacy-peer-deps: embedding-atlas lists Mosaic, React and Svelte as peers; EmbeddingView needs none
            _run(["npm", "install", "--no-audit", "--no-fund", "--legacy-peer-deps"], WORK)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            package.unlink()
            shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", _dist() / "plotly.min.js")
            return {"plotly-scattergl": None, **dict.fromkeys(ENTRIES, f"npm install failed: {error}")}
    (WORK / "mosaic-stub.js").write_text(MOSAIC_STUB)
    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", _dist() / "plotly.min.js")
    errors: dict[str, str | None] = {"plotly-scattergl": None}
    for engine, entry in ENTRIES.items():
        source = WORK / f"entry-{engine}.js"
        source.write_text(entry)
        out = DIST / engine / "index.js" if engine in ENGINE_PACKAGE else DIST / f"{engine}.js"
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [str(WORK / "node_modules" / ".bin" / "esbuild"), source.name, "--bundle", "--format=esm"]
        command += ["--minify", f"--outfile={out}", '--define:process.env.NODE_ENV="production"']
        command += ["--alias:@uwdata/mosaic-core=./mosaic-stub.js", "--alias:@uwdata/mosaic-sql=./mosaic-stub.js"]
        try:
            _run(command, WORK)
            if engine in ENGINE_PACKAGE:  # its web workers load by URL beside the bundle
                for worker in (WORK / "node_modules" / ENGINE_PACKAGE[engine] / "dist").glob("*.worker.js"):
                    shutil.copy(worker, out.parent / worker.name)
            errors[engine] = None
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            errors[engine] = str(error)
    return errors


def _dist() -> Path:
    """The folder of the bundles the pages load, made if missing."""
    DIST.mkdir(parents=True, exist_ok=True)
    return DIST


def engine_versions() -> dict[str, str]:
    """The installed version of each engine package, and plotly.js's."""
    versions = {"plotly.js": _plotly_js_version()}
    for name in ("regl-scatterplot", "embedding-atlas", "embedding-atlas-0.23"):
        manifest = WORK / "node_modules" / name / "package.json"
        if manifest.exists():
            versions[name] = json.loads(manifest.read_text())["version"]
    return versions


def _plotly_js_version() -> str:
    head = (DIST / "plotly.min.js").read_text()[:400]
    return head.split("plotly.js v", 1)[1].split()[0] if "plotly.js v" in head else "?"


def engine_page(engine: str, n: int) -> str:
    """The benchmark page of one engine at N points."""
    spec = ENGINE_JS[engine]
    return PAGE_HTML.format(
        engine=engine,
        w=WIDTH,
        h=HEIGHT,
        n=n,
        head=spec["head"],
        harness=HARNESS_JS,
        palette=json.dumps(PALETTE),
        module=spec["module"],
    )


# ---------------------------------------------------------------------------------------------- server


class _Counting(http.server.SimpleHTTPRequestHandler):
    """Serves the bench folder with no caching and counts the bytes of each response body."""

    sent: dict[str, int]

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        self.sent[self.path] = self.sent.get(self.path, 0) + len(data)
        outputfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A static server of `folder` on 127.0.0.1 in a thread: its URL and the bytes sent per path."""
    sent: dict[str, int] = {}
    handler = type("Handler", (_Counting,), {"sent": sent})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sent
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------- browser


def browser_memory() -> dict[str, float]:
    """RSS and PSS (MB) of every Chromium process under this one, and RSS by process type."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    mine, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        mine.update(children)
        todo.extend(children)
    totals: dict[str, float] = {"rss_mb": 0.0, "pss_mb": 0.0}
    for pid in mine:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()  # Chromium retitles
            if not cmdline or b"chrom" not in cmdline[0]:
                continue
            kind = next((a[7:].decode() for a in cmdline if a.startswith(b"--type=")), "browser")
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            pss = int(next(line for line in rollup.splitlines() if line.startswith("Pss:")).split()[1]) / 1024
            totals["rss_mb"] += rss
            totals["pss_mb"] += pss
            totals[f"rss_{kind}_mb"] = totals.get(f"rss_{kind}_mb", 0.0) + rss
    return {key: round(value, 1) for key, value in totals.items()}


def js_heap_mb(cdp: Any) -> float:
    """The page's used JS heap after a forced garbage collection, MB."""
    cdp.send("HeapProfiler.collectGarbage")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return round(metrics["JSHeapUsedSize"] / 2**20, 1)


def drawn_share(page: Page) -> float:
    """The share of the map's pixels that are not white: 0 means nothing was drawn."""
    png = page.screenshot(clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return round(float((np.abs(pixels - 255).sum(axis=2) > 30).mean()), 4)


def wait_frame(page: Page) -> None:
    """Return after the page's next animation frame."""
    page.evaluate("() => new Promise((resolve) => requestAnimationFrame(() => resolve()))")


def pan_and_zoom(page: Page, wheel_delta: int, shots: Path | None = None, name: str = "") -> dict[str, Any]:
    """30 wheel steps into the middle, then a 30-step drag; after each step, wait for the page's next frame.

    Each step's time, from sending the input (CDP) to the next animation frame, is what a person moving the map
    waits for a new view; the requestAnimationFrame intervals of the whole gesture show the long frames. A phase
    stops early after PHASE_BUDGET_S (plotly at 1M takes seconds a step), and says how many steps it made.
    """
    cx, cy = WIDTH / 2, HEIGHT / 2
    page.mouse.move(cx, cy)
    for _ in range(3):
        wait_frame(page)
    page.evaluate("() => window.__bench.startFrames()")
    steps: list[float] = []

    def timed(action: Any) -> bool:
        start = time.perf_counter()
        action()
        wait_frame(page)
        steps.append((time.perf_counter() - start) * 1000)
        return time.perf_counter() - phase < PHASE_BUDGET_S

    phase = time.perf_counter()
    for _ in range(WHEEL_STEPS):
        if not timed(lambda: page.mouse.wheel(0, -wheel_delta)):
            break
    wheel_steps = len(steps)
    page.mouse.down()
    phase = time.perf_counter()
    for step in range(1, DRAG_STEPS + 1):
        if not timed(lambda step=step: page.mouse.move(cx - 6 * step, cy - 3 * step)):
            break
    page.mouse.up()
    for _ in range(3):
        wait_frame(page)
    recorded = page.evaluate("() => window.__bench.stopFrames()")
    if shots:
        page.screenshot(path=shots / f"{name}-after.png", clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
    frames = np.diff(np.asarray(recorded["frames"], dtype=np.float64).reshape(-1, 2)[:, 0])
    return {
        "steps": [wheel_steps, len(steps) - wheel_steps],
        "step_ms_median": round(float(np.median(steps)), 1),
        "step_ms_p95": round(float(np.percentile(steps, 95)), 1),
        "frame_ms_median": round(float(np.median(frames)), 1) if len(frames) else None,
        "frame_ms_p95": round(float(np.percentile(frames, 95)), 1) if len(frames) else None,
        "frame_ms_max": round(float(frames.max()), 1) if len(frames) else None,
        "frames": len(frames),
        "draw_calls": recorded["gl"],
    }


@contextlib.contextmanager
def chromium(extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """A fresh headless Chromium with the project's flags."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            browser.close()


def measure(
    url: str, sent: dict[str, int], engine: str, n: int, shots: Path | None = None, extra_args: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One run of one engine at N points in a fresh browser: first draw, pan/zoom frames, memory, bytes."""
    sent.clear()
    console: list[str] = []
    with chromium(extra_args) as browser:
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=1)
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"[:300]))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"[:300]))
        page.add_init_script(INIT_JS)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.goto(f"{url}/{engine}-{n}.html")
        page.wait_for_function("() => window.__bench && window.__bench.result", timeout=PAGE_TIMEOUT_S * 1000)
        result = page.evaluate("() => window.__bench.result")
        marks = {key: round(value) for key, value in result["marks"].items()}
        row: dict[str, Any] = {"engine": engine, "n": n, "ok": result["ok"], "marks_ms": marks}
        if not result["ok"]:
            errors = [line for line in console if line.startswith(("error", "pageerror"))]
            return {**row, "error": result["error"][:600], "console_errors": errors[:5]}
        row["first_draw_ms"] = marks["first_frame"]
        row["drawn_share"] = drawn_share(page)
        if shots:
            page.screenshot(path=shots / f"{engine}-{n}.png", clip={"x": 0, "y": 0, "width": WIDTH, "height": HEIGHT})
        row["js_heap_mb"] = js_heap_mb(cdp)
        row.update(browser_memory())
        row["pan_zoom"] = pan_and_zoom(page, WHEEL_DELTA.get(engine, DEFAULT_WHEEL_DELTA), shots, f"{engine}-{n}")
        row["js_heap_after_mb"] = js_heap_mb(cdp)
        row["rss_after_mb"] = browser_memory()["rss_mb"]
        row["data_bytes"] = sum(size for path, size in sent.items() if path.startswith("/data/"))
        row["code_bytes"] = sum(size for path, size in sent.items() if path.startswith("/code/"))
        return row


TRANSPORT_HTML = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body><script type="module">
const base = "/data/{n}";
const decode = (t) => {{
  const bytes = Uint8Array.from(atob(t.bdata), (c) => c.charCodeAt(0));
  return t.dtype === "f4" ? new Float32Array(bytes.buffer) : bytes;
}};
const ways = {{
  plain_json: async () => {{ const d = await (await fetch(`${{base}}/plain.json`)).json();
    return [Float32Array.from(d.x), Float32Array.from(d.y), Uint8Array.from(d.cat)]; }},
  plotly_json: async () => {{ const f = await (await fetch(`${{base}}/figure.json`)).json();
    const t = f.data[0]; return [decode(t.x), decode(t.y), decode(t.marker.color)]; }},
  binary: async () => Promise.all(["x.f32", "y.f32", "cat.u8"].map(async (name) =>
    (await fetch(`${{base}}/${{name}}`)).arrayBuffer())),
}};
const out = {{}};
for (const [name, way] of Object.entries(ways)) {{
  const times = [];
  for (let i = 0; i < 3; i++) {{ const t = performance.now(); await way(); times.push(performance.now() - t); }}
  out[name] = times.sort((a, b) => a - b)[1];
}}
window.__transport = out;
</script></body></html>
"""


def transport(url: str, sent: dict[str, int], n: int) -> dict[str, Any]:
    """Bytes and fetch + decode time (median of 3) of the same N points as plain JSON, plotly JSON and binary."""
    sent.clear()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/transport-{n}.html")
        page.wait_for_function("() => window.__transport", timeout=PAGE_TIMEOUT_S * 1000)
        times = page.evaluate("() => window.__transport")
    files = {"plain_json": ["plain.json"], "plotly_json": ["figure.json"], "binary": ["x.f32", "y.f32", "cat.u8"]}
    return {
        way: {
            "bytes": sum(sent.get(f"/data/{n}/{name}", 0) for name in names) // 3,
            "fetch_decode_ms": round(times[way]),
        }
        for way, names in files.items()
    }


# ---------------------------------------------------------------------------------------------- Gradio


PROOF_JS = """
(async () => {
  const B = window.__bench;
  const raf = () => new Promise((resolve) => requestAnimationFrame(resolve));
  try {
    B.mark("start");
    const { createScatterplot } = await import(props.bundle);
    const get = async (name) => (await fetch(`${props.data}/${name}`)).arrayBuffer();
    const [x, y, cat] = await Promise.all([get("x.f32"), get("y.f32"), get("cat.u8")]);
    B.mark("data");
    const canvas = element.querySelector("canvas");
    const plot = createScatterplot({canvas, width: props.width, height: props.height, pointSize: 2,
                                    colorBy: "valueA", pointColor: props.palette});
    await plot.draw({x: new Float32Array(x), y: new Float32Array(y), valueA: new Uint8Array(cat)},
                    {zDataType: "categorical"});
    B.mark("engine_done");
    while (B.gl === 0) await raf();
    await raf();
    B.mark("first_frame");
    B.result = {ok: true, marks: B.marks};
  } catch (error) {
    B.result = {ok: false, error: String(error && error.stack || error), marks: B.marks};
  }
})();
"""


def gradio_proof(data_root: Path, n: int) -> dict[str, Any]:
    """The kept engine in a tiny Gradio Blocks page: first draw of N points in Chromium, from navigation start."""
    import gradio as gr
    from starlette.responses import Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    folder = data_root / str(n)

    async def points(request: Any) -> Response:
        """The points of the map as raw little-endian arrays: x.f32, y.f32, cat.u8."""
        name = request.path_params["name"]
        if name not in {"x.f32", "y.f32", "cat.u8"}:
            return Response(status_code=404)
        return Response((folder / name).read_bytes(), media_type="application/octet-stream")

    routes = [
        Mount("/vlviz-draw", StaticFiles(directory=DIST), name="vlviz-draw"),
        Route("/vlviz-points/{name}", points),
    ]
    with gr.Blocks() as demo:
        gr.Markdown(f"Dataset map proof: {n:,} points drawn by {KEPT}")
        gr.HTML(
            html_template=f'<canvas style="width:{WIDTH}px;height:{HEIGHT}px;display:block"></canvas>',
            js_on_load=PROOF_JS,
            apply_default_css=False,
            elem_id="dataset-map",
            bundle=f"/vlviz-draw/{KEPT}.js",
            data="/vlviz-points",
            width=WIDTH,
            height=HEIGHT,
            palette=PALETTE,
        )
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, app_kwargs={"routes": routes})
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": WIDTH + 100, "height": HEIGHT + 300}, device_scale_factor=1)
            page.add_init_script(INIT_JS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => window.__bench && window.__bench.result", timeout=PAGE_TIMEOUT_S * 1000)
            result = page.evaluate("() => window.__bench.result")
            box = page.locator("#dataset-map canvas").bounding_box()
            share = None
            if box:
                png = page.screenshot(clip=box)
                pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
                share = round(float((np.abs(pixels - 255).sum(axis=2) > 30).mean()), 4)
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # Gradio says it closes on stdout, where the JSON goes
            demo.close()
    marks = {key: round(value) for key, value in result["marks"].items()}
    row = {"engine": KEPT, "n": n, "ok": result["ok"], "marks_ms": marks, "drawn_share": share}
    if result["ok"]:
        row["first_draw_ms"] = marks["first_frame"]
    else:
        row["error"] = result["error"][:600]
    return row


# ---------------------------------------------------------------------------------------------- summary

SUMMARY_KEYS = ("first_draw_ms", "js_heap_mb", "rss_mb", "pss_mb", "rss_after_mb", "data_bytes", "code_bytes")
FRAME_KEYS = ("step_ms_median", "step_ms_p95", "frame_ms_p95", "frame_ms_max", "draw_calls")
RATIO_KEYS = (*SUMMARY_KEYS, "step_ms_median", "step_ms_p95", "frame_ms_max")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the repeats of one engine at one N (the first error, if no run worked)."""
    good = [run for run in runs if run["ok"]]
    if not good:
        return {"ok": False, "error": runs[0].get("error"), "console_errors": runs[0].get("console_errors", [])}
    out: dict[str, Any] = {"ok": True, "runs": len(good)}
    for key in SUMMARY_KEYS:
        out[key] = statistics.median(run[key] for run in good)
    for key in FRAME_KEYS:
        values = [run["pan_zoom"][key] for run in good if key in run["pan_zoom"]]
        out[key] = statistics.median(values) if values else None
    out["steps"] = min((run["pan_zoom"]["steps"] for run in good), key=sum)
    out["drawn_share"] = min(run["drawn_share"] for run in good)
    out["first_draw_ms_all"] = [run["first_draw_ms"] for run in good]
    out["data_ms"] = statistics.median(run["marks_ms"]["data"] for run in good)
    return out


def with_ratios(table: dict[str, dict[str, Any]]) -> None:
    """Add to each engine's summary its ratio to the baseline's for each figure (lower is better)."""
    base = table.get(BASELINE, {})
    for summary in table.values():
        if not summary.get("ok") or not base.get("ok"):
            continue
        summary["vs_baseline"] = {
            key: round(summary[key] / base[key], 3) for key in RATIO_KEYS if summary.get(key) and base.get(key)
        }


def markdown_table(report: dict[str, Any]) -> str:
    """The results table of the docs page."""
    floor = report.get("floor", {}).get("pan_zoom", {})
    lines = [
        "| N | engine | first draw (× plotly) | pan/zoom step, median / p95 | longest frame | JS heap | browser PSS (RSS) | data + code shipped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, table in report["results"].items():
        for engine, s in table.items():
            if not s.get("ok"):
                why = (s.get("error") or "").splitlines()[0].removeprefix("Error: ")[:150]
                lines.append(f"| {int(n):,} | {engine} | did not draw: {why} | | | | | |")
                continue
            ratio = s.get("vs_baseline", {}).get("first_draw_ms", 1.0)
            partial_steps = (
                "" if s["steps"] == [WHEEL_STEPS, DRAG_STEPS] else f" ({s['steps'][0]}+{s['steps'][1]} steps)"
            )
            lines.append(
                f"| {int(n):,} | {engine} | {s['first_draw_ms'] / 1000:.1f} s ({ratio:.2f}) |"
                f" {s['step_ms_median']:.0f} / {s['step_ms_p95']:.0f} ms{partial_steps} | {s['frame_ms_max']:.0f} ms |"
                f" {s['js_heap_mb']:.0f} MB | {s['pss_mb']:.0f} ({s['rss_mb']:.0f}) MB |"
                f" {s['data_bytes'] / 1e6:.1f} + {s['code_bytes'] / 1e6:.2f} MB |"
            )
    if floor:
        lines.append(
            f"| – | blank page (the harness) | {report['floor']['first_draw_ms'] / 1000:.1f} s |"
            f" {floor['step_ms_median']:.0f} / {floor['step_ms_p95']:.0f} ms | {floor['frame_ms_max']:.0f} ms |"
            f" {report['floor']['js_heap_mb']:.0f} MB | {report['floor']['pss_mb']:.0f} ({report['floor']['rss_mb']:.0f}) MB | |"
        )
    lines += [
        "",
        "| N | plain JSON | plotly figure JSON (base64) | raw Float32Array + Uint8Array |",
        "|---|---|---|---|",
    ]
    for n, ways in report.get("transport", {}).items():
        cells = [f"{ways[w]['bytes'] / 1e6:.1f} MB, {ways[w]['fetch_decode_ms']} ms" for w in ways]
        lines.append(f"| {int(n):,} | " + " | ".join(cells) + " |")
    proof = report.get("gradio_proof")
    if proof:
        if proof.get("ok"):
            marks = proof["marks_ms"]
            drawn = (
                f"first draw **{proof['first_draw_ms'] / 1000:.1f} s** from navigation start (Gradio's page ran"
                f" `js_on_load` at {marks['start'] / 1000:.1f} s, the points had arrived at {marks['data'] / 1000:.1f} s)"
            )
        else:
            drawn = f"failed: {proof.get('error')}"
        lines += ["", f"Gradio 6 proof ({proof['engine']}, {proof['n']:,} points, gr.HTML): {drawn}."]
    load = report.get("load_average_at_start", ["?"])[0], report.get("load_average_at_end", ["?"])[0]
    lines += [
        "",
        f"{report['machine']}; load average {load[0]} at the start, {load[1]} at the end (other work shared the"
        f" machine); medians of {report['repeats']} runs, a fresh browser each.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build the engines, measure each at each N, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--no-proof", action="store_true", help="skip the Gradio page")
    parser.add_argument("--shots", type=Path, help="save each engine's first frame and its view after pan/zoom here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/draw_engines.md")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    engines = args.engines.split(",")
    build_errors = build_engines()
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": f"headless Chromium {_chromium_version()}, --disable-gpu: WebGL and WebGPU by SwiftShader (CPU), "
        f"{os.cpu_count()} shared CPU cores",
        "load_average_at_start": [round(load, 1) for load in os.getloadavg()],
        "versions": engine_versions(),
        "viewport": [WIDTH, HEIGHT],
        "steps": {"wheel": WHEEL_STEPS, "drag": DRAG_STEPS},
        "repeats": args.repeats,
        "baseline": BASELINE,
        "kept": KEPT,
        "build_errors": {engine: error for engine, error in build_errors.items() if error},
        "results": {},
        "transport": {},
    }
    with tempfile.TemporaryDirectory(prefix="draw-engines-") as tmp:
        root = Path(tmp)
        (root / "code").symlink_to(DIST)
        for n in sizes:
            write_data(root / "data" / str(n), n)
            for engine in engines:
                (root / f"{engine}-{n}.html").write_text(engine_page(engine, n))
            (root / f"transport-{n}.html").write_text(TRANSPORT_HTML.format(n=n))
        (root / "blank-0.html").write_text(engine_page("blank", 0))
        with serve(root) as (url, sent):
            report["floor"] = measure(url, sent, "blank", 0)
            for n in sizes:
                report["transport"][str(n)] = transport(url, sent, n)
                runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
                for repeat in range(args.repeats):  # engines interleaved, so load on the machine hits each alike
                    for engine in engines:
                        if build_errors.get(engine):
                            runs[engine] = [{"ok": False, "error": build_errors[engine]}]
                            continue
                        if repeat and not any(run["ok"] for run in runs[engine]):
                            continue  # it failed once: the reason is recorded, no need to repeat it
                        runs[engine].append(measure(url, sent, engine, n, args.shots))
                        print(json.dumps(runs[engine][-1]), file=sys.stderr, flush=True)  # progress
                table = {engine: summarise(engine_runs) for engine, engine_runs in runs.items()}
                if "embedding-atlas-0.26" in engines and not table["embedding-atlas-0.26"]["ok"]:
                    webgpu = measure(url, sent, "embedding-atlas-0.26", n, None, ("--enable-unsafe-webgpu",))
                    table["embedding-atlas-0.26"]["with_enable_unsafe_webgpu"] = {
                        key: webgpu.get(key) for key in ("ok", "error", "console_errors", "first_draw_ms")
                    }
                with_ratios(table)
                report["results"][str(n)] = table
        if not args.no_proof:
            report["gradio_proof"] = gradio_proof(root / "data", max(sizes))
    report["load_average_at_end"] = [round(load, 1) for load in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.docs:
        write_results_block("draw_engines", markdown_table(report))
    print(json.dumps(report, indent=2))
    return report


def _chromium_version() -> str:
    with chromium() as browser:
        return browser.version


if __name__ == "__main__":
    main()
