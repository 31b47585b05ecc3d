"""Talk mode's story: six steps, each one message, one large figure (with variants a key switches) and a
speaker note, built once from an analysis so that moving between steps draws nothing new.

The same steps feed the app's talk page and `talk_html`, one self-contained HTML file of the whole talk
(plotly.js inlined, no server, no network) for slides and for sharing afterwards. No gradio, no model
calls: encodings, images as the model sees them and a run's records in.
"""

from __future__ import annotations

import html
import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from vlviz.embedding.space import LayoutSettings, alignment_figures, close_modality_gap
from vlviz.grounding.maps import CaptionMaps, caption_maps
from vlviz.metrics.affinity import affinity_report
from vlviz.models.encoding import PairEncoding
from vlviz.viz.figures import display_image, grounding_grid, grounding_overlay, training_curves
from vlviz.viz.lens_view import lens_view
from vlviz.viz.style import TEMPLATE
from vlviz.viz.views import MAP_LABELS, OVERLAY_SIDE, affinity_view, consistency_view, embedding_view

TALK_FONT = 20  # base font size of every talk figure: readable from the back of a room
TALK_HEIGHT = 620
TALK_PAIRS = 24  # pairs the affinity and consistency heatmaps show: more are unreadable on a projector
TRAINING_KEYS = (["total_loss"], ["image_to_caption_r1", "text_to_image_r1", "mean_abs_inconsistency"])
KEYS = {  # the talk's keyboard, the page and the snapshot alike
    "next": ["ArrowRight", "PageDown", " "],
    "previous": ["ArrowLeft", "PageUp"],
    "variant": ["v", "g", "w", "m"],  # toggle the gap (g), cycle words (w) or methods (m): all cycle the variants
    "notes": ["n"],
    "train": ["t"],
}


@dataclass(frozen=True)
class TalkStep:
    """One step of the talk: a message on screen, figures (variant 0 first) and what the speaker says."""

    key: str  # "affinity", "gap", "saco", "grounding", "training", "before-after"
    title: str
    message: str  # one sentence, shown large
    note: str  # the speaker's note, hidden until asked for
    figures: list[go.Figure]  # one or more variants: the gap open and closed, one per word, ...
    variant_names: list[str] = field(default_factory=list)  # what each variant is, e.g. "gap closed", "'red'"


@dataclass(frozen=True)
class GroundingPanel:
    """One model's maps of the grounding pair by each map kind, and its colour-word pointing game per kind on the
    bundled scenes among the pairs (None: no bundled scene, or the kind does not apply to the model)."""

    name: str
    image: np.ndarray  # the pair's image as this model sees it
    maps: dict[str, CaptionMaps]  # map kind (`MAP_LABELS`) -> the caption's maps, SPARC's weights first
    pointing: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TalkInputs:
    """What the story is told with: the pairs, one model's encoding of them, and optional extras.

    `image` is the grounding pair's image as the model sees it; `grounding` the models step 4 shows side by
    side, each by several map kinds with its pointing score (default: the told model's SPARC weights alone);
    `records` a training run's records (the snapshot's step 5); `before` the run's start-model encoding of the
    pairs, with `encoding` its end (step 6).
    """

    names: Sequence[str]
    captions: Sequence[str]
    encoding: PairEncoding
    model_name: str
    image: np.ndarray | None = None
    grounding_pair: int = 0
    grounding: Sequence[GroundingPanel] = ()
    records: Sequence[dict] | None = None
    before: PairEncoding | None = None
    before_name: str = "start"


def talk_figure(fig: go.Figure, height: int = TALK_HEIGHT) -> go.Figure:
    """Large type and high contrast for a projector: the same figure, restyled (a copy)."""
    big = go.Figure(fig)
    big.update_layout(
        template=TEMPLATE,
        font={"size": TALK_FONT, "color": "#111"},
        title={"font": {"size": TALK_FONT + 6}},
        height=height,
        paper_bgcolor="white",
        plot_bgcolor="white",
        margin={"l": 20, "r": 20, "t": 80, "b": 20},
    )
    return big


def _affinity_step(inputs: TalkInputs) -> TalkStep:
    encoding, n = inputs.encoding, len(inputs.names)
    shown = min(n, TALK_PAIRS)
    report = affinity_report(encoding.image_features[:shown].cpu(), encoding.text_features[:shown].cpu(),
                             encoding.logit_scale, encoding.logit_bias)  # fmt: skip
    view = affinity_view(report, inputs.names[:shown], inputs.captions[:shown], fixed_range=True)
    figures = alignment_figures(encoding.image_features.float().cpu(), encoding.text_features.float().cpu())
    return TalkStep(
        "affinity",
        "Does each image find its caption?",
        "Each image against each caption: a perfect model lights up the diagonal and nothing else.",
        f"{inputs.model_name} on {n} pairs: image→text R@1 {figures.image_to_text_r1:.2f}, text→image R@1 "
        f"{figures.text_to_image_r1:.2f}; matched pairs average cosine {figures.matched_cosine:.2f} against "
        f"{figures.unmatched_cosine:.2f} for unmatched ones. Point at a bright off-diagonal cell: two captions "
        "the model cannot tell apart." + (f" (The first {shown} of {n} pairs are shown.)" if shown < n else ""),
        [talk_figure(view.image_text)],
        ["cosine"],
    )


def _gap_step(inputs: TalkInputs) -> TalkStep:
    images, texts = inputs.encoding.image_features.float().cpu(), inputs.encoding.text_features.float().cpu()
    views = [
        embedding_view(images, texts, inputs.names, inputs.captions, LayoutSettings("pca"), close_gap=closed)
        for closed in (False, True)
    ]
    before, after = alignment_figures(images, texts), alignment_figures(*close_modality_gap(images, texts))
    return TalkStep(
        "gap",
        "The modality gap",
        "Images and captions sit in two separate regions of the joint space: the modality gap.",
        f"The gap (distance between the two centroids) is {before.gap:.2f}. Press g to subtract it: points of "
        f"one pair come together, matched cosine {before.matched_cosine:.2f} → {after.matched_cosine:.2f}, while "
        f"retrieval barely moves (image→text R@1 {before.image_to_text_r1:.2f} → {after.image_to_text_r1:.2f}): "
        "the gap is a shift, not a failure to align.",
        [talk_figure(view.figure) for view in views],
        ["as trained", "gap closed"],
    )


def _saco_step(inputs: TalkInputs) -> TalkStep:
    images, texts = inputs.encoding.image_features.float().cpu(), inputs.encoding.text_features.float().cpu()
    view = consistency_view(images, texts, inputs.names, inputs.captions, k=5, max_heatmap=TALK_PAIRS)
    top = view.summary.top_pairs
    worst = ""
    if len(top.first):
        i, j = int(top.first[0]), int(top.second[0])
        worst = (
            f" The worst pair: {i + 1} “{inputs.captions[i]}” and {j + 1} “{inputs.captions[j]}”: images at cosine "
            f"{float(top.image_affinity[0]):.2f}, captions at {float(top.text_affinity[0]):.2f}."
        )
    return TalkStep(
        "saco",
        "Images alike, captions not (SaCo)",
        "Two images that look alike should have captions that read alike: SaCo measures where they do not.",
        f"Each point is a pair of samples: image-image cosine against caption-caption cosine. On the diagonal "
        f"they agree; far from it the model is inconsistent. Press v for the |A_I − A_T| heatmap.{worst}",
        [talk_figure(view.scatter), talk_figure(view.inconsistency_heatmap)],
        ["A_T against A_I", "|A_I − A_T|"],
    )


def every_method_figure(
    panel: GroundingPanel, word: int, columns: int = 4, refused: Mapping[str, str] | None = None
) -> go.Figure:
    """One word by every map kind of `panel` side by side, each titled with its pointing game on the bundled scenes:
    the Grounding tab's "every method" view and the talk's key through the methods, from the same panel.

    `refused`: kinds the model cannot draw (or the view would not afford) and why, each in a panel of its own after
    the drawn ones, saying so, so that a missing method reads as refused rather than forgotten."""
    kinds, refused = list(panel.maps), refused or {}
    words = panel.maps[kinds[0]].words
    titles = [
        MAP_LABELS[k] + ("" if panel.pointing.get(k) is None else f" · pointing {panel.pointing[k]:.2f}") for k in kinds
    ] + [f"{MAP_LABELS[k]} · not drawn" for k in refused]
    stack = np.stack([panel.maps[k].word_maps[word].numpy() for k in kinds])
    image = display_image(panel.image, OVERLAY_SIDE)
    title = f"'{words[word]}' by every method · {panel.name} (pointing: colour words on the bundled scenes loaded)"
    figure = grounding_grid(image, stack, titles, columns=min(columns, len(titles)), title=title)
    for cell, reason in enumerate(refused.values(), start=len(kinds)):  # a few refusals, one text each
        # under the cell's title, on the page: plotly does not lay out the axes of a cell without traces
        below = figure.layout.annotations[cell]
        figure.add_annotation(
            text="<br>".join(textwrap.wrap(html.escape(reason), 28)), x=below.x, y=below.y, xref="paper",
            yref="paper", xanchor="center", yanchor="top", yshift=-20, showarrow=False, font={"size": 10},
        )  # fmt: skip
    return figure


def _overlay(maps: CaptionMaps, image: np.ndarray, word: int, label: str) -> go.Figure:
    return grounding_overlay(display_image(image, OVERLAY_SIDE), maps.word_maps[word].numpy(),
                             f"{label}: '{maps.words[word]}'", 0.7, "weight")  # fmt: skip


def _panel_title(panel: GroundingPanel, kind: str) -> str:
    """'vlviz-scenes-grounded<br>SPARC weights · pointing 0.82': what each side of step 4 shows, with its score, on
    two lines so that two sides' titles fit beside each other."""
    score = panel.pointing.get(kind)
    return f"{panel.name}<br>{MAP_LABELS[kind]}" + ("" if score is None else f" · pointing {score:.2f}")


def _side_by_side(panels: list[go.Figure], title: str) -> go.Figure:
    if len(panels) == 1:
        return talk_figure(panels[0])  # its own title: the model, the kind, its score and the word
    both = make_subplots(rows=1, cols=len(panels), subplot_titles=[p.layout.title.text for p in panels])
    for col, panel in enumerate(panels, start=1):
        for trace in panel.data:
            both.add_trace(trace.update(showscale=False) if "showscale" in trace else trace, row=1, col=col)
    both.update_xaxes(visible=False)
    both.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    both.update_layout(title={"text": title, "x": 0.5})
    return talk_figure(both).update_layout(margin={"t": 140})  # room for the sides' two-line titles


def _grounding_step(inputs: TalkInputs) -> TalkStep | None:
    """Step 4: the first content word by each map kind (m), then every other word by the first kind (w); the
    models of `inputs.grounding` side by side, each title with its pointing game on the bundled scenes."""
    if inputs.image is None or inputs.encoding.patch_features is None:
        return None
    row = inputs.grounding_pair
    panels = list(inputs.grounding) or [
        GroundingPanel(inputs.model_name, inputs.image, {"sparc": caption_maps(inputs.encoding, row=row)})
    ]
    first = panels[0].maps[next(iter(panels[0].maps))]
    panels = [p for p in panels if all(m.words == first.words for m in p.maps.values())]  # the same caption's words
    kinds = [kind for kind in panels[0].maps if all(kind in p.maps for p in panels)]
    order = [first.first_word, *(w for w in range(len(first.words)) if w != first.first_word)]
    shown = [(order[0], kind) for kind in kinds] + [(word, kinds[0]) for word in order[1:]]
    figures = []
    for word, kind in shown:
        overlays = [_overlay(p.maps[kind], p.image, word, _panel_title(p, kind)) for p in panels]
        names = " | ".join(p.name for p in panels)
        figures.append(_side_by_side(overlays, f"{names}: '{first.words[word]}' · {MAP_LABELS[kind]}"))
    beside = f" beside {', '.join(p.name for p in panels[1:])}" if len(panels) > 1 else ""
    return TalkStep(
        "grounding",
        "Where does each word land?",
        f"Each word's map over the image's patches: {panels[0].name}{beside}.",
        f"Caption {row + 1}: “{inputs.captions[row]}”. Press m to step through the map methods for this word, w "
        "to move to the next word. Each title carries the model's pointing game for colour words on the bundled "
        "scenes among these pairs: how often a word's peak patch lies on the object it names. A CLIP-trained "
        "model's tokens pass every block, and attention moves the evidence off the objects; the grounded model "
        "reads both towers before any block (docs/grounding.md).",
        figures,
        [f"'{first.words[word]}', {MAP_LABELS[kind]}" for word, kind in shown],
    )


def training_curves_figure(records: Sequence[dict]) -> go.Figure:
    """A run's loss (top) and its R@1 and inconsistency (bottom) against the step: one figure for the room."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=["Loss", "Retrieval (R@1) and inconsistency"])  # fmt: skip
    for row, keys in enumerate(TRAINING_KEYS, start=1):
        for trace in training_curves(records, keys, "").data:
            fig.add_trace(trace, row=row, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title={"text": "Training live", "x": 0.5})
    return talk_figure(fig)


def training_step(inputs: TalkInputs) -> TalkStep:
    """Step 5: a run's curves (`inputs.records`), or the invitation to start one."""
    note = ("Press t to train: continual CLIP + SaCo on the scenes for about a minute; loss, R@1, inconsistency "
            "and the probe's word map move live.")  # fmt: skip
    if inputs.records:
        figure, name = training_curves_figure(inputs.records), "loss, R@1 and inconsistency"
    else:
        figure = talk_figure(go.Figure(layout={"title": {"text": "Press t to train live", "x": 0.5}}))
        name = "waiting for a run"
    return TalkStep("training", "Training it live", "Continual pre-training, watched as it happens.", note,
                    [figure], [name])  # fmt: skip


def lens_step(inputs: TalkInputs) -> TalkStep | None:
    """Step 6: what changed from `inputs.before` to `inputs.encoding` (None without a before)."""
    if inputs.before is None:
        return None
    view = lens_view(inputs.before, inputs.encoding, inputs.names, inputs.captions,
                     labels=(inputs.before_name, inputs.model_name), pair=inputs.grounding_pair)  # fmt: skip
    summary = view.summary
    figures = [view.movement, view.affinity_difference, view.inconsistency_difference]
    names = ["movement", "Δ image-text cosine", "Δ inconsistency"]
    if view.grounding_difference is not None:
        figures.append(view.grounding_difference)
        names.append("Δ word maps")
    moved = ""
    if len(view.moved_most):
        top = view.moved_most.iloc[0]
        moved = f" Moved most: pair {top['pair']}, image→text rank {top['image→text rank']}."
    return TalkStep(
        "before-after",
        "Before and after",
        f"What training changed: every pair from {inputs.before_name} to {inputs.model_name}.",
        f"Image→text R@1 {summary['image_to_text_r1_before']:.2f} → {summary['image_to_text_r1_after']:.2f}; "
        f"mean inconsistency {summary['mean_inconsistency_before']:.3f} → "
        f"{summary['mean_inconsistency_after']:.3f}.{moved} Press v for the difference heatmaps.",
        [talk_figure(f) for f in figures],
        names,
    )


def talk_steps(inputs: TalkInputs) -> list[TalkStep]:
    """The story's steps in order; grounding without patch tokens and before/after without a start are left out."""
    steps = [
        _affinity_step(inputs),
        _gap_step(inputs),
        _saco_step(inputs),
        _grounding_step(inputs),
        training_step(inputs),
        lens_step(inputs),
    ]
    return [step for step in steps if step is not None]


# ------------------------------------------------------------------------------------- snapshot

_STYLE = """
body{margin:0;font-family:system-ui,sans-serif;background:#fff;color:#111}
header{display:flex;justify-content:space-between;align-items:baseline;padding:16px 32px;border-bottom:3px solid #111}
header h1{margin:0;font-size:34px} #position{font-size:22px}
section{display:none;padding:8px 32px} section.current{display:block}
.message{font-size:28px;margin:12px 0} .variant{display:none} .variant.current{display:block}
.variant-name{font-size:18px;color:#444} .note{display:none;font-size:20px;background:#fff6d5;padding:12px;
border-left:6px solid #e69f00} body.notes .note{display:block}
footer{position:fixed;bottom:0;left:0;right:0;padding:8px 32px;font-size:16px;background:#f2f2f2}
"""

_SCRIPT = """
const KEYS = __KEYS__;
const steps = Array.from(document.querySelectorAll('section'));
let step = 0;
function variants(s) { return Array.from(steps[s].querySelectorAll('.variant')); }
function show(s, v) {
  step = Math.max(0, Math.min(steps.length - 1, s));
  steps.forEach((el, i) => el.classList.toggle('current', i === step));
  const all = variants(step);
  const current = v === undefined ? Math.max(0, all.findIndex(el => el.classList.contains('current'))) : v;
  all.forEach((el, i) => el.classList.toggle('current', i === current));
  const name = all[current].dataset.name;
  steps[step].querySelector('.variant-name').textContent = all.length > 1 ? `${current + 1}/${all.length}: ${name}` : '';
  document.getElementById('position').textContent = `${step + 1} / ${steps.length}`;
  document.body.dataset.step = steps[step].dataset.key;
  document.body.dataset.variant = String(current);
  all[current].querySelectorAll('.js-plotly-plot').forEach(plot => Plotly.Plots.resize(plot));
}
document.addEventListener('keydown', event => {
  const key = event.key;
  if (KEYS.next.includes(key)) { event.preventDefault(); show(step + 1); }
  else if (KEYS.previous.includes(key)) { event.preventDefault(); show(step - 1); }
  else if (KEYS.variant.includes(key)) {
    const all = variants(step);
    const current = all.findIndex(el => el.classList.contains('current'));
    show(step, (current + 1) % all.length);
  } else if (KEYS.notes.includes(key)) { document.body.classList.toggle('notes'); }
});
show(0);
"""


def talk_html(steps: Sequence[TalkStep], title: str = "vlviz talk") -> str:
    """The whole talk as one self-contained HTML file: every step and variant, interactive, keyboard-driven.

    Keys: → / PageDown / space next, ← / PageUp previous, v (g, w) next variant, n speaker notes.
    All text is escaped; figures go in as JSON and are drawn by the inlined plotly.js.
    """
    sections = []
    for number, step in enumerate(steps, start=1):
        variants = []
        for index, figure in enumerate(step.figures):
            name = step.variant_names[index] if index < len(step.variant_names) else f"{index + 1}"
            plot = figure.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True},
                                  default_width="100%", default_height=f"{TALK_HEIGHT}px")  # fmt: skip
            variants.append(f'<div class="variant" data-name="{html.escape(name)}">{plot}</div>')
        sections.append(
            f'<section data-key="{html.escape(step.key)}"><h2>{number}. {html.escape(step.title)}</h2>'
            f'<p class="message">{html.escape(step.message)}</p><div class="variant-name"></div>'
            f'{"".join(variants)}<p class="note">{html.escape(step.note)}</p></section>'
        )
    keys = {action: keys for action, keys in KEYS.items() if action != "train"}  # nothing trains without a server
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n<style>{_STYLE}</style></head>\n'
        f'<body><header><h1>{html.escape(title)}</h1><span id="position"></span></header>\n'
        + "\n".join(sections)
        + "\n<footer>→ next · ← previous · v / g / w next view of this step · n speaker notes</footer>\n"
        f"<script>{_SCRIPT.replace('__KEYS__', json.dumps(keys))}</script></body></html>\n"
    )
