"""vlviz.ui.messages: toasts show client text as text (Gradio renders their messages as HTML)."""

from __future__ import annotations

import ast
from pathlib import Path

import gradio as gr
import pytest

import vlviz.ui
from vlviz.ui.messages import refusal, warn
from vlviz.ui.session import SessionBusy

HOSTILE = '<img src="http://evil.example/x.png"> & <form><input type=password></form>'


def test_a_refusal_and_a_warning_show_their_text_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refusal(ValueError(HOSTILE))
    assert isinstance(error, gr.Error) and "<" not in error.message and "&lt;img" in error.message
    busy = refusal(HOSTILE, SessionBusy)  # a subclass, escaped the same way
    assert isinstance(busy, SessionBusy) and busy.message == error.message
    shown = []
    monkeypatch.setattr(gr, "Warning", shown.append)
    warn(HOSTILE)
    assert shown == [
        '&lt;img src="http://evil.example/x.png"&gt; &amp; &lt;form&gt;&lt;input type=password&gt;&lt;/form&gt;'
    ]


def test_no_other_ui_module_raises_or_shows_a_toast_directly() -> None:
    """The mechanism, not a patch: a new message anywhere in the UI goes through vlviz.ui.messages."""
    found = []
    for path in Path(vlviz.ui.__file__).parent.glob("*.py"):
        if path.name == "messages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func
                if (
                    isinstance(name.value, ast.Name)
                    and name.value.id == "gr"
                    and name.attr in {"Error", "Warning", "Info"}
                ):
                    found.append(f"{path.name}:{node.lineno} gr.{name.attr}")
    assert not found, found
