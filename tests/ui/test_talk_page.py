"""The talk page without a browser: captions reach its Markdown only escaped, and a talk handed over by
another session names its model, never the folder it loads."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from vlviz.data.inputs import pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.models.encoding import EncodedPairs, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.policy import ModelPolicy
from vlviz.ui.runner import SessionRun
from vlviz.ui.session import Session
from vlviz.ui.talk_page import Talk, open_as_talk, open_story, step_outputs

HOSTILE = [
    "<img src=x onerror=alert(1)> a red circle",
    "<video src=v.mp4 autoplay></video> a blue square",
    "<form><input type=password></form> a green triangle",
]
LIVE_TAG = re.compile(r"<\s*(img|video|form|input|script)", re.IGNORECASE)
PUBLIC = ModelPolicy(public=True, allowed=(OFFLINE_SPEC,))


def _opened(link: str) -> Talk:
    """The story the talk page opens with from the link `open_as_talk` wrote."""
    token = re.search(r"story=([\w-]+)", link).group(1)
    return open_story(SimpleNamespace(query_params={"story": token}))


def _told(analysis: EncodedPairs, session: Session | None = None) -> str:
    """The link `open_as_talk` writes for a session that analysed `analysis`."""
    session = session or Session(PUBLIC)
    session.hold(analysis, None)
    return open_as_talk(session)


@pytest.fixture(scope="module")
def hostile() -> EncodedPairs:
    """The scenes with captions that carry HTML, every one of them (the notes quote the worst pair's)."""
    files, captions = sample_files("scenes")
    lines = captions.splitlines()
    lines = [f"{HOSTILE[i % len(HOSTILE)]} {line}" for i, line in enumerate(lines)]
    return encode_pair_set(load_model(OFFLINE_SPEC), pairs_from_uploads(files, "\n".join(lines)))


def test_captions_reach_the_speaker_notes_and_messages_escaped(hostile: EncodedPairs) -> None:
    talk = _opened(_told(hostile))
    texts = [out for outputs in step_outputs(talk).values() for out in outputs if isinstance(out, str)]
    notes = " ".join(step.note for step in talk.steps)
    assert any("<img" in step.note for step in talk.steps)  # the story quotes the captions...
    assert "<video" in notes or "<form" in notes
    assert not [text for text in texts if LIVE_TAG.search(text)]  # ...and the page gets them as text
    assert any("&lt;img src=x onerror=alert(1)&gt;" in text for text in texts)


def test_a_talk_link_never_shows_the_folder_of_the_run_it_tells(hostile: EncodedPairs, tmp_path: Path) -> None:
    folder = tmp_path / "sessions" / ("a" * 32) / "runs" / "run-1"
    folder.mkdir(parents=True)
    trainer = Session(PUBLIC)
    trainer.runner.runs.append(SessionRun(1, "run 1", OFFLINE_SPEC, OFFLINE_SPEC, "scenes", checkpoint=folder / "w"))
    link = _told(EncodedPairs(hostile.pairs, hostile.encoding, "session run 1", []), trainer)
    shutil.rmtree(folder)  # the trainer's tab closed: its files are gone, the link is still held
    with pytest.raises(gr.Error) as refused:
        _opened(link)
    assert "session run 1" in refused.value.message and str(tmp_path) not in refused.value.message
