"""The Grounding tab: where each word of a caption lands on its image (SPARC's token-to-patch weights).

Beside SPARC's weights, a model trained with XMM (`vlviz.xmm`) shows where its fusion head looks for
the word when the word is masked.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from vlviz.data.scenes import SceneBatch, generate_scenes
from vlviz.encoding import VLModel, content_key
from vlviz.figures import grounding_grid, grounding_overlay, token_patch_matrix
from vlviz.grounding import MIN_COVER, scene_grounding_score, select_scenes
from vlviz.inputs import MAX_CAPTION_CHARS, PairSet
from vlviz.sparc import grounding_maps, word_maps
from vlviz.tokens import first_content_word
from vlviz.train import load_loss_heads
from vlviz.ui.session import VIEW_EVENT, SessionSpace, model_for
from vlviz.xmm import masked_word_attention

KIND_LABELS = {
    "sparc": "SPARC weights",
    "no-sparsity": "min-max weights without sparsity",
    "softmax": "softmax weights (the paper's ablation)",
    "cosine": "dense cosine map",
}
OVERLAY_SIDE = 224  # pixels of the image under the large overlay
GRID_SIDE = 72  # pixels of the image under each small overlay
SAMPLE_SCENES = {"n": 24, "seed": 2024}  # how assets/samples/scenes was generated (assets/README.md)
# Words a default choice skips: the first word worth grounding is rarely an article.
_FUNCTION_WORDS = {"a", "an", "the", "at", "on", "in", "of", "and", "with", "to", "is", "are", "its"}


@functools.cache
def _bundled_scenes() -> tuple[SceneBatch, dict[str, int]]:
    """The bundled sample scenes with their ground truth, and their images' content keys."""
    scenes = generate_scenes(SAMPLE_SCENES["n"], seed=SAMPLE_SCENES["seed"])
    return scenes, {content_key(image): i for i, image in enumerate(scenes.pil_images())}


def _model_view(image: Image.Image, side: int, resize_mode: str) -> np.ndarray:
    """The square the patch grid covers, as open_clip's preprocessing frames it, at `side` pixels."""
    width, height = image.size
    if resize_mode == "squash":
        framed = image
    elif resize_mode == "longest":
        framed = Image.new("RGB", (max(width, height),) * 2)
        framed.paste(image, ((max(width, height) - width) // 2, (max(width, height) - height) // 2))
    else:  # "shortest": resize the short side, then take the centre square
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        framed = image.crop((left, top, left + short, top + short))
    # Small images (scenes) are enlarged with crisp pixels; large ones are reduced smoothly.
    resample = Image.Resampling.NEAREST if side >= max(framed.size) else Image.Resampling.BICUBIC
    return np.asarray(framed.convert("RGB").resize((side, side), resample))


def _score_markdown(scores: dict[str, dict[str, float]], kind: str, n_scenes: int) -> str:
    rows = "\n".join(
        f"| {name} | {s['pointing_game']:.3f} | {s['mass_in_mask']:.3f} | {s['chance']:.3f} | {s['words']} |"
        for name, s in scores.items()
    )
    return (
        f"**Grounding score** of this model's {KIND_LABELS[kind]} on the {n_scenes} loaded bundled scenes, "
        f"against their object masks (a patch is inside an object when at least {MIN_COVER:.0%} of it is):\n\n"
        "| word class | pointing game | mass in mask | chance | words |\n|---|---|---|---|---|\n" + rows
    )


def _scene_score(pairs: PairSet, model: VLModel, kind: str) -> tuple[dict | None, str]:
    """The grounding score on the loaded pairs that are bundled scenes (same pixels and caption)."""
    scenes, keys = _bundled_scenes()
    found = [(i, keys.get(content_key(image))) for i, image in enumerate(pairs.images)]
    matched = [(i, j) for i, j in found if j is not None and pairs.captions[i] == scenes.captions[j]]
    if not matched:
        return None, ""
    rows, truth = zip(*matched)
    encoding = model.encode_pairs([pairs.images[i] for i in rows], [pairs.captions[i] for i in rows])
    scores = scene_grounding_score(encoding, select_scenes(scenes, list(truth)), kinds=[kind])[kind]
    return scores, _score_markdown(scores, kind, len(rows))


def _xmm_view(
    model: VLModel, image: Image.Image, caption: str, word: int, view: np.ndarray, opacity: float
) -> tuple[Any, str, dict[str, Any]]:
    """The trained XMM head's cross-attention from the masked word to the patches, or why there is none."""
    xmm = load_loss_heads(model.spec, model.model, model.tokenizer).get("xmm")
    if xmm is None:
        reason = (
            f"No XMM map: `{model.name}` has no trained XMM head. Train with `xmm` (weight above 0) in the "
            "Train tab and use that run's checkpoint as the model to see one here."
        )
        return gr.Plot(value=None, visible=False), reason, {"available": False, "reason": reason}
    pixels = model.preprocess(image)[None].to(model.device, model.dtype)
    found = masked_word_attention(xmm, model.model, model.tokenizer, pixels, caption)
    maps = found.patch_maps.cpu()  # (W, P)
    share = float(found.global_share[word])
    chosen = found.layout.words[0][word]
    figure = grounding_overlay(
        view, maps[word].reshape(model.grid_size).numpy(), f"'{chosen}' masked: XMM cross-attention", opacity,
        "attention",
    )  # fmt: skip
    notice = (
        f"Where the trained XMM fusion head looks for '{chosen}' when it is masked (the last fusion layer's "
        f"cross-attention, heads averaged); {share:.0%} of it goes to the global image embedding, the rest "
        "to the patches shown."
    )
    data = {"available": True, "word_maps": maps.tolist(), "global_share": found.global_share.cpu().tolist()}
    return gr.Plot(value=figure, visible=True), notice, data


def ground(
    pair: int | None,
    word: int | None,
    kind: str,
    opacity: float,
    text: str | None,
    pairs: PairSet | None,
    model_spec: str | None,
    space: SessionSpace,
) -> tuple[Any, ...]:
    """Ground every word of a pair's caption (or of `text`) in its image (the `grounding` API).

    `pair` is 1-based (None: the first); `word` indexes the caption's words (None: the first
    content word). Returns the overlay, the per-word grid, the token x patch matrix, the pair and
    word choices, a notice, the XMM overlay and its notice (or why there is none), the scenes score
    and the data (word list and maps).
    """
    if pairs is None:
        raise gr.Error("Analyze a set of pairs first: the Grounding tab shows their words on their images.")
    index = 0 if pair is None else int(pair) - 1
    if not 0 <= index < len(pairs):
        raise gr.Error(f"Pair {pair} does not exist: choose 1 to {len(pairs)}.")
    if text and len(text) > MAX_CAPTION_CHARS:
        raise gr.Error(f"The text is {len(text)} characters long; texts have at most {MAX_CAPTION_CHARS}.")
    model, _ = model_for(model_spec, space)
    caption = text.strip() if text and text.strip() else pairs.captions[index]
    encoding = model.encode_pairs([pairs.images[index]], [caption])
    pair_choices = gr.Dropdown(
        choices=[(f"{i + 1}. {name}", i + 1) for i, name in enumerate(pairs.names)], value=index + 1
    )
    data: dict[str, Any] = {"model": model.name, "pair": index + 1, "image": pairs.names[index], "text": caption}
    if encoding.patch_features is None or encoding.token_features is None or encoding.grid_size is None:
        reason = f"No grounding maps for `{model.name}`: {encoding.patches_unavailable}."
        no_words = gr.Radio(choices=[], value=None)
        no_xmm = gr.Plot(value=None, visible=False)
        return None, None, None, pair_choices, no_words, reason, no_xmm, "", "", data | {"unavailable": reason}
    words = encoding.tokens.words[0]
    if not words:
        raise gr.Error(f"{caption!r} has no words to ground: type a word or a phrase.")
    chosen = word if word is not None and 0 <= int(word) < len(words) else first_content_word(words, _FUNCTION_WORDS)

    token_maps = grounding_maps(encoding.token_features.float(), encoding.patch_features.float(), kind).cpu()
    per_word = word_maps(token_maps, encoding.tokens.word_index)[0, : len(words)]  # (W, P)
    grid_maps = per_word.reshape(len(words), *encoding.grid_size).numpy()  # (W, rows, cols)
    real = encoding.tokens.word_mask[0]  # start, end and padding tokens are not shown
    real_maps = token_maps[0, real]  # (T_real, P)
    resize_mode = (getattr(model.model.visual, "preprocess_cfg", None) or {}).get("resize_mode", "shortest")
    large = _model_view(pairs.images[index], OVERLAY_SIDE, resize_mode)
    small = _model_view(pairs.images[index], GRID_SIDE, resize_mode)
    value_name = "cosine" if kind == "cosine" else "weight"
    label = KIND_LABELS[kind]

    overlay = grounding_overlay(large, grid_maps[chosen], f"'{words[chosen]}': {label}", opacity, value_name)
    grid = grounding_grid(small, grid_maps, words, opacity)
    tokens = [piece for piece, keep in zip(encoding.tokens.tokens[0], real.tolist()) if keep]
    matrix = token_patch_matrix(real_maps.numpy(), tokens, encoding.grid_size, f"Token x patch: {label}", value_name)
    xmm_overlay, xmm_notice, xmm_data = _xmm_view(model, pairs.images[index], caption, chosen, large, opacity)
    scores, score_text = _scene_score(pairs, model, kind)
    notice = "" if caption == pairs.captions[index] else f"Grounding the typed text {caption!r} in image {index + 1}."
    data |= {
        "kind": kind,
        "grid_size": list(encoding.grid_size),
        "words": words,
        "word": chosen,
        "word_maps": per_word.tolist(),
        "tokens": tokens,
        "token_maps": real_maps.tolist(),
        "scene_score": scores,
        "xmm": xmm_data,
    }
    word_choices = gr.Radio(choices=[(w, i) for i, w in enumerate(words)], value=chosen)
    return overlay, grid, matrix, pair_choices, word_choices, notice, xmm_overlay, xmm_notice, score_text, data


def _ground_first_word(pair: int | None, *settings: Any) -> tuple[Any, ...]:
    """`ground` for a new pair or text: its words change, so the choice goes back to the first content word.

    `settings` are `ground`'s arguments after `word`: kind, opacity, text, pairs, model spec, session.
    """
    return ground(pair, None, *settings)


def _ground_new_pairs(*settings: Any) -> tuple[Any, ...]:
    """`ground` the first pair of a newly analyzed set (`settings` as in `_ground_first_word`)."""
    return ground(None, None, *settings)


def build_grounding_tab(model_spec: gr.Dropdown, pairs_state: gr.State, space: gr.State) -> None:
    """Create the tab's components and wire them to `ground`; it follows the pairs the Analyze button loads."""
    gr.Markdown(
        "Where does each word land? SPARC (Bica et al., ICML 2024) weighs every image patch for every "
        "caption token: similarities min-max normalised over the patches, those below 1/P dropped, the "
        "rest renormalised. Switch to softmax weights or the dense cosine map to see what sparsity changes."
    )
    with gr.Row():
        pair = gr.Dropdown(choices=[], label="Pair", scale=2, elem_id="grounding-pair")
        kind = gr.Radio(
            [(label, name) for name, label in KIND_LABELS.items()],
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
            xmm_overlay = gr.Plot(label="The chosen word, masked: XMM cross-attention", elem_id="grounding-xmm")
            xmm_notice = gr.Markdown(elem_id="grounding-xmm-notice")
        with gr.Column(scale=2):
            opacity = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Heatmap opacity", elem_id="grounding-opacity")
            notice = gr.Markdown(elem_id="grounding-notice")
    score = gr.Markdown(elem_id="grounding-score")
    grid = gr.Plot(label="Every word", elem_id="grounding-grid")
    matrix = gr.Plot(label="Token x patch", elem_id="grounding-matrix")
    with gr.Accordion("Data (JSON): words, per-word and per-token maps", open=False):
        data = gr.JSON(label="grounding output")
    # The API takes the pair and word as plain numbers: the dropdown and the chips only accept the
    # choices currently on screen, which an API client has never seen.
    with gr.Row(visible=False):
        api_pair, api_word = gr.Number(precision=0), gr.Number(precision=0)
        api_run = gr.Button()

    outputs = [overlay, grid, matrix, pair, words, notice, xmm_overlay, xmm_notice, score, data]
    shown = dict(outputs=outputs, **VIEW_EVENT)
    common = [kind, opacity, text, pairs_state, model_spec, space]
    api_run.click(ground, [api_pair, api_word, *common], **shown, api_name="grounding")
    for event in (words.input, kind.input, opacity.release):
        event(ground, [pair, words, *common], **shown, api_visibility="private")
    # A new pair or text has new words: the choice goes back to the first content word.
    for event in (pair.input, text.submit, ground_button.click):
        event(_ground_first_word, [pair, *common], **shown, api_visibility="private")
    pairs_state.change(_ground_new_pairs, common, **shown, api_visibility="private")
