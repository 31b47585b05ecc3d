"""The Grounding tab: where each word of a caption lands on its image (SPARC's token-to-patch weights).

Beside SPARC's weights, a model trained with XMM (`vlviz.losses.xmm`) shows where its fusion head looks for
the word when the word is masked. The every-method view draws the chosen word by each map method side by side,
each with its pointing game on the bundled scenes among the pairs; the annotations view scores the model on the
user's own annotated images (COCO instances or masks). The tab computes the maps with the model that analysed
the pairs and wires them to its components; `vlviz.viz.pair_grounding` and `vlviz.viz.annotation_view` draw them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from vlviz.data.annotations import unpack_uploads
from vlviz.data.inputs import MAX_CAPTION_CHARS, MAX_REQUEST_PIXELS, InputError
from vlviz.grounding.annotations import annotation_grounding
from vlviz.grounding.maps import (
    OCCLUSION,
    CaptionMaps,
    bundled_pointing,
    bundled_rows,
    bundled_scene_score,
    model_caption_maps,
    shared_untrained_model,
    xmm_word_attention,
)
from vlviz.models.encoding import VLModel
from vlviz.ui.agents import accept_urls, fetch, open_choices, uploaded_file
from vlviz.ui.messages import refusal
from vlviz.ui.session import (
    ANALYSIS_EVENT,
    MODEL_CHOICES,
    VIEW_EVENT,
    Analysis,
    Session,
    SessionStates,
    Updates,
    WantedView,
    draw_on_first_view,
)
from vlviz.viz.annotation_view import annotation_view, write_annotation_csv
from vlviz.viz.pair_grounding import Compared, every_method_view, grounding_of, pair_grounding
from vlviz.viz.talk import GroundingPanel
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
EVERY_METHOD_KINDS = [kind for kind in MAP_LABELS if kind not in ("no-sparsity", "softmax", OCCLUSION)] + [OCCLUSION]
"""The every-method view's panels, in this order: every map kind but SPARC's two ablations (their peaks, so their
pointing games, are SPARC's own), the slowest last; a kind the model refuses says why in its panel."""
OCCLUSION_BUDGET = 4_000_000_000
"""Image-tower passes times the tower's parameters the every-method view spends on occlusion (one pass per patch, of
the pair and each bundled scene): the offline models' 24 scenes take 1.4e9 (about 4 s on two cores); a ViT-B/16
takes 1.7e10 for the pair alone, so there it says to choose the occlusion map on its own instead."""
ANNOTATION_KINDS = [kind for kind in MAP_LABELS if kind != OCCLUSION]
"""Methods the annotations view offers: occlusion's pass per patch and object is for the command line."""
DEFAULT_ANNOTATION_KINDS = ["sparc", "cosine"]  # read off the encodings: every model with patch tokens draws them
MAX_ANNOTATED_IMAGES = 100
"""Annotated images one upload scores (the first, in the file's order); `eval-grounding --coco` scores any number."""


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
        with gr.Accordion("Every method: the chosen word by each map method", open=False):
            self.every_on = gr.Checkbox(
                False, label="Draw the chosen word by every method (slower: each method's pointing game on the "
                "bundled scenes is scored once per model)", elem_id="grounding-every-on",
            )  # fmt: skip
            self.every_plot = gr.Plot(label="The chosen word, by every method", elem_id="grounding-every")
            self.every_notice = gr.Markdown(elem_id="grounding-every-notice")
            self.every_data = gr.JSON(label="every method output", visible=False)
        with gr.Accordion("Score on your own annotated images (COCO instances or masks)", open=False):
            gr.Markdown(
                "The pointing game on your images: each annotated object's category name is read in "
                "'a photo of a {}.', and its map scored against the object's mask, per method and per category, "
                f"beside the untrained model, by the model that analyzed the pairs. The first {MAX_ANNOTATED_IMAGES} "
                "annotated images are scored (`python -m vlviz eval-grounding --coco` scores any number)."
            )
            with gr.Row():
                self.annotations = gr.File(
                    label="Annotations: a COCO instances .json, or a masks labels table (.csv or .json)",
                    file_types=[".json", ".csv"], elem_id="grounding-annotations-file",
                )  # fmt: skip
                self.annotated_images = accept_urls(gr.File(
                    label="The annotated images, or a .zip of them", file_count="multiple",
                    elem_id="grounding-annotations-images",
                ))  # fmt: skip
                self.masks = accept_urls(gr.File(
                    label="Masks, with a labels table: PNG files (not black: the object) or a .zip",
                    file_count="multiple", elem_id="grounding-annotations-masks",
                ))  # fmt: skip
            self.annotation_kinds = gr.CheckboxGroup(
                [(MAP_LABELS[kind], kind) for kind in ANNOTATION_KINDS], value=DEFAULT_ANNOTATION_KINDS,
                label="Methods", elem_id="grounding-annotations-kinds",
            )  # fmt: skip
            self.score_button = gr.Button("Score the annotations", elem_id="grounding-annotations-run")
            self.annotation_summary = gr.Markdown(elem_id="grounding-annotations-summary")
            self.annotation_table = gr.Dataframe(
                label="Per method and category", interactive=False, elem_id="grounding-annotations-table"
            )
            self.annotation_csv = gr.File(
                label="Download: the table (CSV)", interactive=False, elem_id="grounding-annotations-csv"
            )
            self.annotation_data = gr.JSON(label="annotations output", visible=False)
        # The API takes the pair and word as plain numbers: the dropdown and the chips only accept the
        # choices currently on screen, which an API client has never seen.
        with gr.Row(visible=False):
            self.api_pair = gr.Number(precision=0, label="Pair (1-based)")
            self.api_word = gr.Number(precision=0, label="Word (0-based)")
            self.api_run = gr.Button()
            self.api_every = gr.Button()
        # In the API's order: a new output goes last, so older clients still work.
        self.outputs = [
            self.overlay, self.grid, self.matrix, self.pair, self.words, self.notice, self.xmm, self.xmm_notice,
            self.score, self.comparison, self.data,
        ]  # fmt: skip
        self.every_outputs = [self.every_plot, self.every_notice, self.every_data]
        self.annotation_outputs = [
            self.annotation_summary, self.annotation_table, self.annotation_csv, self.annotation_data
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
            kind: the map: 'sparc' (min-max over patches, below 1/P dropped, renormalised), 'no-sparsity', 'softmax', 'cosine', 'occlusion' (how much each token's SPARC fine similarity falls when each patch is hidden: where the evidence comes from; one tower pass per patch), a training-free re-reading of the last image block, each token's cosine with its patch embeddings: 'maskclip' (the value path), 'sclip' (q-q + k-k attention), 'clearclip' (q-q attention, no residual, no FFN), 'naclip' (k-k attention with a Gaussian neighbourhood, no residual, no FFN), 'naclip_pamr' (NACLIP's map refined by the image's colour edges, PAMR), or a gradient map, relevance in [0, 1]: 'legrad' (LeGrad: gradients of the token's cosine with the image through each block's attention maps), 'gradeclip' (Grad-ECLIP: gradient-weighted values of the last blocks).
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
        analysis, model, index, caption = self._target(pair, text, session)
        pairs = analysis.pairs
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

    def _target(self, pair: int | None, text: str | None, session: Session) -> tuple[Analysis, VLModel, int, str]:
        """The session's analysis, the model that encoded it, the pair's row (0-based) and the text to ground."""
        analysis = session.analyzed("the Grounding tab shows their words on their images.")
        pairs = analysis.pairs
        index = 0 if pair is None else int(pair) - 1
        if not 0 <= index < len(pairs):
            raise refusal(f"Pair {pair} does not exist: choose 1 to {len(pairs)}.")
        if text and len(text) > MAX_CAPTION_CHARS:
            raise refusal(f"The text is {len(text)} characters long; texts have at most {MAX_CAPTION_CHARS}.")
        caption = text.strip() if text and text.strip() else pairs.captions[index]
        return analysis, session.model_of(analysis), index, caption

    def every_method(
        self, pair: int | None = None, word: int | None = None, text: str | None = None, session: Session | None = None
    ) -> Updates:
        """The chosen word by every map method side by side, each titled with its pointing game (`every_method` API).

        The same pair, text and model as `grounding`: SPARC weights, the dense cosine map, each training-free and
        gradient method (MaskCLIP, SCLIP, ClearCLIP, NACLIP, LeGrad, Grad-ECLIP, ...) and, where the model is small
        enough, the occlusion map: every kind of `grounding` but SPARC's two ablations. Each method's pointing
        game for colour words on the bundled scenes among the pairs is scored once per model and kept. A method the
        model cannot draw (a dense method on a model that reads its maps before any block) says why in its panel.
        It holds the session's one heavy-analysis slot while it computes.

        Args:
            pair: the pair, 1-based (empty: the first).
            word: the word to show, 0-based among the text's words (empty: the first content word).
            text: ground this text in the pair's image instead of its caption (empty: the caption), at most 1,000 characters.

        Returns:
            [0] the word by each method over the image (as the model sees it), plotly figure JSON
            [1] a notice: what the scores are, and the methods not drawn with why (Markdown)
            [2] the data: model, pair, image, text, grid_size [h, w], words, word (the chosen index), scenes (bundled scenes scored), kinds ({kind: {label, pointing (None without scenes), word_map (P values)} or {label, reason}})
        """
        analysis, model, index, caption = self._target(pair, text, session)
        pairs = analysis.pairs
        head = grounding_of(model.name, index + 1, pairs.names[index], caption)
        if model.patches_unavailable:
            reason = f"No grounding maps for `{model.name}`: {model.patches_unavailable}."
            return {self.every_plot: None, self.every_notice: reason, self.every_data: head | {"unavailable": reason}}
        scenes = len(bundled_rows(pairs)[0])
        with session.exclusive("analysis"):  # up to a tower pass per patch of every bundled scene: one at a time
            maps, refused = self._every_map(model, pairs.images[index], caption, scenes)
            if not maps["sparc"].words:
                raise refusal(f"{caption!r} has no words to ground: type a word or a phrase.")
            pointing = bundled_pointing(model, pairs, list(maps))
        panel = GroundingPanel(model.name, model.input_image(pairs.images[index]), maps, pointing)
        view = every_method_view(head, panel, refused, word, scenes)
        return {self.every_plot: view.figure, self.every_notice: view.notice, self.every_data: view.data}

    def every_method_if_on(
        self, on: bool, pair: int | None, word: int | None, text: str | None, session: Session
    ) -> Updates:
        """`every_method` after the main view was drawn, when its checkbox is ticked; else nothing changes."""
        return self.every_method(pair, word, text, session) if on else {}

    def _every_map(
        self, model: VLModel, image: Image.Image, caption: str, scenes: int
    ) -> tuple[dict[str, CaptionMaps], dict[str, str]]:
        """The caption's maps by each of `EVERY_METHOD_KINDS` the model draws, and why it draws the others not."""
        maps: dict[str, CaptionMaps] = {}
        refused: dict[str, str] = {}
        passes = (scenes + 1) * model.grid_size[0] * model.grid_size[1]
        cost = passes * sum(parameter.numel() for parameter in model.model.visual.parameters())
        for kind in EVERY_METHOD_KINDS:  # a handful of methods, each one pass (a backward for the gradient ones)
            if kind == OCCLUSION and cost > OCCLUSION_BUDGET:
                refused[kind] = (
                    f"{passes:,} tower passes of this model (one per patch of the pair and of each bundled scene) "
                    "are more than this view spends: choose the occlusion map above to draw it alone."
                )
                continue
            try:
                maps[kind] = model_caption_maps(model, image, caption, kind)
            except ValueError as error:
                refused[kind] = str(error)
        return maps, refused

    def grounding_annotations(
        self,
        annotations: str | None = None,
        images: list[str] | None = None,
        masks: list[str] | None = None,
        kinds: list[str] | None = None,
        session: Session | None = None,  # this session (gr.State)
        request: gr.Request | None = None,  # filled in by Gradio
    ) -> Updates:
        """The pointing game on your own annotated images, per method and category (the `grounding_annotations` API).

        Each annotated object's category name is read in 'a photo of a {}.' by the model that analyzed the pairs,
        and its map scored against the object's mask (through the model's resize and crop, on its patch grid),
        beside the untrained model of the same architecture. Files are untrusted and checked before anything is
        decoded: a COCO file at most 256 MB, 200,000 images and 1,000,000 annotations, a polygon at most 10,000
        vertices, an image at most 64 megapixels, a zip at most 10,000 entries and 512 MB unpacked; the first 100
        annotated images are scored. A bad annotation (a missing image, an unknown id, an empty mask, a polygon
        too large, a file of another kind) is refused with a message naming it, and nothing on screen changes.

        Args:
            annotations: a COCO instances .json (polygons or RLE), or with `masks` a labels table: a CSV with mask and category columns (and optionally image), or JSON {"dog_0.png": "dog"}.
            images: the annotated images, or .zip files of them, matched to the annotations by base name (uploads or http(s) URLs).
            masks: for a labels table, the masks (one PNG per object, at its image's size, not black: the object) or .zip files of them (uploads or http(s) URLs).
            kinds: the methods to score (default 'sparc' and 'cosine'); any map kind of `grounding` but 'occlusion'.

        Returns:
            [0] a summary: what was scored and how, and the reading's notices (Markdown)
            [1] the table: one row per method and category ('all objects' first): words, pointing game, mass in mask, object accuracy, each beside the untrained model's, chance and object chance
            [2] the table as a CSV file
            [3] the data: model, annotations (the file's name), kinds (those scored), not_scored ({kind: why this model cannot draw it}), and annotation_grounding's dict (format, query, min_cover, notices, images, objects, not_named, outside_crop, scores and untrained: {kind: {all, categories: {name: figures}}})
        """
        analysis = session.analyzed("the annotations are scored by the model that analyzed them.")
        model = session.model_of(analysis)
        if not annotations:
            raise refusal("Upload the annotations: a COCO instances .json, or a labels table with its masks.")
        if not images:
            raise refusal("Upload the annotated images (or a .zip of them).")
        kinds, not_scored = _drawable(model, list(kinds or DEFAULT_ANNOTATION_KINDS))
        table = uploaded_file(annotations)
        name = Path(table).name
        if not masks and Path(name).suffix.lower() == ".csv":
            raise refusal(f"{name} is a labels table: upload its masks too (PNG files or a .zip).")
        own_host = request.headers.get("host") if request is not None else None
        with session.exclusive("analysis"), self._unpacked(session, images, masks, own_host) as (found, found_masks):
            try:
                result = annotation_grounding(
                    model, table, found, kinds, masks=found_masks, max_images=MAX_ANNOTATED_IMAGES,
                    max_pixels=MAX_REQUEST_PIXELS,
                )  # fmt: skip
            except ValueError as error:  # InputError too: a bad annotation, image or caption, named
                raise refusal(error) from error
        view = annotation_view(result, model.name, name, not_scored)
        csv = write_annotation_csv(view.table, session.export_folder("grounding-annotations"))
        data = {"model": model.name, "annotations": name, "kinds": kinds, "not_scored": not_scored, **result}
        return {
            self.annotation_summary: view.summary,
            self.annotation_table: view.table,
            self.annotation_csv: str(csv),
            self.annotation_data: data,
        }

    @contextmanager
    def _unpacked(
        self, session: Session, images: list[str], masks: list[str] | None, own_host: str | None
    ) -> Iterator[tuple[dict[str, str], dict[str, str] | None]]:
        """The uploaded images and masks as {name: local file}, zips unpacked into a folder of the session's that
        goes when the block ends; only this server's uploads and public URLs are read (`fetch`)."""
        session.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=session.folder) as scratch:
            try:
                found = unpack_uploads([fetch(str(f), own_host) for f in images], Path(scratch) / "images")
                found_masks = None
                if masks:
                    found_masks = unpack_uploads([fetch(str(f), own_host) for f in masks], Path(scratch) / "masks")
            except InputError as error:
                raise refusal(error) from error
            yield found, found_masks

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
        every_on: bool, wanted: WantedView | None,
    ) -> Updates:  # fmt: skip
        """Ground the first pair of a new analysis, or the pair and word a view link asks for (`wanted`); the
        every-method view too when its box is ticked, so that it never shows the previous analysis's pair."""
        pair, word = (wanted.pair, wanted.word) if wanted else (None, None)
        analysis = session.analysis
        if pair is not None and (analysis is None or pair > len(analysis.pairs)):
            pair, word = None, None  # a link to a pair these pairs do not have: the first, as always
        drawn = self.grounding(pair, word, kind, opacity, text, session, compare)
        return drawn | self.every_method_if_on(every_on, pair, word, text, session)


def _drawable(model: VLModel, kinds: list[str]) -> tuple[list[str], dict[str, str]]:
    """Of `kinds` (`ANNOTATION_KINDS`), those `model` draws and why it draws the others not (a dense method on a model
    read before any block), each tried on a small blank image first, so that one such method does not fail a whole
    upload's score."""
    unknown = [kind for kind in kinds if kind not in ANNOTATION_KINDS]
    if unknown:
        raise refusal(f"Unknown methods {unknown}; choose from {ANNOTATION_KINDS}.")
    if model.patches_unavailable:
        raise refusal(f"No grounding maps for {model.name}: {model.patches_unavailable}.")
    probe, drawn, refused = Image.new("RGB", (64, 64), (40, 40, 40)), [], {}
    for kind in kinds:  # a handful of methods, one small pass each
        try:
            model_caption_maps(model, probe, "a photo of a dog.", kind)
            drawn.append(kind)
        except ValueError as error:
            refused[kind] = str(error)
    if not drawn:
        raise refusal(f"{model.name} draws none of these methods: {' '.join(refused.values())}")
    return drawn, refused


def build_grounding_tab(tab: gr.Tab, states: SessionStates, wanted: gr.State) -> GroundingTab:
    """Create the tab's components and wire them to `GroundingTab.grounding`; it grounds the first pair of each new
    analysis (or the pair and word in `wanted`, a view link's) the first time the tab shows it. With its box
    ticked, the every-method view follows the pair and word drawn; it and the annotations' score hold the
    session's heavy-analysis slot, in the analyses' queue."""
    view = GroundingTab()
    shown = dict(outputs=view.outputs, **VIEW_EVENT)
    common = [view.kind, view.opacity, view.text, states.session, view.compare]
    every = dict(outputs=view.every_outputs, api_visibility="private", **ANALYSIS_EVENT)
    every_inputs = [view.every_on, view.pair, view.words, view.text, states.session]
    view.api_run.click(view.grounding, [view.api_pair, view.api_word, *common], **shown, api_name="grounding")
    view.api_every.click(
        view.every_method, [view.api_pair, view.api_word, view.text, states.session], view.every_outputs,
        api_name="every_method", **ANALYSIS_EVENT,
    )  # fmt: skip
    for event in (view.words.input, view.kind.input, view.opacity.release, view.compare.input):
        event(view.grounding, [view.pair, view.words, *common], **shown, api_visibility="private").success(
            view.every_method_if_on, every_inputs, **every
        )
    # A new pair or text has new words: the choice goes back to the first content word.
    for event in (view.pair.input, view.text.submit, view.ground_button.click):
        event(view.ground_first_word, [view.pair, *common], **shown, api_visibility="private").success(
            view.every_method_if_on, every_inputs, **every
        )
    view.every_on.input(view.every_method_if_on, every_inputs, **every)
    view.score_button.click(
        view.grounding_annotations,
        [view.annotations, view.annotated_images, view.masks, view.annotation_kinds, states.session],
        view.annotation_outputs, api_name="grounding_annotations", **ANALYSIS_EVENT,
    )  # fmt: skip
    first = [*common, view.every_on, wanted]
    draw_on_first_view(view.first_view, tab, TAB, states, first, [*view.outputs, *view.every_outputs], VIEW_EVENT)
    return view
