"""The Keywords view: SIMLA's keywords of every caption and the concepts seen in every image, drawn for one pair.

Data in (the keyword vote, the concept scores, the pairs), the view out: highlighted text, the image for
display, a table of every pair, a notice and the `keywords` API's data. No model calls: the tab computes the
vote (`vlviz.keywords.caption_keywords`) and the scores (`vlviz.keywords.image_concepts`) first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from PIL import Image

from vlviz.data.inputs import PairSet
from vlviz.keywords import CaptionKeywords, ConceptScores, candidate_rule, rank_concepts
from vlviz.viz.html import markdown_text

IN_CAPTION, MISSING = "in the caption", "missing from the caption"
KEYWORD = "keyword"
DISPLAY_SIDE = 256  # pixels: smaller images are enlarged by a whole factor to reach about this

Highlighted = list[tuple[str, str | None]]  # (text, class or None): what a highlighted-text box shows


@dataclass(frozen=True)
class KeywordsView:
    """The Keywords view of one pair of N, with the data of all N."""

    caption: Highlighted  # the pair's words, KEYWORD on its keywords
    image: Image.Image  # the pair's image, small ones enlarged with crisp pixels
    concepts: Highlighted  # its top concepts with their scores, IN_CAPTION or MISSING
    table: pd.DataFrame  # every pair: keywords, top concepts in the caption and missing from it
    notice: str  # Markdown: the tokens that voted in the pair, and where the concept scores come from
    data: dict[str, Any]  # the `keywords` API's data


def concepts_source(concepts: ConceptScores, model_name: str, template: str) -> str:
    """Where the concept scores come from, for the notice (Markdown)."""
    if concepts.trained_head:
        return (
            f"the trained PSL concept head of `{model_name}` (its momentum head's probabilities over its "
            f"{len(concepts.vocabulary)}-word vocabulary: SIMLA's pseudo-labels)"
        )
    return (
        f"zero-shot: the cosine of each image with '{markdown_text(template.format('…'))}' for each of {len(concepts.vocabulary)} "
        "concepts (words a model never learned score unpredictably: the offline scenes model knows only the "
        "words of its scenes, so choose the captions' words for it)"
    )


def displayed(image: Image.Image) -> Image.Image:
    """Small images (scenes are 64 px) enlarged with crisp pixels for display."""
    scale = DISPLAY_SIDE // max(image.size)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) if scale > 1 else image


def keywords_view(
    pairs: PairSet, index: int, found: CaptionKeywords, concepts: ConceptScores, model_name: str, template: str,
    top_k: int = 10, content_words_only: bool = True, all_positions: bool = False,
) -> KeywordsView:  # fmt: skip
    """Pair `index` (0-based) of `pairs` with its keywords (`found`, the vote over every caption, cast as
    `content_words_only` and `all_positions` say) and its `top_k` concepts by `concepts`' scores."""
    words = found.layout.words
    ranked = rank_concepts(concepts.scores, concepts.vocabulary, words, top_k=top_k)
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
    shown = [
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
    rule = candidate_rule(content_words_only, all_positions)
    source = concepts_source(concepts, model_name, template)
    voted = ", ".join(f"'{markdown_text(token)}' ×{votes}" for token, votes in found.voted(index)) or "none"
    notice = f"**Voted** (candidates: {rule}): {voted}.\n\n**Concepts from** {source}."
    data = {
        "model": model_name, "pair": index + 1, "candidates": rule, "concepts_from": source, "template": template,
        "pairs": per_pair,
    }  # fmt: skip
    return KeywordsView(caption, displayed(pairs.images[index]), shown, table, notice, data)
