"""The one way vlviz speaks in toasts: Gradio renders a gr.Error's, gr.Warning's and gr.Info's message as HTML,
and vlviz's messages carry what clients chose (file names, captions, model specs), so every one is escaped here.

`tests/ui/test_messages.py` checks that no other module of `vlviz.ui` raises or shows them directly.
"""

from __future__ import annotations

import html

import gradio as gr


def refusal(message: BaseException | str, kind: type[gr.Error] = gr.Error) -> gr.Error:
    """A gr.Error (or a subclass `kind` of it) that shows `message` (an exception's text, or a sentence) as plain
    text."""
    return kind(html.escape(str(message), quote=False))


def warn(message: str) -> None:
    """A warning toast that shows `message` as plain text."""
    gr.Warning(html.escape(message, quote=False))


def inform(message: str) -> None:
    """An info toast that shows `message` as plain text."""
    gr.Info(html.escape(message, quote=False))
