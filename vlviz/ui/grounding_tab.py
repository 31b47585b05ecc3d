"""The Grounding tab: where each word of a caption lands on its image (SPARC's token-to-patch weights).

Beside SPARC's weights, a model trained with XMM (`vlviz.losses.xmm`) shows where its fusion head looks for
the word when the word is masked. The tab computes the maps with the model that analysed the pairs and wires
them to its components; `vlviz.viz.pair_grounding` draws them.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from vlviz.data.inputs import MAX_CAPTION_CHARS
from vlviz.grounding.maps import (
    CaptionMaps,
    bundled_scene_score,
    model_caption_maps,
    shared_untrained_model,
    xmm_word_attention,
)
from vlviz.models.encoding import VLModel
from vlviz.ui.agents import open_choices
from vlviz.ui.messages import refusal
from vlviz.ui.session import (
    MODEL_CHOICES,
    VIEW_EVENT,
    Session,
    SessionStates,
    Updates,
    WantedView,
    draw_on_first_view,
)
from vlviz.viz.pair_grounding import Compared, grounding_of, pair_grounding
from vlviz.viz.views import MAP_LABELS

TAB = "Grounding"
UNTRAINED = "untrained"  # `compare`: the untrained model of the same architecture (`shared_untrained_model`)
COMPARE_CHOICES = [("nothing", ""), ("the untrained model (same architecture)", UNTRAINED)]
ABOUT = (
    "Where does each word land? SPARC (Bica et al., ICML 2024) weighs every image patch for every "
    "caption token: similarities min-max normalised over the patches, those below 1/P dropped, the "
    "rest renormalised. Switch to softmax weights or the dense cosine map to see what sparsity changes. "
    "These maps read the tower's last patch tokens, which hold evidence attention gathered from elsewhere; "
    "the occlusion map hides one patch at a time instead and shows where a word's evidence comes from "
    "(one tower pass per patch: slower on large models)."
)


class GroundingTab:
    """The Grounding tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self) -> None:
        """Create the tab's components (inside its gr.Tab)."""
        gr.Markdown(ABOUT)
        with gr.Row():
            self.pair = gr.Dropdown(choices=[], label="Pair", scale=2, elem_id="grounding-pair")
            self.kind = gr.Radio(
                [(label, name) for name, label in MAP_LABELS.items()], value="sparc", label="Map", scale=3,
                elem_id="grounding-kind",
            )  # fmt: skip
        self.words = gr.Radio([], label="Words of the caption: choose one", elem_id="grounding-words")
        with gr.Row():
            self.text = gr.Textbox(
                label="Ground any text in this image instead of its caption (empty: the caption)",
                placeholder="a red circle", scale=4, elem_id="grounding-text",
            )  # fmt: skip
            self.ground_button = gr.Button("Ground", scale=1, elem_id="grounding-run")
        with gr.Row():
            with gr.Column(scale=3):
                self.overlay = gr.Plot(label="The chosen word", elem_id="grounding-overlay")
            with gr.Column(scale=3):
                self.comparison = gr.Plot(
                    label="The chosen word, by the other model", visible=False, elem_id="grounding-compare"
                )
            with gr.Column(scale=3):
                self.xmm = gr.Plot(label="The chosen word, masked: XMM cross-attention", elem_id="grounding-xmm")
                self.xmm_notice = gr.Markdown(elem_id="grounding-xmm-notice")
            with gr.Column(scale=2):
                self.opacity = gr.Slider(
                    0.0, 1.0, value=0.7, step=0.05, label="Heatmap opacity", elem_id="grounding-opacity"
                )
                self.compare = gr.Dropdown(
                    [*COMPARE_CHOICES, *((spec, spec) for spec in MODEL_CHOICES)], value="", allow_custom_value=True,
                    label="Compare with",
                    info="the same pair and word, drawn by a second model: the untrained one is the baseline to beat",
                    elem_id="grounding-compare-with",
                )  # fmt: skip
                open_choices(self.compare)  # any model spec, not only the listed ones
                self.notice = gr.Markdown(elem_id="grounding-notice")
        self.score = gr.Markdown(elem_id="grounding-score")
        self.grid = gr.Plot(label="Every word", elem_id="grounding-grid")
        self.matrix = gr.Plot(label="Token x patch", elem_id="grounding-matrix")
        with gr.Accordion("Data (JSON): words, per-word and per-token maps", open=False):
            self.data = gr.JSON(label="grounding output")
        # The API takes the pair and word as plain numbers: the dropdown and the chips only accept the
        # choices currently on screen, which an API client has never seen.
        with gr.Row(visible=False):
            self.api_pair = gr.Number(precision=0, label="Pair (1-based)")
            self.api_word = gr.Number(precision=0, label="Word (0-based)")
            self.api_run = gr.Button()
        # In the API's order: a new output goes last, so older clients still work.
        self.outputs = [
            self.overlay, self.grid, self.matrix, self.pair, self.words, self.notice, self.xmm, self.xmm_notice,
            self.score, self.comparison, self.data,
        ]  # fmt: skip

    def grounding(
        self,
        pair: int | None = None,
        word: int | None = None,
        kind: str = "sparc",
        opacity: float = 0.7,
        text: str | None = None,
        session: Session | None = None,  # this session (gr.State)
        compare: str | None = None,
    ) -> Updates:
        """Where each word of a caption lands on its image: SPARC's token-to-patch weights (the `grounding` API).

        Works on one pair of the pairs last analyzed, with its caption or any other text, by the model that
        analyzed them (whatever the model box says now: `compare` draws another beside it). Maps cover the
        model's patch grid (h x w patches, row-major, P = h * w); SPARC weights lie in [0, 1] and each
        token's row sums to 1, the cosine map in [-1, 1]. Models without patch tokens (ResNets) have no maps
        and say why in the data.

        Args:
            pair: the pair, 1-based (empty: the first).
            word: the word to show, 0-based among the caption's words (empty: the first content word).
            kind: the map: 'sparc' (min-max over patches, below 1/P dropped, renormalised), 'no-sparsity', 'softmax', 'cosine', 'occlusion' (how much each token's SPARC fine similarity falls when each patch is hidden: where the evidence comes from; one tower pass per patch), or a training-free re-reading of the last image block, each token's cosine with its patch embeddings: 'maskclip' (the value path), 'sclip' (q-q + k-k attention), 'clearclip' (q-q attention, no residual, no FFN), 'naclip' (k-k attention with a Gaussian neighbourhood, no residual, no FFN).
            opacity: the heatmap's opacity over the image, 0 to 1.
            text: ground this text in the pair's image instead of its caption (empty: the caption), at most 1,000 characters.
            compare: draw the chosen word's map of a second model beside it, on the same pair, text and word: 'untrained' (the same architecture freshly initialised, seed 0: the baseline a trained model's map must beat) or a model spec; empty: none.

        Returns:
            [0] the chosen word's map over the image (as the model sees it), plotly figure JSON
            [1] every word's map, plotly JSON
            [2] the token x patch matrix, plotly JSON
            [3] the pair choices (for the browser)
            [4] the word choices: the caption's words with their 0-based indices
            [5] a notice (when a typed text is grounded)
            [6] the XMM cross-attention map of the chosen word, masked, when the model has a trained XMM head (else hidden), plotly JSON
            [7] the XMM notice: what the map shows, or why there is none
            [8] the grounding score on the pairs that are bundled sample scenes, beside an untrained model's (Markdown; empty when none are)
            [9] the comparison: the chosen word's map by the `compare` model (hidden when none), plotly JSON
            [10] the data: model, pair, image, text, kind, grid_size [h, w], words, word (the chosen index), word_maps (words x P), tokens, token_maps (tokens x P), scene_score and untrained_scene_score (per word class, colour and shape: pointing-game and mass-in-mask shares and their chance levels, in [0, 1]; None without scenes), xmm ({available, word_maps (words x P), global_share} or {available, reason}), compare (None, or {model, words, word, word_maps (words x P)} or {model, reason}); with no patch tokens: unavailable (the reason)
        """
        analysis = session.analyzed("the Grounding tab shows their words on their images.")
        pairs = analysis.pairs
        index = 0 if pair is None else int(pair) - 1
        if not 0 <= index < len(pairs):
            raise refusal(f"Pair {pair} does not exist: choose 1 to {len(pairs)}.")
        if text and len(text) > MAX_CAPTION_CHARS:
            raise refusal(f"The text is {len(text)} characters long; texts have at most {MAX_CAPTION_CHARS}.")
        model = session.model_of(analysis)
        caption = text.strip() if text and text.strip() else pairs.captions[index]
        original = pairs.images[index]
        head = grounding_of(model.name, index + 1, pairs.names[index], caption)
        pair_choices = gr.Dropdown(
            choices=[(f"{i + 1}. {name}", i + 1) for i, name in enumerate(pairs.names)], value=index + 1
        )
        if model.patches_unavailable:
            reason = f"No grounding maps for `{model.name}`: {model.patches_unavailable}."
            hidden = gr.Plot(value=None, visible=False)
            return {
                self.overlay: None, self.grid: None, self.matrix: None, self.pair: pair_choices,
                self.words: gr.Radio(choices=[], value=None), self.notice: reason, self.xmm: hidden,
                self.xmm_notice: "", self.score: "", self.comparison: hidden, self.data: head | {"unavailable": reason},
            }  # fmt: skip
        maps = model_caption_maps(model, original, caption, kind)
        if not maps.words:
            raise refusal(f"{caption!r} has no words to ground: type a word or a phrase.")
        view = pair_grounding(
            head, maps, model.input_image(original), word, opacity, typed=caption != pairs.captions[index],
            xmm=xmm_word_attention(model, original, caption), grid_size=model.grid_size,
            score=bundled_scene_score(model, pairs, kind), compared=self._compared(model, compare, session, original, caption, kind),
        )  # fmt: skip
        return {
            self.overlay: view.overlay,
            self.grid: view.grid,
            self.matrix: view.matrix,
            self.pair: pair_choices,
            self.words: gr.Radio(choices=[(w, i) for i, w in enumerate(view.words)], value=view.word),
            self.notice: view.notice,
            self.xmm: gr.Plot(value=view.xmm, visible=view.xmm is not None),
            self.xmm_notice: view.xmm_notice,
            self.score: view.score,
            self.comparison: gr.Plot(value=view.comparison, visible=view.comparison is not None),
            self.data: view.data,
        }

    def _compared(
        self, model: VLModel, compare: str | None, session: Session, original: Image.Image, caption: str, kind: str
    ) -> Compared | None:
        """The `compare` model's maps of the same image and text (None: no comparison asked for)."""
        if not compare:
            return None
        try:
            other = shared_untrained_model(model) if compare == UNTRAINED else session.model_for(compare)[0]
        except ValueError as error:  # an architecture without a known config has no untrained twin
            raise refusal(error) from error
        if other.patches_unavailable:
            return Compared(other.name, None, None, f"No map to compare: {other.patches_unavailable}.")
        maps: CaptionMaps = model_caption_maps(other, original, caption, kind)
        return Compared(other.name, maps, other.input_image(original))

    def ground_first_word(self, pair: int | None, *settings: Any) -> Updates:
        """`grounding` for a new pair or text: its words change, so the choice goes back to the first content word.

        `settings` are `grounding`'s arguments after `word`: kind, opacity, text, session, compare.
        """
        return self.grounding(pair, None, *settings)

    def first_view(
        self, kind: str, opacity: float, text: str | None, session: Session, compare: str | None,
        wanted: WantedView | None,
    ) -> Updates:  # fmt: skip
        """Ground the first pair of a new analysis, or the pair and word a view link asks for (`wanted`)."""
        pair, word = (wanted.pair, wanted.word) if wanted else (None, None)
        analysis = session.analysis
        if pair is not None and (analysis is None or pair > len(analysis.pairs)):
            pair, word = None, None  # a link to a pair these pairs do not have: the first, as always
        return self.grounding(pair, word, kind, opacity, text, session, compare)


def build_grounding_tab(tab: gr.Tab, states: SessionStates, wanted: gr.State) -> GroundingTab:
    """Create the tab's components and wire them to `GroundingTab.grounding`; it grounds the first pair of each new
    analysis (or the pair and word in `wanted`, a view link's) the first time the tab shows it."""
    view = GroundingTab()
    shown = dict(outputs=view.outputs, **VIEW_EVENT)
    common = [view.kind, view.opacity, view.text, states.session, view.compare]
    view.api_run.click(view.grounding, [view.api_pair, view.api_word, *common], **shown, api_name="grounding")
    for event in (view.words.input, view.kind.input, view.opacity.release, view.compare.input):
        event(view.grounding, [view.pair, view.words, *common], **shown, api_visibility="private")
    # A new pair or text has new words: the choice goes back to the first content word.
    for event in (view.pair.input, view.text.submit, view.ground_button.click):
        event(view.ground_first_word, [view.pair, *common], **shown, api_visibility="private")
    draw_on_first_view(view.first_view, tab, TAB, states, [*common, wanted], view.outputs, VIEW_EVENT)
    return view
