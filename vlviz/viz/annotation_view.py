"""The grounding score on the user's annotated images as a table, a summary and a CSV: the Grounding tab's
annotations view of `vlviz.grounding.annotations.annotation_grounding`'s dict. No model calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vlviz.viz.html import markdown_list, markdown_text
from vlviz.viz.safe_csv import write_csv
from vlviz.viz.views import MAP_LABELS

ALL_OBJECTS = "all objects"  # the table's first row of each method: every scored object together
FIGURES = {  # the table's columns: `word_figures`'s keys, each beside the untrained model's where it has a baseline
    "words": "words",
    "pointing_game": "pointing game",
    "mass_in_mask": "mass in mask",
    "object_accuracy": "object accuracy",
    "chance": "chance",
    "object_chance": "object chance",
}
BASELINED = ("pointing_game", "mass_in_mask", "object_accuracy")


@dataclass(frozen=True)
class AnnotationView:
    """The annotations view: one row per method and category (all objects first), and what was scored."""

    table: pd.DataFrame
    summary: str  # Markdown: images, objects, how each was read, the reading's notices


def _row(kind: str, category: str, figures: dict[str, float], untrained: dict[str, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"method": MAP_LABELS.get(kind, kind), "category": category}
    for key, label in FIGURES.items():
        row[label] = figures[key] if key == "words" else round(figures[key], 4)
        if key in BASELINED and untrained is not None:
            row[f"{label} (untrained)"] = round(untrained[key], 4)
    return row


def annotation_table(result: dict[str, Any]) -> pd.DataFrame:
    """`annotation_grounding`'s figures per method, over all objects and per category (those with a scored word)."""
    rows = []
    for kind, scores in result["scores"].items():  # a handful of methods, a few dozen categories each
        baseline = result.get("untrained", {}).get(kind)
        rows.append(_row(kind, ALL_OBJECTS, scores["all"], baseline["all"] if baseline else None))
        for category, figures in scores["categories"].items():
            if figures["words"]:
                rows.append(_row(kind, category, figures, baseline["categories"][category] if baseline else None))
    return pd.DataFrame(rows)


def annotation_view(
    result: dict[str, Any], model_name: str, source: str, not_scored: dict[str, str] | None = None
) -> AnnotationView:
    """The table and a summary of `result` (scored by `model_name` on `source`, the uploaded file's name); `not_scored`:
    the methods the model cannot draw, and why."""
    query = "its image's own caption" if result["query"] == "captions" else f"the caption {result['query']!r}"
    scored = f"{result['images']:,} images, {result['objects']:,} objects"
    summary = (
        f"**{markdown_text(model_name)}** on {markdown_text(source)} ({result['format']}): {scored}, "
        f"each category's name read in {markdown_text(query)}; "
        f"{result['not_named']:,} not named, {result['outside_crop']:,} cut away by the model's crop. A patch is on an "
        f"object when {result['min_cover']:.0%} of it is. Pointing game: the share of names whose peak patch lies on "
        "their object; mass in mask: the map's share on it; object accuracy: among peaks on some object, the share "
        "on the named one. Each beside the untrained model of the same architecture."
    )
    notices = [*result["notices"], *(f"Not scored: {MAP_LABELS[k]}: {why}" for k, why in (not_scored or {}).items())]
    return AnnotationView(annotation_table(result), summary + ("\n\n" + markdown_list(notices) if notices else ""))


def write_annotation_csv(table: pd.DataFrame, folder: Path) -> Path:
    """The table as `grounding_annotations.csv` in `folder`, category names kept from running as formulas."""
    path = folder / "grounding_annotations.csv"
    write_csv(table, path, index=False)
    return path
