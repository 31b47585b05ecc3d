"""The talk page (`/talk`): vlviz's story of alignment in six steps, large, offline, driven by the keyboard.

Every step's figures are built once when the page loads (`vlviz.viz.talk.talk_steps`), one tab per step,
so moving between steps is a client-side tab switch; variants (the gap closed, the next word) come from
the session's kept story without recomputing. Step 5 trains live (continual CLIP + SaCo, about a minute
on two cores); when it ends, step 6 shows that run's start and end instead of the untrained model's.

By default the story is the bundled scenes on the offline model. From the app, "Open as a talk" stores
the session's analysed pairs and model under a random token (`vlviz.ui.session.KEPT`) and links to `/talk?story=TOKEN`;
the token is only ever looked up, never used as a path, and stories expire with sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from vlviz.data.inputs import InputError, PairSet, pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.grounding.maps import maps_by_kind, shared_untrained_model
from vlviz.models.encoding import EncodedPairs, VLModel, encode_pair_set
from vlviz.models.loading import GROUNDED_SPEC, OFFLINE_SPEC, ModelUnavailableError, load_model
from vlviz.models.policy import ModelPolicy
from vlviz.training.config import NonFiniteLossError, TrainConfig
from vlviz.training.evaluation import is_evaluation
from vlviz.training.runs import prepare_run
from vlviz.ui.messages import refusal, warn
from vlviz.ui.session import KEPT, SESSIONS, Session, Updates, pairs_state
from vlviz.ui.train_tab import MAX_TRAININGS
from vlviz.viz.html import markdown_text
from vlviz.viz.talk import KEYS, GroundingPanel, TalkInputs, TalkStep, lens_step, talk_html, talk_steps, training_step
from vlviz.viz.views import probe_figures

STEP_KEYS = ["affinity", "gap", "saco", "grounding", "training", "before-after"]
STEP_TITLES = ["1 Affinity", "2 The gap", "3 SaCo", "4 Grounding", "5 Training", "6 Before / after"]
TALK_TRAINING = TrainConfig(steps=120, batch_size=32, lr=1e-4, eval_every=20, losses={"clip": 1.0, "saco": 0.5})
"""The live run of step 5: continual CLIP + SaCo (the Train tab's default demo), about a minute on two cores."""


@dataclass
class Talk:
    """One talk page's story: its steps, the variant each step shows, and what it was built from."""

    steps: list[TalkStep]
    variants: dict[str, int]
    inputs: TalkInputs
    model_spec: str  # what `load_model` loads: a spec, or a session checkpoint's folder (never from a client)
    pairs: PairSet  # the pairs told; the live run trains on the scenes and step 6 shows these pairs

    def step(self, key: str) -> TalkStep | None:
        return next((step for step in self.steps if step.key == key), None)

    def replace_step(self, new: TalkStep) -> None:
        self.steps = [new if step.key == new.key else step for step in self.steps]
        if new.key not in self.variants:
            self.steps.append(new)
        self.variants[new.key] = 0


def build_story(analysis: EncodedPairs | None, model_spec: str) -> Talk:
    """The talk of `analysis` (or of the bundled scenes on the offline model), every figure computed now.

    Step 6 compares an untrained model of the same architecture with the told one until the live run ends.
    """
    model = load_model(model_spec)
    analysis = analysis or encode_pair_set(model, pairs_from_uploads(*sample_files("scenes")))
    pairs = analysis.pairs
    before = shared_untrained_model(model).encode_pairs(pairs.images, pairs.captions) if model.model_cfg else None
    inputs = TalkInputs(
        names=pairs.names, captions=pairs.captions, encoding=analysis.encoding, model_name=analysis.model_name,
        image=model.input_image(pairs.images[0]), before=before, before_name="untrained",
        grounding=grounding_panels(model, pairs) if model_spec == OFFLINE_SPEC else (),
    )  # fmt: skip
    steps = talk_steps(inputs)
    return Talk(steps, {step.key: 0 for step in steps}, inputs, model_spec, pairs)


TALK_MAP_KINDS = ["sparc", "cosine"]  # the kinds step 4's key steps through: read off the encodings, no tower pass


def grounding_panels(model: VLModel, pairs: PairSet) -> list[GroundingPanel]:
    """Step 4's two sides for the offline model: it beside the grounded model, each with its pointing game."""
    panels = []
    for side in (model, load_model(GROUNDED_SPEC)):
        maps, pointing = maps_by_kind(side, pairs, 0, TALK_MAP_KINDS)
        panels.append(GroundingPanel(side.name, side.input_image(pairs.images[0]), maps, pointing))
    return panels


StepOutputs = tuple[Any, Any, str, str]  # a step's message, figure, speaker note and variant name


def step_outputs(talk: Talk) -> dict[str, StepOutputs]:
    """For every step: its message, figure, speaker note and variant name (a message alone when the step is absent).

    The texts carry captions, words and model names, so they go into Markdown escaped (`markdown_text`).
    """
    out: dict[str, StepOutputs] = {}
    for key in STEP_KEYS:
        step = talk.step(key)
        if step is None:
            out[key] = (gr.update(value="This model has no patch tokens: no grounding to show."), None, "", "")
            continue
        variant = talk.variants[key]
        name = _variant_name(step, variant) if len(step.figures) > 1 and step.variant_names[variant] else ""
        out[key] = (f"## {markdown_text(step.message)}", step.figures[variant], markdown_text(step.note), name)
    return out


def open_as_talk(session: Session) -> str:
    """Hand this session's analysed pairs and the model that encoded them to a talk page: a link with a fresh
    random token (the model by the name the analysis kept, so a later change of the model box does not mix)."""
    analysis = session.analyzed("the talk tells the story of the pairs last analyzed.")
    spec = analysis.model_name
    try:
        folder = session.checkpoint(spec)  # a run of this session: the talk loads its folder, never a client's path
        if folder is None:
            session.policy.check(spec)
    except ValueError as error:
        raise refusal(error) from error
    token = KEPT.put(analysis.encoded, str(folder) if folder else spec, session.token)
    return f"[Open the talk of these {len(analysis.pairs)} pairs](talk?story={token}) (in a new tab; the link expires)"


def open_story(request: gr.Request) -> Talk:
    """The story a talk page opens with: the session's pairs when the link carries a known story, else the scenes."""
    token = request.query_params.get("story") if request else None
    stored = KEPT.get(token)
    analysis, spec = stored or (None, OFFLINE_SPEC)
    try:
        talk = build_story(analysis, spec)
    except (ValueError, InputError, ModelUnavailableError) as error:
        raise _page_error(error, spec, analysis.model_name if analysis else spec) from error
    if token and not stored:
        warn("That talk link has expired: this is the built-in story on the scenes.")
    return talk


def _page_error(error: Exception, model_spec: str, model_name: str) -> gr.Error:
    """`error` for the page: a session checkpoint's folder (the spec a talk loads) by its public name ('session
    run 2'), never its path, since whoever holds the link may be another person; escaped, as toasts show HTML."""
    return refusal(str(error).replace(model_spec, model_name))


def _variant_name(step: TalkStep, variant: int) -> str:
    """'2/5: 'red'' as Markdown: a word of a caption, escaped."""
    return f"{variant + 1}/{len(step.figures)}: {markdown_text(step.variant_names[variant])}"


@dataclass(frozen=True)
class StepBoxes:
    """One step's components."""

    message: gr.Markdown
    plot: gr.Plot
    note: gr.Markdown
    variant: gr.Markdown  # the variant's name
    next_variant: gr.Button


class TalkPage:
    """The talk page: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self, policy: ModelPolicy) -> None:
        """Create the page's components (inside its route)."""
        self.talk = pairs_state()  # the `Talk`
        self.session = gr.State(lambda: SESSIONS.new(policy), delete_callback=lambda session: session.close())
        gr.Markdown(
            "# vlviz: how a vision-language model aligns images with text\n"
            "→ / space next step · ← previous · **g** / **w** / **v** next view of a step (the gap, the next word)"
            " · **t** train live · **n** speaker notes",
            elem_classes="talk-keys",
        )
        self.steps: dict[str, StepBoxes] = {}
        with gr.Tabs(elem_id="talk-steps"):
            for key, title in zip(STEP_KEYS, STEP_TITLES, strict=True):
                with gr.Tab(title, id=key, elem_id=f"talk-{key}"):
                    message = gr.Markdown(elem_classes="talk-message", elem_id=f"talk-{key}-message")
                    variant = gr.Markdown(elem_id=f"talk-{key}-variant-name")
                    plot = gr.Plot(show_label=False, elem_id=f"talk-{key}-plot")
                    if key == "training":
                        with gr.Row():
                            self.train = gr.Button("Train (t)", variant="primary", elem_id="talk-train")
                            self.stop = gr.Button("Stop", elem_id="talk-stop")
                        self.train_status = gr.Markdown(elem_id="talk-train-status")
                        self.probe = gr.Plot(show_label=False, elem_id="talk-probe-plot")
                    note = gr.Markdown(elem_classes="talk-note", elem_id=f"talk-{key}-note")
                    button = gr.Button("Next view", elem_id=f"talk-{key}-variant", elem_classes="talk-hidden")
                    self.steps[key] = StepBoxes(message, plot, note, variant, button)
        with gr.Row():
            self.prepare = gr.Button("Prepare a snapshot of the whole talk", scale=1, elem_id="talk-snapshot")
            self.download = gr.File(label="One HTML file: every step, interactive, no server needed",
                                    interactive=False, scale=3, elem_id="talk-snapshot-file")  # fmt: skip
        self.step_outputs = [
            box for boxes in self.steps.values() for box in (boxes.message, boxes.plot, boxes.note, boxes.variant)
        ]
        training, lens = self.steps["training"], self.steps["before-after"]
        self.live_outputs = [training.plot, self.probe, self.train_status, lens.plot, lens.message]

    def open(self, request: gr.Request) -> Updates:
        """Build the story on page load (`open_story`) and show every step."""
        talk = open_story(request)
        return {self.talk: talk} | self._steps(talk)

    def _steps(self, talk: Talk) -> Updates:
        updates: Updates = {}
        for key, (message, figure, note, variant) in step_outputs(talk).items():
            boxes = self.steps[key]
            updates |= {boxes.message: message, boxes.plot: figure, boxes.note: note, boxes.variant: variant}
        return updates

    def next_variant(self, talk: Talk | None, key: str) -> Updates:
        """Show step `key`'s next variant (the gap closed or open, the next word, ...): kept figures, nothing computed."""
        step = talk.step(key) if talk is not None else None
        if step is None:
            return gr.skip()
        talk.variants[key] = (talk.variants[key] + 1) % len(step.figures)
        variant = talk.variants[key]
        return {self.steps[key].plot: step.figures[variant], self.steps[key].variant: _variant_name(step, variant)}

    def train_live(self, talk: Talk | None, session: Session, request: gr.Request) -> Iterator[Updates]:
        """Step 5: a short continual run from the told model, its curves and probe map streamed; then step 6
        shows the told pairs before and after the run."""
        if talk is None:
            raise refusal("The story is still loading.")
        SESSIONS.bind(session, request)
        try:
            run = prepare_run(talk.model_spec, "scenes", TALK_TRAINING, session.runner.run_folder(0))
        except (ValueError, ModelUnavailableError) as error:
            raise _page_error(error, talk.model_spec, talk.inputs.model_name) from error
        training = self.steps["training"]
        records: list[dict] = []
        with session.runner.watching("talk", run):
            try:
                for record in run.records():
                    records.append(record)
                    evaluated = is_evaluation(record)
                    if record["step"] % 5 == 0 or evaluated:
                        curves = training_step(replace(talk.inputs, records=records)).figures[0]
                        probe = probe_figures(**vars(run.probe_measurement(record["step"]))) if evaluated else {}
                        status = f"step {record['step']} / {TALK_TRAINING.steps}"
                        yield {training.plot: curves, self.train_status: status} | (
                            {self.probe: probe["grounding"]} if "grounding" in probe else {}
                        )
            except (NonFiniteLossError, ValueError) as error:
                raise refusal(error) from error
        talk.replace_step(training_step(replace(talk.inputs, records=records)))
        try:
            start = load_model(talk.model_spec)
            trained = load_model(str(run.checkpoint.parent), name="after the run")
        except (ValueError, ModelUnavailableError) as error:
            raise _page_error(error, talk.model_spec, talk.inputs.model_name) from error
        lens = lens_step(
            replace(
                talk.inputs, encoding=encode_pair_set(trained, talk.pairs).encoding, model_name="after the run",
                before=encode_pair_set(start, talk.pairs).encoding, before_name="before the run",
            )
        )  # fmt: skip
        if lens is None:
            yield {self.train_status: f"Done after {records[-1]['step']} steps."}
            return
        talk.replace_step(lens)
        status = f"Done after {records[-1]['step']} steps: step 6 now shows the pairs before and after this run."
        after = self.steps["before-after"]
        yield {
            self.train_status: status,
            after.plot: lens.figures[0],
            after.message: f"## {markdown_text(lens.message)}",
        }


def stop_live(session: Session) -> str:
    """Stop the talk's run after its current step."""
    session.runner.stop()
    return "Stopping…"


def snapshot(talk: Talk | None, session: Session) -> str:
    """The whole talk as one self-contained HTML file (no server, no network), in this session's downloads."""
    if talk is None:
        raise refusal("The story is still loading.")
    path = session.export_folder("talk") / "vlviz-talk.html"
    path.write_text(talk_html(talk.steps), encoding="utf-8")
    return str(path)


KEYS_JS = """
() => {
  if (window.vlvizTalkKeys) return;
  window.vlvizTalkKeys = true;
  const KEYS = __KEYS__;
  const tabs = () => {
    const seen = new Map();
    document.querySelectorAll('#talk-steps button[role="tab"]').forEach(b => {
      if (!seen.has(b.dataset.tabId) && b.offsetParent !== null) seen.set(b.dataset.tabId, b);
    });
    return Array.from(seen.values());
  };
  const current = () => {
    const all = tabs();
    return Math.max(0, all.findIndex(b => b.getAttribute('aria-selected') === 'true'));
  };
  const go = (i) => { const all = tabs(); if (all[i]) all[i].click(); };
  const press = (id) => { const b = document.getElementById(id); if (b) b.click(); };
  document.addEventListener('keydown', (event) => {
    if (!document.getElementById('talk-steps')) return;
    if (['INPUT', 'TEXTAREA', 'SELECT'].includes(event.target.tagName)) return;
    const key = event.key;
    const step = __STEPS__[current()];
    if (KEYS.next.includes(key)) { event.preventDefault(); go(current() + 1); }
    else if (KEYS.previous.includes(key)) { event.preventDefault(); go(current() - 1); }
    else if (KEYS.variant.includes(key)) { press(`talk-${step}-variant`); }
    else if (KEYS.notes.includes(key)) { document.getElementById('talk-steps').classList.toggle('talk-notes'); }
    else if (KEYS.train.includes(key)) { go(__STEPS__.indexOf('training')); press('talk-train'); }
  });
}
"""

FIT_JS = """
() => {
  // Plotly sizes a figure to its container when it draws and on window resizes only. A step drawn in the
  // background (its tab hidden: no width) gets plotly's default 700 px and keeps it, as does a hidden step
  // when the window changes size. So every figure of the steps refits whenever its own width changes,
  // which is when its step is shown: observed from the first switch to its step on (tabs mount lazily).
  if (window.vlvizTalkFit) return;
  window.vlvizTalkFit = true;
  const fit = new ResizeObserver((entries) => {
    for (const {target} of entries) {
      const width = target.clientWidth;
      if (width && target._fullLayout && Math.abs(target._fullLayout.width - width) > 1) {
        window.Plotly.relayout(target, {autosize: true});
      }
    }
  });
  const observe = () => document.querySelectorAll('#talk-steps [data-testid="plotly"]').forEach(el => fit.observe(el));
  document.addEventListener('click', (event) => {
    if (event.target.closest('#talk-steps button[role="tab"]')) requestAnimationFrame(observe);
  });
  observe();
}
"""

PRELOAD_JS = """
async () => {
  // Visit every step once so that each figure is drawn before the talk starts: later switches only show them.
  const buttons = Array.from(document.querySelectorAll('#talk-steps button[role="tab"]'))
    .filter((b, i, all) => b.offsetParent !== null && all.findIndex(c => c.dataset.tabId === b.dataset.tabId) === i);
  for (const b of buttons.slice(1)) { b.click(); await new Promise(r => setTimeout(r, 120)); }
  if (buttons.length) buttons[0].click();
}
"""

TALK_CSS = """
#talk-steps button[role="tab"] { font-size: 20px; }
.talk-message h2 { font-size: 30px; line-height: 1.25; }
.talk-note { display: none; font-size: 20px; background: #fff6d5; border-left: 6px solid #e69f00; padding: 8px 14px; }
#talk-steps.talk-notes .talk-note { display: block; }
.talk-hidden { display: none !important; }
.talk-keys { font-size: 18px; }
"""


def build_talk_page(demo: gr.Blocks, policy: ModelPolicy) -> TalkPage:
    """Add the `/talk` route to `demo`: the six steps, their keys, live training and the snapshot download.

    `policy` is the app's; the talk page loads only the offline model or a story an app session handed over."""
    keys_js = KEYS_JS.replace("__KEYS__", str(KEYS).replace("'", '"')).replace("__STEPS__", str(STEP_KEYS))
    with demo.route("Talk", "/talk") as route:
        page = TalkPage(policy)
        route.load(page.open, None, [page.talk, *page.step_outputs], api_visibility="private").then(
            None, None, None, js=PRELOAD_JS
        )
        route.load(None, None, None, js=keys_js)
        route.load(None, None, None, js=FIT_JS)
        for key, boxes in page.steps.items():
            boxes.next_variant.click(
                page.next_variant, [page.talk, gr.State(key)], [boxes.plot, boxes.variant], api_visibility="private",
                show_progress="hidden",
            )  # fmt: skip
        page.train.click(
            page.train_live, [page.talk, page.session], page.live_outputs, api_visibility="private",
            concurrency_id="train", concurrency_limit=MAX_TRAININGS,
        )  # fmt: skip
        page.stop.click(stop_live, page.session, page.train_status, api_visibility="private", concurrency_limit=None)
        page.prepare.click(snapshot, [page.talk, page.session], page.download, api_visibility="private")
    return page
