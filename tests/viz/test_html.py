"""User text into Markdown: `markdown_text` makes any caption, file name or notice show as written."""

from __future__ import annotations

import html

import markdown_it  # a CommonMark reference (it comes with gradio, through rich)
import pytest

from vlviz.viz.html import markdown_code, markdown_text

TEXTS = [
    "<img src=x onerror=alert(1)> a red circle",
    "<video src=v.mp4 autoplay></video>",
    "<form><input type=password></form>",
    "**bold** _it_ `code` [link](http://evil.example) ![img](x.png) ~~gone~~ $$x^2$$",
    "# heading",
    "- a list item",
    "1. ordered",
    "> quoted | with | pipes",
    "&lt;already escaped&gt; \\*",
    "scene_01.png: 4000x3000, hf-hub:org/name",
    "https://evil.example/x, www.evil.example and a@b.example",
]


@pytest.mark.parametrize("text", TEXTS)
def test_markdown_text_shows_literally(text: str) -> None:
    parser = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    for prefix, tag in (("", "p"), ("## ", "h2")):
        assert parser.render(prefix + markdown_text(text)) == f"<{tag}>{html.escape(text)}</{tag}>\n"
    assert "<" not in markdown_text(text)  # Gradio's Markdown also renders raw HTML: no tag may start


@pytest.mark.parametrize("text", ["vlviz-scenes", "<img src=x>", "a `tick` and ``two``", "`edge`"])
def test_markdown_code_shows_literally_in_a_code_span(text: str) -> None:
    rendered = markdown_it.MarkdownIt("commonmark").render(markdown_code(text))
    assert rendered == f"<p><code>{html.escape(text, quote=False)}</code></p>\n"
