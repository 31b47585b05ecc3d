"""Self-contained HTML: offline pages of figures (plotly.js inlined once) and cards of image pairs; user
text made safe for Markdown."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence

import plotly.graph_objects as go
from PIL import Image
from plotly.offline import get_plotlyjs

from vlviz.metrics.consistency import InconsistentPairs

THUMBNAIL_SIDE = 128
_INLINE_ACTIVE = re.compile(r"[\\`*_\[\]|~$]|:(?=//)|(?<=www)\.")
"""Active anywhere in a line: emphasis, code, links and images, GFM's tables, strike-through and autolinks
(`http://`, `www.`), KaTeX's $. `<` and `&` become entities (`markdown_text`)."""
_LINE_START = re.compile(r"^([ \t]*)([#+=-]|\d+(?=[.)]))", re.MULTILINE)
"""Active at the start of a line only: headings, lists (an ordered one's digits kept apart from their dot); a quote's `>` is an entity."""


def markdown_text(text: str) -> str:
    """`text` (a caption, a file name, a model name, a notice) as Markdown that shows it literally.

    Gradio's Markdown renders HTML (`<img src>` and `<video autoplay>` fetch when the page opens, `<form>`
    draws a form), so `<` and `&` become entities; what starts emphasis, code, links, autolinks, tables or
    math is backslash-escaped, and headings, quotes and lists only at a line's start, so names and notices
    stay readable to API clients (`hf-hub:org/name`, `scene_01.png` keeps only its `_` escaped).
    Not for code spans, where escapes show.
    """
    inline = _INLINE_ACTIVE.sub(r"\\\g<0>", text)
    return html.escape(_LINE_START.sub(_escape_line_start, inline), quote=False)


def _escape_line_start(match: re.Match[str]) -> str:
    indent, mark = match.groups()
    return f"{indent}{mark}\\" if mark[0].isdigit() else f"{indent}\\{mark}"


def markdown_code(text: str) -> str:
    """`text` as a Markdown code span (nothing inside one is rendered), fenced by more backticks than it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_list(items: Sequence[str]) -> str:
    """Notices as a Markdown list, each item shown literally (`markdown_text`)."""
    return "\n".join(f"- {markdown_text(item)}" for item in items)


def page_html(title: str, blocks: Sequence[go.Figure | str]) -> str:
    """One offline HTML page: plotly.js inlined once in the head, then each figure or HTML block in order.

    String blocks are inserted as they are (escape user text before passing it).
    """
    body = []
    for block in blocks:
        if isinstance(block, go.Figure):
            body.append(block.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}))
        else:
            body.append(block)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}h2{margin-top:40px;border-bottom:1px solid #ccc}</style>\n"
        f"</head><body>\n{chr(10).join(body)}\n</body></html>\n"
    )


def top_pairs_html(
    top: InconsistentPairs, images: Sequence[Image.Image], names: Sequence[str], captions: Sequence[str]
) -> str:
    """The most inconsistent pairs as cards: both images, both captions, A_I, A_T (self-contained HTML)."""
    cards = []
    for rank, (i, j, a_i, a_t) in enumerate(
        zip(top.first.tolist(), top.second.tolist(), top.image_affinity.tolist(), top.text_affinity.tolist()), 1
    ):
        sides = "".join(
            f'<figure style="margin:0;width:{THUMBNAIL_SIDE}px">'
            f'<img src="{thumbnail_uri(images[s])}" alt="{html.escape(names[s])}" '
            f'style="width:{THUMBNAIL_SIDE}px;height:{THUMBNAIL_SIDE}px;object-fit:contain;background:#222">'
            f'<figcaption style="font-size:12px"><b>{s + 1}. {html.escape(names[s])}</b><br>'
            f"{html.escape(captions[s])}</figcaption></figure>"
            for s in (i, j)
        )
        more = "images more alike than captions" if a_i > a_t else "captions more alike than images"
        cards.append(
            '<div class="saco-pair" style="border:1px solid #8884;border-radius:8px;padding:8px;'
            'display:flex;flex-direction:column;gap:6px">'
            f'<div style="font-size:13px"><b>#{rank}</b> · A_I {a_i:.3f} · A_T {a_t:.3f} · '
            f"|Δ| {abs(a_i - a_t):.3f}<br><i>{more}</i></div>"
            f'<div style="display:flex;gap:8px">{sides}</div></div>'
        )
    return f'<div class="saco-pairs" style="display:flex;flex-wrap:wrap;gap:10px">{"".join(cards)}</div>'


def thumbnail_uri(image: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """A small JPEG of the image as a data: URI, for self-contained HTML."""
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
