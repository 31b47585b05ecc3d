"""Paper-ready figures in a real Chromium: every plot's mode bar downloads it as SVG and as PNG at 3x,
drawn by plotly.js in the page (`vlviz.ui.figure_export`), and the figures carry the vlviz style."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from playwright.sync_api import Page

from vlviz.ui.figure_export import PNG_BUTTON_TITLE, PNG_SCALE, SVG_BUTTON_TITLE

pytestmark = pytest.mark.browser

PLOT = "#image-text-plot .js-plotly-plot"


def download(page: Page, title: str, folder: Path) -> Path:
    """Hover the image-text plot, click its mode-bar button `title`, and save the file it downloads."""
    page.locator(PLOT).hover()
    with page.expect_download() as info:
        page.locator(f'{PLOT} .modebar-btn[data-title="{title}"]').click()
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_plot_downloads_svg_and_png_at_three_times_its_size(page: Page, tmp_path: Path) -> None:
    titles = page.locator(f"{PLOT} .modebar-btn").evaluate_all("(buttons) => buttons.map((b) => b.dataset.title)")
    assert SVG_BUTTON_TITLE in titles and PNG_BUTTON_TITLE in titles
    assert not [title for title in titles if title.startswith("Download plot")]  # plotly's own 1x PNG is replaced

    svg = download(page, SVG_BUTTON_TITLE, tmp_path)
    assert svg.name == "vlviz-image-text-cosine-similarity.svg"
    text = svg.read_text(encoding="utf-8")
    assert text.startswith("<svg") and "Image-text cosine similarity" in text
    assert "Arial" in text  # the vlviz template's font

    png = download(page, PNG_BUTTON_TITLE, tmp_path)
    size = page.evaluate(
        f"() => {{ const l = document.querySelector('{PLOT}')._fullLayout; return [l.width, l.height]; }}"
    )
    assert png.suffix == ".png" and png_size(png) == (PNG_SCALE * size[0], PNG_SCALE * size[1])
