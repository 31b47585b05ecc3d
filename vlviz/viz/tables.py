"""Tables of the views' figures: pandas frames for the app's dataframes, the report and the CSV exports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from vlviz.grounding.maps import UNTRAINED_SEED
from vlviz.metrics.affinity import AffinityReport, recall_at_k
from vlviz.metrics.consistency import ConsistencyFigures, InconsistentPairs


def consistency_table(figures: ConsistencyFigures) -> pd.DataFrame:
    """The global figures as a small table: figure, value, what it says."""
    spearman = "Spearman ρ(A_I, A_T)"
    if not figures.spearman_exact:
        spearman += f" (on {figures.spearman_pairs:,} sampled pairs)"
    rows = [
        ("pairs N", f"{figures.pairs}", "image-caption pairs compared"),
        ("mean |A_I − A_T|", number(figures.mean_abs_inconsistency), "SaCo inconsistency over i ≠ j (0 = consistent)"),
        ("Pearson r(A_I, A_T)", number(figures.pearson), "linear agreement of the two affinities (1 = perfect)"),
        (spearman, number(figures.spearman), "agreement of their orderings (1 = same ranking)"),
        (
            f"symmetric KL, τ = {figures.temperature:g}",
            number(figures.symmetric_kl),
            "KL(p‖q) + KL(q‖p) of row softmaxes over j ≠ i, mean over rows",
        ),
    ]
    return pd.DataFrame(rows, columns=["figure", "value", "meaning"])


def top_pairs_table(top: InconsistentPairs, names: Sequence[str], captions: Sequence[str]) -> pd.DataFrame:
    """The most inconsistent pairs, one row each, most inconsistent first."""
    rows = []
    for rank, (i, j, a_i, a_t) in enumerate(
        zip(top.first.tolist(), top.second.tolist(), top.image_affinity.tolist(), top.text_affinity.tolist()), 1
    ):
        rows.append(
            {
                "rank": rank,
                "i": i + 1,
                "image i": names[i],
                "caption i": captions[i],
                "j": j + 1,
                "image j": names[j],
                "caption j": captions[j],
                "A_I": round(a_i, 4),
                "A_T": round(a_t, 4),
                "|A_I − A_T|": round(abs(a_i - a_t), 4),
            }
        )
    return pd.DataFrame(rows)


def gap_table(report: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """The modality gap and alignment figures before and after closing the gap."""
    rows = {
        "gap": ("modality gap ‖Δ‖", "‖mean image − mean caption‖ (Liang et al. 2022)"),
        "matched_cosine": ("matched cosine", "mean cos(image i, caption i)"),
        "unmatched_cosine": ("unmatched cosine", "mean cos(image i, caption j), i ≠ j"),
        "image_to_text_r1": ("image → text R@1", "share of images whose own caption is the nearest (ties: a miss)"),
        "text_to_image_r1": ("caption → image R@1", "share of captions whose own image is the nearest"),
    }
    return pd.DataFrame(
        [
            {"figure": name, "as trained": number(report["before"][key]), "gap closed": number(report["after"][key]),
             "meaning": meaning}
            for key, (name, meaning) in rows.items()
        ]
    )  # fmt: skip


def ranks_table(report: AffinityReport, names: Sequence[str], captions: Sequence[str]) -> pd.DataFrame:
    """Every pair's retrieval ranks of its partners (1 = best), own-pair cosine and probability, then its texts.

    The numbers come first and the long texts last, so that a narrow table still shows the ranks.
    """
    return pd.DataFrame(
        {
            "#": range(1, len(names) + 1),
            "image→text rank": report.image_to_text_rank.numpy(),
            "text→image rank": report.text_to_image_rank.numpy(),
            "cos(own pair)": report.own_cosine.numpy().round(3),
            "P(own caption | image)": report.own_probability.numpy().round(3),
            "image": list(names),
            "caption": list(captions),
        }
    )


def retrieval_table(image_to_text: torch.Tensor, text_to_image: torch.Tensor, matched: torch.Tensor) -> pd.DataFrame:
    """R@1 both ways, the median rank of the own caption and the mean matched cosine, over all pairs."""
    return pd.DataFrame(
        [
            ("image → caption R@1", f"{recall_at_k(image_to_text, 1):.4f}"),
            ("caption → image R@1", f"{recall_at_k(text_to_image, 1):.4f}"),
            ("median rank of the own caption", f"{float(image_to_text.float().median()):.0f}"),
            ("mean cos(image i, caption i)", f"{float(matched.float().mean()):.4f}"),
        ],
        columns=["figure", "value"],
    )


def number(value: float | None, digits: int = 4) -> str:
    """A figure for a table: `digits` decimals, or n/a when undefined (None or NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def grounding_score_markdown(
    scores: dict[str, dict[str, float]],
    untrained: dict[str, dict[str, float]],
    label: str,
    n_scenes: int,
    min_cover: float,
) -> str:
    """The grounding score per word class as a Markdown table, beside the untrained model of the same
    architecture, uniform chance over patches and object-level chance: objects stand out from the
    background, so finding an object is not knowing which one a word names."""
    rows = "\n".join(
        f"| {name} | {who} | {s['pointing_game']:.3f} | {s['mass_in_mask']:.3f} | {s['chance']:.3f} "
        f"| {number(s['object_accuracy'], 3)} | {s['object_chance']:.3f} | {s['on_object']} of {s['words']} |"
        for name in scores
        for who, s in (("this model", scores[name]), ("untrained", untrained[name]))
    )
    return (
        f"**Grounding score** of this model's {label} on the {n_scenes} loaded bundled scenes, "
        f"against their object masks (a patch is inside an object when at least {min_cover:.0%} of it is), "
        f"beside the same architecture untrained (random weights, seed {UNTRAINED_SEED}). *Uniform chance*: "
        "a patch picked at random; *object accuracy*: of the words whose peak patch lies on some object, the "
        "share on the one named; *object chance*: one of the scene's objects picked at random.\n\n"
        "| word class | model | pointing game | mass in mask | uniform chance | object accuracy | object chance "
        "| peak on an object |\n|---|---|---|---|---|---|---|---|\n" + rows
    )
