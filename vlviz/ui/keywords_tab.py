"""The Keywords tab: SIMLA's keywords of each caption and the concepts the model sees in each image."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from vlviz.keywords import (
    DEFAULT_TEMPLATE,
    ConceptScores,
    candidate_rule,
    caption_keywords,
    check_concept_template,
    image_concepts,
    rank_concepts,
)
from vlviz.models.encoding import EncodedPairs, VLModel
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui.messages import refusal
from vlviz.ui.session import VIEW_EVENT, SessionSpace, analyzed, draw_on_first_view, first_view, model_for
from vlviz.viz.html import markdown_text

VOCABULARIES = {
    "the captions' words and the default concepts": None,
    "the captions' words only": (),
}
CAPTION_WORDS_ONLY = "the captions' words only"
IN_CAPTION, MISSING = "in the caption", "missing from the caption"
KEYWORD = "keyword"
TAB = "Keywords"
OUTPUTS = 7  # `keywords` returns the caption, image, concepts, pair, table, notice and data
DISPLAY_SIDE = 256  # pixels: smaller images are enlarged by a whole factor to reach about this


def concepts_source(concepts: ConceptScores, model: VLModel, template: str) -> str:
    """Where the concept scores come from, for the notice."""
    if concepts.trained_head:
        return (
            f"the trained PSL concept head of `{model.name}` (its momentum head's probabilities over its "
            f"{len(concepts.vocabulary)}-word vocabulary: SIMLA's pseudo-labels)"
        )
    return (
        f"zero-shot: the cosine of each image with '{markdown_text(template.format('…'))}' for each of {len(concepts.vocabulary)} "
        "concepts (words a model never learned score unpredictably: the offline scenes model knows only the "
        "words of its scenes, so choose the captions' words for it)"
    )


def default_vocabulary(model_name: str) -> str:
    """The concept vocabulary that makes sense for a model: the offline scenes model has only ever seen its
    scenes' words, so zero-shot scores of "forest" or "galaxies" are noise for it; other models get both."""
    return CAPTION_WORDS_ONLY if model_name == OFFLINE_SPEC else next(iter(VOCABULARIES))


def _displayed(image: Image.Image) -> Image.Image:
    """Small images (scenes are 64 px) enlarged with crisp pixels for display."""
    scale = DISPLAY_SIDE // max(image.size)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) if scale > 1 else image


def keywords(
    pair: int | None = None,
    template: str | None = DEFAULT_TEMPLATE,
    vocabulary_choice: str = next(iter(VOCABULARIES)),
    top_k: float = 10,
    content_words_only: bool = True,
    analysis: EncodedPairs | None = None,  # the analysed pairs (gr.State)
    space: SessionSpace | None = None,  # this session (gr.State)
    all_positions: bool = False,
) -> tuple[Any, ...]:
    """SIMLA's keywords of every caption and the concepts the model sees in every image, of the pairs last analyzed (the `keywords` API).

    Keywords: the text encoder's last-layer attention from the pooled (end-of-text) token; each head's
    top 4 words vote and the 5 with the most votes are kept. Concepts: words scored against each image,
    by a trained PSL concept head when the model has one, else zero-shot cosines with the prompt. The model is
    the one that analyzed the pairs, whatever the model box says now.

    Args:
        pair: the pair the view shows, 1-based (empty: the first); the data covers every pair.
        template: the zero-shot prompt, with {} where the concept goes (at most 200 characters).
        vocabulary_choice: the concepts scored: 'the captions' words and the default concepts' or 'the captions' words only'.
        top_k: concepts listed per image, 1 to 30.
        content_words_only: leave stop words out of the vote.
        all_positions: every position the pooled token attends to votes (SIMLA's own vote), not only real word tokens.

    Returns:
        [0] the shown pair's caption as [{token, class_or_confidence}], class 'keyword' on its keywords
        [1] the shown pair's image (an MCP client gets it as image content, then its URL as [2])
        [3] its top concepts as [{token: 'word score', class_or_confidence: 'in the caption' or 'missing from the caption'}] (zero-shot scores are cosines in [-1, 1], PSL scores probabilities in [0, 1])
        [4] the pair choices (for the browser)
        [5] a table of every pair: keywords, top concepts in the caption, top concepts missing from it
        [6] a notice: the tokens that voted in the shown pair and where the concept scores come from
        [7] the data: model, pair, candidates, concepts_from, template, pairs (per pair: pair (1-based), image, caption, words, keywords, votes [{token, votes}], concepts [{word, score, in_caption}])
    """
    encoded = analyzed(analysis, "the Keywords tab reads their captions and images.")
    pairs = encoded.pairs
    index = 0 if pair is None else int(pair) - 1
    if not 0 <= index < len(pairs):
        raise refusal(f"Pair {pair} does not exist: choose 1 to {len(pairs)}.")
    template = (template or "").strip() or DEFAULT_TEMPLATE
    try:
        check_concept_template(template)
    except ValueError as error:
        raise refusal(error) from error
    model, _ = model_for(encoded.model_name, space)
    try:
        found = caption_keywords(
            model.model, model.tokenizer, pairs.captions, content_words_only=content_words_only,
            all_positions=all_positions,
        )  # fmt: skip
    except ValueError as error:
        raise refusal(f"No keywords for `{model.name}`: {error}") from error
    words = found.layout.words
    try:
        concepts = image_concepts(model, pairs.images, words, template, VOCABULARIES[vocabulary_choice])
    except ValueError as error:
        raise refusal(error) from error
    source = concepts_source(concepts, model, template)
    ranked = rank_concepts(concepts.scores, concepts.vocabulary, words, top_k=int(top_k))
    per_pair = [
        {
            "pair": i + 1, "image": pairs.names[i], "caption": pairs.captions[i], "words": words[i],
            "keywords": found.keywords[i],
            "votes": [{"token": token, "votes": votes} for token, votes in found.voted(i)],
            "concepts": [{"word": c.word, "score": c.score, "in_caption": c.in_caption} for c in ranked[i]],
        }
        for i in range(len(pairs))
    ]  # fmt: skip
    kept = found.word_mask[index].tolist()
    caption = [(word + " ", KEYWORD if kept[w] else None) for w, word in enumerate(words[index])]
    concepts = [
        segment
        for c in ranked[index]
        for segment in ((f"{c.word} {c.score:.3g}", IN_CAPTION if c.in_caption else MISSING), (" ", None))
    ]
    table = pd.DataFrame(
        {
            "#": range(1, len(pairs) + 1),
            "image": pairs.names,
            "keywords": [", ".join(entry["keywords"]) for entry in per_pair],
            f"top concepts {IN_CAPTION}": [", ".join(c.word for c in row if c.in_caption) for row in ranked],
            f"top concepts {MISSING}": [", ".join(c.word for c in row if not c.in_caption) for row in ranked],
        }
    )
    choices = gr.Dropdown(choices=[(f"{i + 1}. {name}", i + 1) for i, name in enumerate(pairs.names)], value=index + 1)
    rule = candidate_rule(content_words_only, all_positions)
    voted = ", ".join(f"'{markdown_text(token)}' ×{votes}" for token, votes in found.voted(index)) or "none"
    notice = f"**Voted** (candidates: {rule}): {voted}.\n\n**Concepts from** {source}."
    data = {
        "model": model.name, "pair": index + 1, "candidates": rule, "concepts_from": source, "template": template,
        "pairs": per_pair,
    }  # fmt: skip
    return caption, _displayed(pairs.images[index]), concepts, choices, table, notice, data


def _when_in_view(
    template: str | None, top_k: float, content_words_only: bool, analysis: EncodedPairs | None,
    space: SessionSpace, all_positions: bool, drawn: int | None, tab: str,
) -> tuple[Any, ...]:  # fmt: skip
    """Show the first pair once per analysis, when the tab is in view (selected now, or open when Analyze
    finishes), with the concept vocabulary that suits the analysis' model (`default_vocabulary`); returns
    `keywords`' outputs, that vocabulary and the serial of the analysis drawn."""
    if not first_view(analysis, drawn, tab == TAB):
        return (gr.skip(),) * (OUTPUTS + 2)
    vocabulary = default_vocabulary(analysis.model_name)
    shown = keywords(None, template, vocabulary, top_k, content_words_only, analysis, space, all_positions)
    return (*shown, vocabulary, analysis.serial)


def build_keywords_tab(analysis: gr.State, space: gr.State, tab: gr.Tab, current: gr.State) -> None:
    """Create the tab's components and wire them to `keywords`; it shows the first pair of each new analysis
    the first time the tab shows it."""
    gr.Markdown(
        "SIMLA (Khan et al., ECCV 2022) picks a caption's **keywords** with the text encoder's last-layer "
        "attention: each head's top 4 words vote and the 5 with the most votes are kept (here the attention "
        "of the end-of-text token, where a CLIP text tower pools; unlike SIMLA's multimodal pass, it has not seen "
        "the image). vlviz lets only real words vote; tick *All positions vote* for SIMLA's vote, where start, "
        "end and punctuation vote too. **Concepts** are the words the model sees "
        "in the image, marked in the caption or missing from it: SIMLA's pseudo-labels. They come from a "
        "trained PSL concept head when the model has one (a Train-tab run with `psl`), else zero-shot prompts."
    )
    with gr.Row():
        pair = gr.Dropdown(choices=[], label="Pair", scale=2, elem_id="keywords-pair")
        template = gr.Textbox(
            value=DEFAULT_TEMPLATE, label="Zero-shot prompt ({} is the concept)", scale=2, elem_id="keywords-template"
        )
        vocabulary = gr.Radio(
            list(VOCABULARIES), value=next(iter(VOCABULARIES)), label="Concept vocabulary", scale=3,
            elem_id="keywords-vocabulary",
        )  # fmt: skip
    with gr.Row():
        top_k = gr.Slider(1, 30, value=10, step=1, label="Concepts shown", elem_id="keywords-top-k")
        content_only = gr.Checkbox(value=True, label="Leave stop words out of the vote", elem_id="keywords-content")
        all_positions = gr.Checkbox(value=False, label="All positions vote (SIMLA)", elem_id="keywords-all-positions")
    with gr.Row():
        image = gr.Image(type="pil", label="Image", interactive=False, height=260, scale=1, elem_id="keywords-image")
        with gr.Column(scale=2):
            caption = gr.HighlightedText(
                label="Caption: the keywords", color_map={KEYWORD: "blue"}, show_legend=True,
                show_inline_category=False, elem_id="keywords-caption",
            )  # fmt: skip
            concepts = gr.HighlightedText(
                label="Concepts of the image (score)", color_map={IN_CAPTION: "green", MISSING: "orange"},
                show_legend=True, show_inline_category=False, elem_id="keywords-concepts",
            )  # fmt: skip
            notice = gr.Markdown(elem_id="keywords-notice")
    table = gr.Dataframe(label="Every pair", interactive=False, wrap=True, max_height=360, elem_id="keywords-table")
    with gr.Accordion("Data (JSON): keywords and concepts of every pair", open=False):
        data = gr.JSON(label="keywords output")
    # The API takes the pair as a plain number: the dropdown only accepts the choices on screen.
    with gr.Row(visible=False):
        api_pair = gr.Number(precision=0, label="Pair (1-based)")
        api_run = gr.Button()

    outputs = [caption, image, concepts, pair, table, notice, data]
    shown = dict(outputs=outputs, **VIEW_EVENT)
    # The API's argument order (states are no arguments): a new setting goes last, so older calls still work.
    settings = [template, vocabulary, top_k, content_only, analysis, space, all_positions]
    api_run.click(keywords, [api_pair, *settings], **shown, api_name="keywords")
    changes = (pair.input, template.submit, vocabulary.input, top_k.release, content_only.input, all_positions.input)
    for event in changes:
        event(keywords, [pair, *settings], **shown, api_visibility="private")
    drawn = gr.State(None)  # the serial of the analysis drawn
    first = [template, top_k, content_only, analysis, space, all_positions, drawn]
    draw_on_first_view(_when_in_view, tab, TAB, analysis, current, first, [*outputs, vocabulary, drawn], VIEW_EVENT)
