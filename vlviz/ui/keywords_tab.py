"""The Keywords tab: SIMLA's keywords of each caption and the concepts the model sees in each image.

The tab votes the keywords and scores the concepts with the model that analysed the pairs, and wires the
view (`vlviz.viz.keywords_view`) to its components.
"""

from __future__ import annotations

import gradio as gr

from vlviz.keywords import DEFAULT_TEMPLATE, caption_keywords, check_concept_template, image_concepts
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui.messages import refusal
from vlviz.ui.session import VIEW_EVENT, Session, SessionStates, Updates, draw_on_first_view
from vlviz.viz.keywords_view import IN_CAPTION, KEYWORD, MISSING, keywords_view

VOCABULARIES = {
    "the captions' words and the default concepts": None,
    "the captions' words only": (),
}
CAPTION_WORDS_ONLY = "the captions' words only"
TAB = "Keywords"
ABOUT = (
    "SIMLA (Khan et al., ECCV 2022) picks a caption's **keywords** with the text encoder's last-layer "
    "attention: each head's top 4 words vote and the 5 with the most votes are kept (here the attention "
    "of the end-of-text token, where a CLIP text tower pools; unlike SIMLA's multimodal pass, it has not seen "
    "the image). vlviz lets only real words vote; tick *All positions vote* for SIMLA's vote, where start, "
    "end and punctuation vote too. **Concepts** are the words the model sees "
    "in the image, marked in the caption or missing from it: SIMLA's pseudo-labels. They come from a "
    "trained PSL concept head when the model has one (a Train-tab run with `psl`), else zero-shot prompts."
)


def default_vocabulary(model_name: str) -> str:
    """The concept vocabulary that makes sense for a model: the offline scenes model has only ever seen its
    scenes' words, so zero-shot scores of "forest" or "galaxies" are noise for it; other models get both."""
    return CAPTION_WORDS_ONLY if model_name == OFFLINE_SPEC else next(iter(VOCABULARIES))


class KeywordsTab:
    """The Keywords tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self) -> None:
        """Create the tab's components (inside its gr.Tab)."""
        gr.Markdown(ABOUT)
        with gr.Row():
            self.pair = gr.Dropdown(choices=[], label="Pair", scale=2, elem_id="keywords-pair")
            self.template = gr.Textbox(
                value=DEFAULT_TEMPLATE, label="Zero-shot prompt ({} is the concept)", scale=2,
                elem_id="keywords-template",
            )  # fmt: skip
            self.vocabulary = gr.Radio(
                list(VOCABULARIES), value=next(iter(VOCABULARIES)), label="Concept vocabulary", scale=3,
                elem_id="keywords-vocabulary",
            )  # fmt: skip
        with gr.Row():
            self.top_k = gr.Slider(1, 30, value=10, step=1, label="Concepts shown", elem_id="keywords-top-k")
            self.content_only = gr.Checkbox(
                value=True, label="Leave stop words out of the vote", elem_id="keywords-content"
            )
            self.all_positions = gr.Checkbox(
                value=False, label="All positions vote (SIMLA)", elem_id="keywords-all-positions"
            )
        with gr.Row():
            self.image = gr.Image(
                type="pil", label="Image", interactive=False, height=260, scale=1, elem_id="keywords-image"
            )
            with gr.Column(scale=2):
                self.caption = gr.HighlightedText(
                    label="Caption: the keywords", color_map={KEYWORD: "blue"}, show_legend=True,
                    show_inline_category=False, elem_id="keywords-caption",
                )  # fmt: skip
                self.concepts = gr.HighlightedText(
                    label="Concepts of the image (score)", color_map={IN_CAPTION: "green", MISSING: "orange"},
                    show_legend=True, show_inline_category=False, elem_id="keywords-concepts",
                )  # fmt: skip
                self.notice = gr.Markdown(elem_id="keywords-notice")
        self.table = gr.Dataframe(
            label="Every pair", interactive=False, wrap=True, max_height=360, elem_id="keywords-table"
        )
        with gr.Accordion("Data (JSON): keywords and concepts of every pair", open=False):
            self.data = gr.JSON(label="keywords output")
        # The API takes the pair as a plain number: the dropdown only accepts the choices on screen.
        with gr.Row(visible=False):
            self.api_pair = gr.Number(precision=0, label="Pair (1-based)")
            self.api_run = gr.Button()
        # In the API's order: a new output goes last, so older clients still work.
        self.outputs = [self.caption, self.image, self.concepts, self.pair, self.table, self.notice, self.data]

    def keywords(
        self,
        pair: int | None = None,
        template: str | None = DEFAULT_TEMPLATE,
        vocabulary_choice: str = next(iter(VOCABULARIES)),
        top_k: float = 10,
        content_words_only: bool = True,
        session: Session | None = None,  # this session (gr.State)
        all_positions: bool = False,
    ) -> Updates:
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
        analysis = session.analyzed("the Keywords tab reads their captions and images.")
        pairs = analysis.pairs
        index = 0 if pair is None else int(pair) - 1
        if not 0 <= index < len(pairs):
            raise refusal(f"Pair {pair} does not exist: choose 1 to {len(pairs)}.")
        template = (template or "").strip() or DEFAULT_TEMPLATE
        try:
            check_concept_template(template)
        except ValueError as error:
            raise refusal(error) from error
        model = session.model_of(analysis)
        try:
            found = caption_keywords(
                model.model, model.tokenizer, pairs.captions, content_words_only=content_words_only,
                all_positions=all_positions,
            )  # fmt: skip
        except ValueError as error:
            raise refusal(f"No keywords for `{model.name}`: {error}") from error
        try:
            concepts = image_concepts(
                model, pairs.images, found.layout.words, template, VOCABULARIES[vocabulary_choice]
            )
        except ValueError as error:
            raise refusal(error) from error
        view = keywords_view(
            pairs, index, found, concepts, model.name, template, int(top_k), content_words_only, all_positions
        )
        choices = [(f"{i + 1}. {name}", i + 1) for i, name in enumerate(pairs.names)]
        return {
            self.caption: view.caption,
            self.image: view.image,
            self.concepts: view.concepts,
            self.pair: gr.Dropdown(choices=choices, value=index + 1),
            self.table: view.table,
            self.notice: view.notice,
            self.data: view.data,
        }

    def first_view(
        self, template: str | None, top_k: float, content_words_only: bool, session: Session, all_positions: bool
    ) -> Updates:
        """Show the first pair of a new analysis, with the concept vocabulary that suits its model
        (`default_vocabulary`)."""
        analysis = session.analyzed("the Keywords tab reads their captions and images.")
        vocabulary = default_vocabulary(analysis.model_name)
        shown = self.keywords(None, template, vocabulary, top_k, content_words_only, session, all_positions)
        return shown | {self.vocabulary: vocabulary}


def build_keywords_tab(tab: gr.Tab, states: SessionStates) -> KeywordsTab:
    """Create the tab's components and wire them to `KeywordsTab.keywords`; it shows the first pair of each new
    analysis the first time the tab shows it."""
    view = KeywordsTab()
    shown = dict(outputs=view.outputs, **VIEW_EVENT)
    # The API's argument order (states are no arguments): a new setting goes last, so older calls still work.
    settings = [
        view.template, view.vocabulary, view.top_k, view.content_only, states.session, view.all_positions,
    ]  # fmt: skip
    view.api_run.click(view.keywords, [view.api_pair, *settings], **shown, api_name="keywords")
    changes = (
        view.pair.input, view.template.submit, view.vocabulary.input, view.top_k.release, view.content_only.input,
        view.all_positions.input,
    )  # fmt: skip
    for event in changes:
        event(view.keywords, [view.pair, *settings], **shown, api_visibility="private")
    first = [view.template, view.top_k, view.content_only, states.session, view.all_positions]
    draw_on_first_view(view.first_view, tab, TAB, states, first, [*view.outputs, view.vocabulary], VIEW_EVENT)
    return view
