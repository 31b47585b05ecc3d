"""Shared plumbing of the browser tests: Chromium's flags, timeouts, and reading plotly figures from the DOM.

Gradio renders each gr.Plot as a plotly `.js-plotly-plot` element, whose `_fullData` holds the
traces with their `z` matrices decoded (the figure arrives base64-encoded, so `data[0].z` is a
`{dtype, bdata}` object, not an array).
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page

from vlviz.data.samples import SAMPLE_SETS, sample_files

TIMEOUT_MS = 60_000  # generous: the CPU is shared with other work and the model runs on it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCENES = SAMPLE_SETS["scenes"]
N_SAMPLE_PAIRS = len(sample_files("scenes")[0])

# The first trace of the plotly figure inside a gr.Plot, or null while none is drawn.
_TRACE_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    const trace = el && el._fullData && el._fullData[0];
    return trace ? {type: trace.type, z: Array.from(trace.z || [], (row) => Array.from(row)),
                    title: (el.layout.title && el.layout.title.text) || ""} : null;
}"""


def open_page(browser: Any, url: str, height: int = 1000) -> Page:
    """`url` in a page of a fresh context 1400 px wide, every wait TIMEOUT_MS (close it with `page.context.close()`)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url)
    return page


def heatmap(page: Page, elem_id: str) -> dict | None:
    """The first trace of the plot `#elem_id` as {type, z (rows of floats), title}, or None."""
    return page.evaluate(_TRACE_JS, elem_id)


def heatmap_z(page: Page, elem_id: str) -> list[list[float]] | None:
    """The z matrix drawn in the plot `#elem_id`, row by row, or None while nothing is drawn."""
    trace = heatmap(page, elem_id)
    return trace["z"] if trace else None


def wait_for_heatmap(page: Page, elem_id: str, rows: int, title_starts: str = "") -> None:
    """Wait until `#elem_id` draws a heatmap with `rows` rows (and a title starting so)."""
    page.wait_for_function(
        f"""([id, rows, title]) => {{
            const trace = ({_TRACE_JS})(id);
            return !!trace && trace.type === "heatmap" && trace.z.length === rows && trace.title.startsWith(title);
        }}""",
        arg=[elem_id, rows, title_starts],
        timeout=TIMEOUT_MS,
    )


_TITLE_JS = """(id) => {
    const el = document.querySelector(`#${id} .js-plotly-plot`);
    return el && el._fullData ? (el.layout.title && el.layout.title.text) || "" : null;
}"""


def wait_for_title(page: Page, elem_id: str, title_starts: str) -> None:
    """Wait until the plot `#elem_id` is drawn with a title starting so (a redraw, not the figure before it)."""
    page.wait_for_function(
        f"([id, title]) => {{ const t = ({_TITLE_JS})(id); return t !== null && t.startsWith(title); }}",
        arg=[elem_id, title_starts],
        timeout=TIMEOUT_MS,
    )
