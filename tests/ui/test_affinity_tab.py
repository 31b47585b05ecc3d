"""The Affinity tab's outputs without a server: what reaches its Markdown."""

from __future__ import annotations

import gradio as gr

from vlviz.data.inputs import pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.models.encoding import EncodedPairs, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.ui.affinity_tab import VALUE_KINDS, AffinityTab
from vlviz.ui.session import SessionStates


def test_notices_naming_files_reach_the_page_escaped() -> None:
    """A file name is the uploader's text: in main, `<img src=x onerror=...>.png` drew (and fetched) an image."""
    scenes = encode_pair_set(load_model(OFFLINE_SPEC), pairs_from_uploads(*sample_files("scenes")))
    notice = "<img src=x onerror=alert(1)>.png was 4000x3000, downscaled to 1024x768"
    analysis = EncodedPairs(scenes.pairs, scenes.encoding, scenes.model_name, [notice])
    with gr.Blocks():  # the tab's components; its callbacks' updates name them
        tab = AffinityTab(gr.Markdown(), SessionStates(gr.State(), gr.State(), gr.State()))
    message = tab.shown(analysis, "", VALUE_KINDS[0])[tab.notices]
    assert message.startswith("- &lt;img src=x onerror=alert(1)&gt;.png was 4000x3000") and "<" not in message
