"""The Consistency tab: SaCo's affinity inconsistency between the image side and the text side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from vlviz.metrics.consistency import DEFAULT_TEMPERATURE
from vlviz.models.encoding import EncodedPairs
from vlviz.ui.messages import refusal
from vlviz.ui.session import (
    ANALYSIS_EVENT,
    SESSIONS,
    Session,
    SessionStates,
    Updates,
    downloads_row,
    draw_on_first_view,
)
from vlviz.viz.exports import write_consistency_files
from vlviz.viz.html import markdown_list, top_pairs_html
from vlviz.viz.tables import consistency_table
from vlviz.viz.views import HEATMAP_PAGE, ConsistencyView, consistency_view

TAB = "Consistency"
ORDERINGS = ["clustered", "input order"]
VIEWS = ["absolute |A_I − A_T|", "signed A_I − A_T"]
ABOUT = """Two images that look alike should be as similar as the captions that describe them (SaCo,
Wu et al. CVPR 2024). **A_I** compares images with images, **A_T** captions with captions (cosine);
the inconsistency is |A_I − A_T| for every two samples i ≠ j. SaCo's exact distance is not public:
vlviz shows the mean absolute difference, correlations and a symmetric KL of row softmaxes."""


@dataclass(frozen=True, eq=False)
class Shown:
    """The view on screen, kept so that its files are written from exactly what was drawn."""

    view: ConsistencyView
    data: dict[str, Any]
    encoded: EncodedPairs


class ConsistencyTab:
    """The Consistency tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self) -> None:
        """Create the tab's components (inside its gr.Tab)."""
        gr.Markdown(ABOUT)
        with gr.Row():
            self.ordering = gr.Radio(ORDERINGS, value=ORDERINGS[0], label="Heatmap order", elem_id="consistency-order")
            self.view_kind = gr.Radio(
                VIEWS, value=VIEWS[0], label="Inconsistency heatmap shows", elem_id="consistency-view"
            )
            self.top_k = gr.Slider(1, 50, value=8, step=1, label="Most inconsistent pairs to show")
            self.temperature = gr.Number(value=DEFAULT_TEMPERATURE, minimum=0.001, label="KL temperature τ")
        self.run = gr.Button("Compute consistency", variant="primary", elem_id="consistency-button")
        self.notices = gr.Markdown(elem_id="consistency-notices")
        self.table = gr.Dataframe(label="Global figures (all pairs i ≠ j)", interactive=False, wrap=True)
        with gr.Row():
            self.image_plot = gr.Plot(label="A_I", elem_id="consistency-image-plot")
            self.text_plot = gr.Plot(label="A_T", elem_id="consistency-text-plot")
        self.inconsistency_plot = gr.Plot(label="Inconsistency", elem_id="inconsistency-plot")
        self.scatter_plot = gr.Plot(label="A_T against A_I", elem_id="affinity-scatter-plot")
        gr.Markdown("### Most inconsistent pairs")
        self.top = gr.HTML(elem_id="inconsistent-pairs", js_on_load=None)
        self.prepare, self.downloads = downloads_row(
            "consistency", "figures (HTML; zip: CSV + redraw.py), CSV/JSON, .npz matrices"
        )
        with gr.Accordion("Data (JSON): figures, per-sample inconsistency, top pairs", open=False):
            self.data = gr.JSON(label="consistency output")
        self.shown = gr.State(None)  # `Shown`
        # In the API's order (states are no outputs there): a new output goes last, so older clients still work.
        self.outputs = [
            self.image_plot, self.text_plot, self.inconsistency_plot, self.scatter_plot, self.table, self.top,
            self.downloads, self.data, self.notices, self.shown,
        ]  # fmt: skip

    def consistency(
        self,
        ordering: str = ORDERINGS[0],
        view_kind: str = VIEWS[0],
        top_k: float = 8,
        temperature: float = DEFAULT_TEMPERATURE,
        session: Session | None = None,  # this session (gr.State)
        request: gr.Request | None = None,  # filled in by Gradio
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's documented idiom)
    ) -> Updates:
        """SaCo's affinity consistency of the pairs last analyzed: do images that look alike have captions that read alike? (the `consistency` API)

        A_I = cos(image i, image j) and A_T = cos(caption i, caption j) on L2-normalised embeddings, over every
        two pairs i != j (at least 2 pairs). Every figure covers all N pairs; the heatmaps show at most 300
        (a seeded random subset beyond that).

        Args:
            ordering: the heatmaps' order: 'clustered' (average linkage on 1 - (A_I + A_T) / 2) or 'input order'.
            view_kind: the inconsistency heatmap: 'absolute |A_I − A_T|' or 'signed A_I − A_T' (positive: the images agree more than their captions).
            top_k: how many of the most inconsistent pairs to list, 1 to 50.
            temperature: τ > 0 of the row softmaxes in the symmetric KL (default 0.1).

        Returns:
            [0] the A_I heatmap, plotly figure JSON
            [1] the A_T heatmap, plotly JSON
            [2] the inconsistency heatmap, plotly JSON
            [3] a scatter of A_T against A_I (one point per pair i < j), plotly JSON
            [4] a table of the global figures: pairs N, mean |A_I − A_T| (0 = consistent, at most 2), Pearson r and Spearman ρ between A_I and A_T (in [-1, 1]), symmetric KL (≥ 0)
            [5] HTML of the most inconsistent pairs with their images and captions
            [6] None (the downloads: call consistency_downloads)
            [7] the data: model, names, captions, figures (pairs, mean_abs_inconsistency, pearson, spearman, symmetric_kl, temperature, spearman_pairs, spearman_exact), sample_inconsistency (N: each sample's mean |A_I − A_T| over j != i), top_pairs (rank, i, j (1-based), their images and captions, A_I, A_T, |A_I − A_T|), heatmap_samples (0-based), notes
            [8] notices (e.g. which samples the heatmaps show)
        """
        with session.exclusive("analysis"):  # a second one of this session is refused, not queued
            SESSIONS.bind(session, request)
            encoded = session.analyzed("the Consistency tab compares the pairs last analyzed.").encoded
            pairs = encoded.pairs
            if len(pairs) < 2:
                raise refusal("Consistency compares samples with each other: give at least 2 image-caption pairs.")
            if temperature is None or temperature <= 0:
                raise refusal(f"The KL temperature must be positive, got {temperature}.")
            progress(0.6, desc="Comparing affinities")
            view = consistency_view(
                encoded.image_features,
                encoded.text_features,
                pairs.names,
                pairs.captions,
                k=int(top_k),
                temperature=float(temperature),
                clustered=ordering == ORDERINGS[0],
                signed=view_kind == VIEWS[1],
                max_heatmap=HEATMAP_PAGE,
            )
            data = {"model": encoded.model_name, **view.to_dict(pairs.names, pairs.captions)}
            return {
                self.image_plot: view.image_heatmap,
                self.text_plot: view.text_heatmap,
                self.inconsistency_plot: view.inconsistency_heatmap,
                self.scatter_plot: view.scatter,
                self.table: consistency_table(view.summary.figures),
                self.top: top_pairs_html(view.summary.top_pairs, pairs.images, pairs.names, pairs.captions),
                self.downloads: None,
                self.data: data,
                self.notices: markdown_list([*encoded.notices, *view.notes]),
                self.shown: Shown(view, data, encoded),
            }

    def consistency_downloads(self, shown: Shown | None, session: Session) -> list[str]:
        """Write the Consistency view last drawn (by `consistency`) as files (the `consistency_downloads` API).

        Returns:
            the files, each with a URL: consistency.html (the figures), consistency.json (the consistency data), samples.csv (per-sample inconsistency), top_pairs.csv, consistency_figures.zip (each figure's numbers and a script that redraws it) and, for N up to 4,096, affinities.npz (A_I and A_T).
        """
        if shown is None:
            raise refusal("Draw the Consistency view first: the downloads hold what it shows.")
        encoded, pairs = shown.encoded, shown.encoded.pairs
        paths = write_consistency_files(
            session.export_folder("consistency"), shown.view, shown.data, encoded.image_features,
            encoded.text_features, pairs.images, pairs.names, pairs.captions,
        )  # fmt: skip
        return [str(path) for path in paths]


def build_consistency_tab(tab: gr.Tab, states: SessionStates) -> ConsistencyTab:
    """Create the tab's components and wire them to `ConsistencyTab.consistency`, reading the session's analysis.

    The view draws itself the first time the tab shows a new analysis; its controls redraw it.
    """
    view = ConsistencyTab()
    inputs = [view.ordering, view.view_kind, view.top_k, view.temperature, states.session]
    view.run.click(view.consistency, inputs, view.outputs, api_name="consistency", **ANALYSIS_EVENT)
    for control in (view.ordering, view.view_kind):
        control.change(view.consistency, inputs, view.outputs, api_visibility="private", **ANALYSIS_EVENT)
    draw_on_first_view(view.consistency, tab, TAB, states, inputs, view.outputs)
    view.prepare.click(
        view.consistency_downloads, [view.shown, states.session], view.downloads, api_name="consistency_downloads",
        **ANALYSIS_EVENT,
    )  # fmt: skip
    return view
