"""Talk mode's story and its snapshot: the steps carry the core's numbers, the file works alone in Chromium."""

from __future__ import annotations

import copy
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from tests.conftest import SCENE_CAPTIONS, SCENES_DIR
from vlviz.models.encoding import VLModel
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.viz.talk import TalkInputs, TalkStep, talk_html, talk_steps

STEPS = ["affinity", "gap", "saco", "grounding", "training", "before-after"]


@pytest.fixture(scope="module")
def inputs() -> TalkInputs:
    start = load_model(OFFLINE_SPEC)
    moved, generator = copy.deepcopy(start.model), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    trained = VLModel("moved", moved, start.preprocess, start.tokenizer, start.device, name="trained")
    files = sorted(SCENE_CAPTIONS)[:8]
    images = [Image.open(SCENES_DIR / f).convert("RGB") for f in files]
    captions = [SCENE_CAPTIONS[f] for f in files]
    captions[1] = "<script>alert(1)</script> a red circle"  # user text must stay text in the snapshot
    records = [{"step": s, "total_loss": 2.0 - s / 10, "image_to_caption_r1": s / 10} for s in range(10)]
    return TalkInputs(
        names=files, captions=captions, encoding=trained.encode_pairs(images, captions), model_name="trained",
        image=trained.input_image(images[0]), records=records,
        before=start.encode_pairs(images, captions), before_name="vlviz-scenes",
    )  # fmt: skip


def test_the_story_has_its_six_steps_with_their_variants(inputs: TalkInputs) -> None:
    steps = talk_steps(inputs)
    assert [step.key for step in steps] == STEPS
    by_key = {step.key: step for step in steps}
    assert by_key["gap"].variant_names == ["as trained", "gap closed"]
    words = inputs.captions[0].split()
    assert len(by_key["grounding"].figures) == len(words)  # one variant per word, the first content word first
    assert by_key["grounding"].variant_names[0] != "'a'"
    assert len(by_key["training"].figures) == 1 and len(by_key["before-after"].figures) == 4
    assert all(step.message and step.note and step.figures for step in steps)
    assert all(fig.layout.font.size >= 20 for step in steps for fig in step.figures)  # readable on a projector
    assert "R@1" in by_key["affinity"].note


def test_steps_without_their_inputs_are_left_out(inputs: TalkInputs) -> None:
    bare = TalkInputs(inputs.names, inputs.captions, inputs.encoding, "trained")
    keys = [step.key for step in talk_steps(bare)]
    assert keys == ["affinity", "gap", "saco", "training"]


def test_the_snapshot_walks_by_keyboard_from_disk_with_no_network(
    inputs: TalkInputs, browser: object, tmp_path: Path
) -> None:
    steps = talk_steps(inputs)
    page_html = talk_html(steps)
    assert "<script>alert(1)" not in page_html  # \u003c-encoded in the figures' JSON
    step = TalkStep("x", "<script>alert(2)</script>", "m", "n", [go.Figure()], ["<b>"])
    assert "&lt;script&gt;alert(2)" in talk_html([step]) and "<script>alert(2)" not in talk_html([step])
    path = tmp_path / "talk.html"
    path.write_text(page_html, encoding="utf-8")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    page.goto(path.as_uri())
    for index, step in enumerate(steps):
        assert page.evaluate("document.body.dataset.step") == step.key
        drawn = page.locator("section.current .variant.current .js-plotly-plot .main-svg").first
        assert drawn.is_visible()
        if len(step.figures) > 1:
            page.keyboard.press("v")
            assert page.evaluate("document.body.dataset.variant") == "1"
        if index < len(steps) - 1:
            page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("document.body.dataset.step") == steps[-2].key
    page.keyboard.press("n")
    assert page.locator("section.current .note").is_visible()
    assert all(url.startswith("file://") for url in requests)  # nothing fetched from anywhere
    context.close()


def test_the_grounding_step_shows_two_models_by_each_method_with_their_pointing(inputs: TalkInputs) -> None:
    from dataclasses import replace

    from vlviz.grounding.maps import caption_maps
    from vlviz.viz.talk import GroundingPanel, every_method_figure

    maps = {kind: caption_maps(inputs.encoding, kind=kind) for kind in ("sparc", "cosine", "softmax")}
    before = {kind: caption_maps(inputs.before, kind=kind) for kind in ("sparc", "cosine")}
    panels = [
        GroundingPanel("vlviz-scenes", inputs.image, before, {"sparc": 0.21, "cosine": None}),
        GroundingPanel("grounded", inputs.image, maps, {"sparc": 0.82, "cosine": 0.5, "softmax": 0.4}),
    ]
    step = {s.key: s for s in talk_steps(replace(inputs, grounding=panels))}["grounding"]
    words = maps["sparc"].words
    assert len(step.figures) == 2 + len(words) - 1  # the first word by both shared kinds, then the other words
    assert step.variant_names[:2] == [f"'{words[maps['sparc'].first_word]}', SPARC weights",
                                      f"'{words[maps['sparc'].first_word]}', dense cosine map"]  # fmt: skip
    titles = [a.text for a in step.figures[0].layout.annotations]
    first = words[maps["sparc"].first_word]
    assert titles == [f"vlviz-scenes<br>SPARC weights · pointing 0.21: '{first}'",
                      f"grounded<br>SPARC weights · pointing 0.82: '{first}'"]  # fmt: skip
    assert "vlviz-scenes beside grounded" in step.message or "beside grounded" in step.message
    grid = every_method_figure(panels[1], maps["sparc"].first_word)
    assert [a.text for a in grid.layout.annotations][:3] == [
        "SPARC weights · pointing 0.82", "dense cosine map · pointing 0.50", "softmax weights (the paper's ablation) · pointing 0.40",
    ]  # fmt: skip
