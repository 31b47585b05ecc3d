"""The Grounding view of one pair: where each word of a caption (or typed text) lands on its image, the trained XMM
head's view of the chosen word, the grounding score on bundled scenes, and a second model's map beside it; and
the every-method view, the chosen word by each map method side by side.

Data in (the maps, the XMM attention, the score, the second model's maps, each computed by the tab with its
model), the view out: figures, Markdown and the `grounding` and `every_method` APIs' data. No model calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from vlviz.grounding.maps import MIN_COVER, BundledScore, CaptionMaps
from vlviz.losses.xmm import WordAttention
from vlviz.viz.html import markdown_text
from vlviz.viz.tables import grounding_score_markdown
from vlviz.viz.talk import GroundingPanel, every_method_figure
from vlviz.viz.views import MAP_LABELS, attention_overlay, grounding_view, word_overlay


@dataclass(frozen=True)
class Compared:
    """A second model's reading of the same image and text: its maps and the image as it sees it, or why none."""

    model_name: str
    maps: CaptionMaps | None
    image: np.ndarray | None  # (H, W, 3) uint8, as the second model sees it
    reason: str | None = None  # why there are no maps (a tower without patch tokens)


@dataclass(frozen=True)
class PairGrounding:
    """The Grounding view of one pair."""

    overlay: go.Figure  # the chosen word's map over the image as the model sees it
    grid: go.Figure  # every word's map
    matrix: go.Figure  # the token x patch matrix
    words: list[str]
    word: int  # the chosen word, 0-based
    notice: str  # Markdown: the typed text grounded, or why a comparison has no map
    xmm: go.Figure | None  # the trained XMM head's cross-attention to the chosen word, masked; None without a head
    xmm_notice: str  # Markdown: what the XMM map shows, or why there is none
    score: str  # Markdown: the grounding score on the pairs that are bundled scenes; empty when none are
    comparison: go.Figure | None  # the chosen word's map by the second model; None without one
    data: dict[str, Any]  # the `grounding` API's data


def grounding_of(model_name: str, pair: int, image_name: str, text: str) -> dict[str, Any]:
    """The start of the `grounding` API's data: which model grounded which text in which image (pair 1-based)."""
    return {"model": model_name, "pair": pair, "image": image_name, "text": text}


def pair_grounding(
    head: dict[str, Any], maps: CaptionMaps, image: np.ndarray, word: int | None, opacity: float, typed: bool,
    xmm: WordAttention | None, grid_size: tuple[int, int], score: BundledScore | None, compared: Compared | None,
) -> PairGrounding:  # fmt: skip
    """Draw `maps` (of `head`'s text, by `head`'s model) over `image` (as the model sees it), word `word` large (None
    or out of range: the first content word); `typed`: the text is not the pair's caption. `xmm`: the trained XMM
    head's attention on the original image (patch grid `grid_size`), if the model has one; `score`: its score on
    the bundled scenes among the pairs; `compared`: a second model's reading, if asked for."""
    words, model_name = maps.words, head["model"]
    chosen = word if word is not None and 0 <= int(word) < len(words) else maps.first_word
    view = grounding_view(maps, image, chosen, opacity, model=model_name if compared else "")
    xmm_figure, xmm_notice, xmm_data = _xmm_view(xmm, model_name, image, grid_size, chosen, opacity)
    score_text = (
        grounding_score_markdown(score.scores, score.untrained, MAP_LABELS[maps.kind], score.scenes, MIN_COVER)
        if score
        else ""
    )
    notice = f"Grounding the typed text {markdown_text(repr(head['text']))} in image {head['pair']}." if typed else ""
    comparison, compare_data = _compare_view(compared, maps, chosen, opacity)
    if compare_data and "reason" in compare_data:
        notice = f"{notice}\n\n{compare_data['reason']}".strip()
    data = head | {
        "kind": maps.kind,
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
    return PairGrounding(
        view.overlay, view.grid, view.matrix, words, chosen, notice, xmm_figure, xmm_notice, score_text, comparison,
        data,
    )  # fmt: skip


def _xmm_view(
    found: WordAttention | None, model_name: str, image: np.ndarray, grid_size: tuple[int, int], word: int,
    opacity: float,
) -> tuple[go.Figure | None, str, dict[str, Any]]:  # fmt: skip
    """The trained XMM head's cross-attention from the masked word to the patches, or why there is none."""
    if found is None:
        reason = (
            f"No XMM map: `{model_name}` has no trained XMM head. Train with `xmm` (weight above 0) in the "
            "Train tab and use that run's checkpoint as the model to see one here."
        )
        return None, reason, {"available": False, "reason": reason}
    maps = found.patch_maps.cpu()  # (W, P)
    chosen = found.layout.words[0][word]
    figure = attention_overlay(image, maps[word], grid_size, chosen, opacity)
    notice = (
        f"Where the trained XMM fusion head looks for '{markdown_text(chosen)}' when it is masked (the last fusion layer's "
        f"cross-attention, heads averaged); {float(found.global_share[word]):.0%} of it goes to the global image "
        "embedding, the rest to the patches shown."
    )
    data = {"available": True, "word_maps": maps.tolist(), "global_share": found.global_share.cpu().tolist()}
    return figure, notice, data


def _compare_view(
    compared: Compared | None, maps: CaptionMaps, chosen: int, opacity: float
) -> tuple[go.Figure | None, dict[str, Any] | None]:
    """The chosen word's map by the second model, and its data (None: no comparison).

    The other model's tokenizer may split the text into other words; the word is then found by its
    text, and when it is missing the data says why instead of drawing another word.
    """
    if compared is None:
        return None, None
    if compared.maps is None or compared.image is None:
        return None, {"model": compared.model_name, "reason": compared.reason}
    other, word = compared.maps, maps.words[chosen]
    if other.words == maps.words:
        index = chosen
    elif word in other.words:
        index = other.words.index(word)
    else:
        return None, {
            "model": compared.model_name,
            "reason": f"`{compared.model_name}` reads no word '{word}' in this text.",
        }
    figure = word_overlay(other, compared.image, index, opacity, model=compared.model_name)
    data = {
        "model": compared.model_name,
        "words": other.words,
        "word": index,
        "word_maps": other.word_maps.flatten(1).tolist(),
    }
    return figure, data


EVERY_METHOD_COLUMNS = 4  # panels a row in the every-method view


@dataclass(frozen=True)
class EveryMethod:
    """The every-method view of one pair and word."""

    figure: go.Figure  # the word by each method, titled with its pointing game; refused methods say why
    word: int  # the chosen word, 0-based
    notice: str  # Markdown: what the titles' scores are, and which methods were not drawn
    data: dict[str, Any]  # the `every_method` API's data


def every_method_view(
    head: dict[str, Any], panel: GroundingPanel, refused: dict[str, str], word: int | None, scenes: int
) -> EveryMethod:
    """`panel`'s maps of `head`'s text, word `word` (None or out of range: the first content word) by each method
    side by side (`every_method_figure`, the talk's figure), with the kinds the model refused and why; `scenes`:
    the bundled scenes among the pairs, which the titles' pointing games are scored on."""
    first = next(iter(panel.maps.values()))
    chosen = word if word is not None and 0 <= int(word) < len(first.words) else first.first_word
    figure = every_method_figure(panel, chosen, columns=EVERY_METHOD_COLUMNS, refused=refused)
    panels = len(panel.maps) + len(refused)
    for title in figure.layout.annotations[:panels]:  # the method on one line, its score on the next: names are long
        title.text = title.text.replace(" · ", "<br>", 1)
    figure.update_layout(height=90 + 170 * -(-panels // EVERY_METHOD_COLUMNS))
    scored = (
        f"Each title carries the method's pointing game for colour words on the {scenes} loaded bundled scenes "
        "(the share whose peak patch lies on the object the word names)."
        if scenes
        else "No pair is a bundled scene, so no pointing game is shown: analyze the sample scenes to see each score."
    )
    notes = [f"Not drawn: {MAP_LABELS[kind]}: {markdown_text(reason)}" for kind, reason in refused.items()]
    kinds: dict[str, dict[str, Any]] = {
        kind: {
            "label": MAP_LABELS[kind],
            "pointing": panel.pointing.get(kind),
            "word_map": maps.word_maps[chosen].flatten().tolist(),
        }
        for kind, maps in panel.maps.items()
    }
    kinds |= {kind: {"label": MAP_LABELS[kind], "reason": reason} for kind, reason in refused.items()}
    data = head | {"grid_size": list(first.grid_size), "words": first.words, "word": chosen, "scenes": scenes}
    return EveryMethod(figure, chosen, "\n\n".join([scored, *notes]), data | {"kinds": kinds})
