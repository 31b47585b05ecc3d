"""The Grounding tab: where each word of a caption lands on its image (SPARC's token-to-patch weights).

Beside SPARC's weights, a model trained with XMM (`vlviz.losses.xmm`) shows where its fusion head looks for
the word when the word is masked.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from vlviz.data.inputs import MAX_CAPTION_CHARS
from vlviz.grounding.maps import (
    MIN_COVER,
    CaptionMaps,
    bundled_scene_score,
    model_caption_maps,
    shared_untrained_model,
    xmm_word_attention,
)
from vlviz.models.encoding import EncodedPairs, VLModel
from vlviz.ui.agents import open_choices
from vlviz.ui.messages import refusal
from vlviz.ui.session import (
    MODEL_CHOICES,
    VIEW_EVENT,
    SessionSpace,
    WantedView,
    analyzed,
    draw_on_first_view,
    first_view,
    model_for,
)
from vlviz.viz.html import markdown_text
from vlviz.viz.tables import grounding_score_markdown
from vlviz.viz.views import MAP_LABELS, attention_overlay, grounding_view, word_overlay

TAB = "Grounding"
OUTPUTS = 11  # `grounding`: overlay, grid, matrix, pair, words, notice, XMM overlay and notice, score, comparison, data
UNTRAINED = "untrained"  # `compare`: the untrained model of the same architecture (`shared_untrained_model`)
COMPARE_CHOICES = [("nothing", ""), ("the untrained model (same architecture)", UNTRAINED)]


def grounding(
    pair: int | None = None,
    word: int | None = None,
    kind: str = "sparc",
    opacity: float = 0.7,
    text: str | None = None,
    analysis: EncodedPairs | None = None,  # the analysed pairs (gr.State)
    space: SessionSpace | None = None,  # this session (gr.State)
    compare: str | None = None,
) -> tuple[Any, ...]:
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
    encoded = analyzed(analysis, "the Grounding tab shows their words on their images.")
    pairs = encoded.pairs
    index = 0 if pair is None else int(pair) - 1
    if not 0 <= index < len(pairs):
        raise refusal(f"Pair {pair} does not exist: choose 1 to {len(pairs)}.")
    if text and len(text) > MAX_CAPTION_CHARS:
        raise refusal(f"The text is {len(text)} characters long; texts have at most {MAX_CAPTION_CHARS}.")
    model, _ = model_for(encoded.model_name, space)
    caption = text.strip() if text and text.strip() else pairs.captions[index]
    pair_choices = gr.Dropdown(
        choices=[(f"{i + 1}. {name}", i + 1) for i, name in enumerate(pairs.names)], value=index + 1
    )
    data: dict[str, Any] = {"model": model.name, "pair": index + 1, "image": pairs.names[index], "text": caption}
    if model.patches_unavailable:
        reason = f"No grounding maps for `{model.name}`: {model.patches_unavailable}."
        no_words = gr.Radio(choices=[], value=None)
        no_plot = gr.Plot(value=None, visible=False)
        unavailable = data | {"unavailable": reason}
        return None, None, None, pair_choices, no_words, reason, no_plot, "", "", no_plot, unavailable
    maps = model_caption_maps(model, pairs.images[index], caption, kind)
    words = maps.words
    if not words:
        raise refusal(f"{caption!r} has no words to ground: type a word or a phrase.")
    chosen = word if word is not None and 0 <= int(word) < len(words) else maps.first_word
    image = model.input_image(pairs.images[index])  # as the model sees it: its preprocessing's crop
    view = grounding_view(maps, image, chosen, opacity, model=model.name if compare else "")
    xmm_overlay, xmm_notice, xmm_data = _xmm_view(model, image, pairs.images[index], caption, chosen, opacity)
    score = bundled_scene_score(model, pairs, kind)
    score_text = (
        grounding_score_markdown(score.scores, score.untrained, MAP_LABELS[kind], score.scenes, MIN_COVER)
        if score
        else ""
    )
    notice = (
        ""
        if caption == pairs.captions[index]
        else f"Grounding the typed text {markdown_text(repr(caption))} in image {index + 1}."
    )
    comparison, compare_data = _compare_view(
        model, compare, space, pairs.images[index], caption, kind, maps, chosen, opacity
    )
    if compare_data and "reason" in compare_data:
        notice = f"{notice}\n\n{compare_data['reason']}".strip()
    data |= {
        "kind": kind,
        "grid_size": list(maps.grid_size),
        "words": words,
        "word": chosen,
        "word_maps": maps.word_maps.flatten(1).tolist(),
        "tokens": maps.tokens,
        "token_maps": maps.token_maps.tolist(),
        "scene_score": score.scores if score else None,
        "untrained_scene_score": score.untrained if score else None,
        "xmm": xmm_data,
        "compare": compare_data,
    }
    word_choices = gr.Radio(choices=[(w, i) for i, w in enumerate(words)], value=chosen)
    return (
        view.overlay, view.grid, view.matrix, pair_choices, word_choices, notice, xmm_overlay, xmm_notice,
        score_text, comparison, data,
    )  # fmt: skip


def _compare_view(
    model: VLModel, compare: str | None, space: SessionSpace | None, original: Image.Image, caption: str, kind: str,
    maps: CaptionMaps, chosen: int, opacity: float,
) -> tuple[Any, dict[str, Any] | None]:  # fmt: skip
    """The chosen word's map by the `compare` model on the same image and text, and its data (None: no comparison).

    The other model's tokenizer may split the text into other words; the word is then found by its
    text, and when it is missing the data says why instead of drawing another word.
    """
    hidden = gr.Plot(value=None, visible=False)
    if not compare:
        return hidden, None
    try:
        other = shared_untrained_model(model) if compare == UNTRAINED else model_for(compare, space)[0]
    except ValueError as error:  # an architecture without a known config has no untrained twin
        raise refusal(error) from error
    if other.patches_unavailable:
        return hidden, {"model": other.name, "reason": f"No map to compare: {other.patches_unavailable}."}
    other_maps = model_caption_maps(other, original, caption, kind)
    word = maps.words[chosen]
    if other_maps.words == maps.words:
        index = chosen
    elif word in other_maps.words:
        index = other_maps.words.index(word)
    else:
        return hidden, {"model": other.name, "reason": f"`{other.name}` reads no word '{word}' in this text."}
    figure = word_overlay(other_maps, other.input_image(original), index, opacity, model=other.name)
    data = {
        "model": other.name,
        "words": other_maps.words,
        "word": index,
        "word_maps": other_maps.word_maps.flatten(1).tolist(),
    }
    return gr.Plot(value=figure, visible=True), data


def _xmm_view(
    model: VLModel, image: np.ndarray, original: Image.Image, caption: str, word: int, opacity: float
) -> tuple[Any, str, dict[str, Any]]:
    """The trained XMM head's cross-attention from the masked word to the patches, or why there is none."""
    found = xmm_word_attention(model, original, caption)
    if found is None:
        reason = (
            f"No XMM map: `{model.name}` has no trained XMM head. Train with `xmm` (weight above 0) in the "
            "Train tab and use that run's checkpoint as the model to see one here."
        )
        return gr.Plot(value=None, visible=False), reason, {"available": False, "reason": reason}
    maps = found.patch_maps.cpu()  # (W, P)
    chosen = found.layout.words[0][word]
    figure = attention_overlay(image, maps[word], model.grid_size, chosen, opacity)
    notice = (
        f"Where the trained XMM fusion head looks for '{markdown_text(chosen)}' when it is masked (the last fusion layer's "
        f"cross-attention, heads averaged); {float(found.global_share[word]):.0%} of it goes to the global image "
        "embedding, the rest to the patches shown."
    )
    data = {"available": True, "word_maps": maps.tolist(), "global_share": found.global_share.cpu().tolist()}
    return gr.Plot(value=figure, visible=True), notice, data


def _ground_first_word(pair: int | None, *settings: Any) -> tuple[Any, ...]:
    """`grounding` for a new pair or text: its words change, so the choice goes back to the first content word.

    `settings` are `grounding`'s arguments after `word`: kind, opacity, text, pairs, session, compare.
    """
    return grounding(pair, None, *settings)


def _when_in_view(
    kind: str, opacity: float, text: str | None, analysis: EncodedPairs | None, space: SessionSpace,
    compare: str | None, wanted: WantedView | None, drawn: int | None, tab: str,
) -> tuple[Any, ...]:  # fmt: skip
    """Ground the first pair once per analysis (or the pair and word a view link asks for), when the tab is
    in view (selected now, or open when Analyze finishes); returns `grounding`'s outputs and the serial of
    the analysis drawn."""
    if not first_view(analysis, drawn, tab == TAB):
        return (gr.skip(),) * (OUTPUTS + 1)
    pair, word = (wanted.pair, wanted.word) if wanted else (None, None)
    if pair is not None and pair > len(analysis.pairs):
        pair, word = None, None  # a link to a pair these pairs do not have: the first, as always
    return (*grounding(pair, word, kind, opacity, text, analysis, space, compare), analysis.serial)


def build_grounding_tab(
    analysis: gr.State, space: gr.State, tab: gr.Tab, current: gr.State, wanted: gr.State
) -> tuple[gr.Dropdown, gr.Radio]:
    """Create the tab's components and wire them to `grounding`; it grounds the first pair of each new analysis
    (or the pair and word in `wanted`, a view link's) the first time the tab shows it. Returns the pair and
    word choices (what a view link records)."""
    gr.Markdown(
        "Where does each word land? SPARC (Bica et al., ICML 2024) weighs every image patch for every "
        "caption token: similarities min-max normalised over the patches, those below 1/P dropped, the "
        "rest renormalised. Switch to softmax weights or the dense cosine map to see what sparsity changes. "
        "These maps read the tower's last patch tokens, which hold evidence attention gathered from elsewhere; "
        "the occlusion map hides one patch at a time instead and shows where a word's evidence comes from "
        "(one tower pass per patch: slower on large models)."
    )
    with gr.Row():
        pair = gr.Dropdown(choices=[], label="Pair", scale=2, elem_id="grounding-pair")
        kind = gr.Radio(
            [(label, name) for name, label in MAP_LABELS.items()],
            value="sparc",
            label="Map",
            scale=3,
            elem_id="grounding-kind",
        )
    words = gr.Radio([], label="Words of the caption: choose one", elem_id="grounding-words")
    with gr.Row():
        text = gr.Textbox(
            label="Ground any text in this image instead of its caption (empty: the caption)",
            placeholder="a red circle",
            scale=4,
            elem_id="grounding-text",
        )
        ground_button = gr.Button("Ground", scale=1, elem_id="grounding-run")
    with gr.Row():
        with gr.Column(scale=3):
            overlay = gr.Plot(label="The chosen word", elem_id="grounding-overlay")
        with gr.Column(scale=3):
            comparison = gr.Plot(
                label="The chosen word, by the other model", visible=False, elem_id="grounding-compare"
            )
        with gr.Column(scale=3):
            xmm_overlay = gr.Plot(label="The chosen word, masked: XMM cross-attention", elem_id="grounding-xmm")
            xmm_notice = gr.Markdown(elem_id="grounding-xmm-notice")
        with gr.Column(scale=2):
            opacity = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Heatmap opacity", elem_id="grounding-opacity")
            compare = gr.Dropdown(
                [*COMPARE_CHOICES, *((spec, spec) for spec in MODEL_CHOICES)],
                value="",
                allow_custom_value=True,
                label="Compare with",
                info="the same pair and word, drawn by a second model: the untrained one is the baseline to beat",
                elem_id="grounding-compare-with",
            )
            open_choices(compare)  # any model spec, not only the listed ones
            notice = gr.Markdown(elem_id="grounding-notice")
    score = gr.Markdown(elem_id="grounding-score")
    grid = gr.Plot(label="Every word", elem_id="grounding-grid")
    matrix = gr.Plot(label="Token x patch", elem_id="grounding-matrix")
    with gr.Accordion("Data (JSON): words, per-word and per-token maps", open=False):
        data = gr.JSON(label="grounding output")
    # The API takes the pair and word as plain numbers: the dropdown and the chips only accept the
    # choices currently on screen, which an API client has never seen.
    with gr.Row(visible=False):
        api_pair = gr.Number(precision=0, label="Pair (1-based)")
        api_word = gr.Number(precision=0, label="Word (0-based)")
        api_run = gr.Button()

    outputs = [overlay, grid, matrix, pair, words, notice, xmm_overlay, xmm_notice, score, comparison, data]
    shown = dict(outputs=outputs, **VIEW_EVENT)
    common = [kind, opacity, text, analysis, space, compare]
    api_run.click(grounding, [api_pair, api_word, *common], **shown, api_name="grounding")
    for event in (words.input, kind.input, opacity.release, compare.input):
        event(grounding, [pair, words, *common], **shown, api_visibility="private")
    # A new pair or text has new words: the choice goes back to the first content word.
    for event in (pair.input, text.submit, ground_button.click):
        event(_ground_first_word, [pair, *common], **shown, api_visibility="private")
    drawn = gr.State(None)  # the serial of the analysis drawn
    first = [*common, wanted, drawn]
    draw_on_first_view(_when_in_view, tab, TAB, analysis, current, first, [*outputs, drawn], VIEW_EVENT)
    return pair, words
