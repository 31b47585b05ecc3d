"""The Embedding-space tab: images and captions together in 2-D, and the modality gap.

Gradio's gr.Plot reports no selection events (only `change`). A small gr.HTML bridge listens to
plotly's own `plotly_selected` event on the plot in the browser and sends the selected pair
numbers to the server, which fills the sample picker; the picker (also usable by itself) rings
the samples in the plot and lists them below it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from vlviz.data.inputs import PairSet
from vlviz.embedding.layout_worker import LayoutWorker, LayoutWorkerError
from vlviz.embedding.space import MIN_UMAP_POINTS, UMAP_METRICS, EmbeddingLayout, LayoutSettings
from vlviz.metrics.affinity import own_pair_cosines
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
    pairs_state,
)
from vlviz.viz.exports import write_embedding_files
from vlviz.viz.figures import embedding_scatter
from vlviz.viz.html import markdown_list
from vlviz.viz.tables import gap_table
from vlviz.viz.views import EmbeddingView, embedding_view

TAB = "Embedding space"
LAYOUT_WORKER = LayoutWorker()  # UMAP fits in a child process (see vlviz.embedding.layout_worker); started at app start
METHODS = ["umap", "pca"]
ABOUT = """Images (circles) and captions (diamonds) of every pair in one 2-D map; a line joins each image
to its caption. The **modality gap** (Liang et al., NeurIPS 2022) is the distance between the two
clouds' centres: *close the gap* shifts each modality halfway towards the other, so what remains
between them is alignment. *Keep layout* projects later embeddings into the frame fitted first.
Select points with the lasso or box tool to list their pairs below the plot."""

# Runs once in the browser: (re)attach a `plotly_selected` listener whenever the plot is redrawn,
# and report the pair numbers of the selected images and captions as this component's value.
LASSO_BRIDGE_JS = """
const report = (event) => {
    const picked = new Set();
    for (const point of (event && event.points) || []) {
        if (point.data.name === "images" || point.data.name === "captions") picked.add(point.pointIndex);
    }
    if (picked.size === 0) return;
    props.value = JSON.stringify([...picked].sort((a, b) => a - b));
    trigger("change");
};
const listen = () => {
    const plot = document.querySelector("#embedding-plot .js-plotly-plot");
    if (!plot || typeof plot.on !== "function") return;
    plot.removeListener("plotly_selected", report);
    plot.on("plotly_selected", report);
};
new MutationObserver(listen).observe(document.getElementById("embedding-plot") || document.body,
                                     {childList: true, subtree: true});
listen();
"""


@dataclass(frozen=True, eq=False)
class Drawn:
    """The view on screen: what the picker needs to redraw and list samples, and the downloads to write."""

    encoded: EncodedPairs
    view: EmbeddingView
    data: dict[str, Any]
    matched_cosine: list[float]  # cos(image i, caption i)

    @property
    def pairs(self) -> PairSet:
        return self.encoded.pairs


def sample_labels(pairs: PairSet) -> list[str]:
    """Picker entries: number, file name and the start of the caption."""
    return [f"{i + 1}. {name} · {caption[:50]}" for i, (name, caption) in enumerate(zip(pairs.names, pairs.captions))]


class EmbeddingTab:
    """The Embedding-space tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self) -> None:
        """Create the tab's components (inside its gr.Tab)."""
        gr.Markdown(ABOUT)
        with gr.Row():
            self.method = gr.Radio(METHODS, value="umap", label="Layout", elem_id="embedding-method")
            self.n_neighbors = gr.Slider(2, 100, value=15, step=1, label="UMAP neighbours")
            self.min_dist = gr.Slider(0.0, 0.99, value=0.1, step=0.01, label="UMAP min distance")
            self.metric = gr.Dropdown(list(UMAP_METRICS), value="cosine", label="UMAP metric")
            self.seed = gr.Number(value=0, precision=0, label="Seed")
        with gr.Row():
            self.close_gap = gr.Checkbox(label="Close the modality gap", elem_id="close-gap")
            self.keep_layout = gr.Checkbox(label="Keep layout (project new embeddings into the first fit)")
            self.run = gr.Button("Draw embedding space", variant="primary", elem_id="embedding-button")
        self.notices = gr.Markdown(elem_id="embedding-notices")
        self.plot = gr.Plot(label="Joint embedding space", elem_id="embedding-plot")
        self.lasso = gr.HTML("", html_template="", js_on_load=LASSO_BRIDGE_JS, elem_id="embedding-lasso")
        self.gap = gr.Dataframe(label="Modality gap and alignment, before and after closing the gap", interactive=False)
        self.picker = gr.Dropdown(
            choices=[], value=[], multiselect=True, label="Pick samples to ring in the plot and list below",
            elem_id="embedding-picker",
        )  # fmt: skip
        self.picked = gr.Gallery(
            label="Picked samples", columns=6, height="auto", object_fit="contain", elem_id="picked-samples"
        )
        self.prepare, self.downloads = downloads_row(
            "embedding", "figure (HTML; zip: CSV + redraw.py), CSV/JSON, .npz embeddings"
        )
        with gr.Accordion("Data (JSON): 2-D coordinates and the gap figures", open=False):
            self.data = gr.JSON(label="embedding_space output")
        self.kept_layout = gr.State(None)  # the layout fitted first, for "keep layout"
        self.drawn = pairs_state()  # `Drawn`
        # In the API's order (states are no outputs there): a new output goes last, so older clients still work.
        self.outputs = [
            self.plot, self.gap, self.notices, self.picker, self.picked, self.downloads, self.data, self.kept_layout,
            self.drawn,
        ]  # fmt: skip

    def embedding_space(
        self,
        method: str = "umap",
        n_neighbors: float = 15,
        min_dist: float = 0.1,
        metric: str = "cosine",
        seed: float = 0,
        close_gap: bool = False,
        keep_layout: bool = False,
        kept: EmbeddingLayout | None = None,
        session: Session | None = None,  # this session (gr.State)
        request: gr.Request | None = None,  # filled in by Gradio
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's documented idiom)
    ) -> Iterator[Updates]:
        """Lay the images and captions of the pairs last analyzed out in 2-D, and measure the modality gap (the `embedding_space` API).

        While the process's first UMAP still compiles, a PCA map comes first and the UMAP follows (a tool
        call returns the last). The gap figures use the embeddings themselves, not the 2-D layout.

        Args:
            method: 'umap' or 'pca' (UMAP needs enough points; fewer fall back to PCA with a note).
            n_neighbors: UMAP's neighbours, 2 to 100.
            min_dist: UMAP's minimum distance, 0 to 0.99.
            metric: UMAP's metric: 'cosine', 'euclidean' or 'correlation'.
            seed: the random seed of the layout (an integer).
            close_gap: shift each modality halfway towards the other before the layout (Liang et al. 2022), so what remains is alignment.
            keep_layout: place the embeddings in the layout fitted by this session's previous call instead of fitting anew.

        Returns:
            [0] the map: images (circles) and captions (diamonds), each image joined to its caption, as plotly figure JSON
            [1] a table of the modality gap ‖mean image − mean caption‖, the matched cosine (mean cos(image i, caption i)), the unmatched cosine (i != j) and both R@1 (shares in [0, 1]), as trained and with the gap closed
            [2] notices (e.g. UMAP fell back to PCA)
            [3] the sample picker's choices (for the browser)
            [4] an empty gallery (the picked samples, for the browser)
            [5] None (the downloads: call embedding_downloads)
            [6] the data: model, gap_closed, names, captions, method, note, axis_titles, image_xy and caption_xy (N x 2 coordinates each, pair i in row i), gap (before and after closing it: gap, matched_cosine, unmatched_cosine, image_to_text_r1, text_to_image_r1)
        """
        with session.exclusive("analysis"):  # a second one of this session is refused, not queued
            SESSIONS.bind(session, request)
            encoded = session.analyzed("the Embedding-space tab lays out the pairs last analyzed.").encoded
            pairs, images, texts = encoded.pairs, encoded.image_features, encoded.text_features
            notes = list(encoded.notices)
            layout = kept if keep_layout else None
            if layout is not None and layout.dimension != images.shape[1]:
                notes.append(f"The kept layout was fitted on {layout.dimension}-d embeddings; this model gives {images.shape[1]}-d, so it was refitted.")  # fmt: skip
                layout = None
            try:
                settings = LayoutSettings(method, int(n_neighbors), float(min_dist), metric, int(seed))
                if (
                    method == "umap"
                    and layout is None
                    and 2 * len(pairs) >= MIN_UMAP_POINTS
                    and not LAYOUT_WORKER.ready.is_set()
                ):
                    # The first UMAP of the process still compiles: show PCA at once, then UMAP when it is ready.
                    pca = replace(settings, method="pca")
                    first = embedding_view(images, texts, pairs.names, pairs.captions, pca, close_gap=close_gap)
                    waiting = (
                        "UMAP is compiling its code (the first map since the app started): PCA shown until it is ready."
                    )
                    yield self._drawn(encoded, first, close_gap, [*notes, waiting])
                    progress(0.4, desc="Fitting the UMAP layout (the first one compiles numba code)")
                view = embedding_view(
                    images, texts, pairs.names, pairs.captions, settings, close_gap=close_gap, layout=layout,
                    fit=LAYOUT_WORKER.fit_layout,
                )  # fmt: skip
            except (ValueError, LayoutWorkerError) as error:
                raise refusal(error) from error
            yield self._drawn(encoded, view, close_gap, notes)

    def _drawn(self, encoded: EncodedPairs, view: EmbeddingView, close_gap: bool, notes: list[str]) -> Updates:
        """The tab's updates for a drawn view: figure, gap table, notices, picker, picked, downloads, data, states."""
        pairs = encoded.pairs
        notes = [*notes, *([view.layout.note] if view.layout.note else [])]
        data = {"model": encoded.model_name, "gap_closed": close_gap, **view.to_dict(pairs.names, pairs.captions)}
        matched = own_pair_cosines(encoded.image_features, encoded.text_features).cpu().tolist()
        return {
            self.plot: view.figure,
            self.gap: gap_table(view.gap),
            self.notices: markdown_list(notes),
            self.picker: gr.update(choices=sample_labels(pairs), value=[]),
            self.picked: [],
            self.downloads: None,
            self.data: data,
            self.kept_layout: view.layout,
            self.drawn: Drawn(encoded, view, data, matched),
        }

    def embedding_downloads(self, drawn: Drawn | None, session: Session) -> list[str]:
        """Write the embedding map last drawn (by `embedding_space`) as files (the `embedding_downloads` API).

        Returns:
            the files, each with a URL: embedding.html (the map), embedding.json (the embedding_space data), embedding.csv (2-D coordinates), embeddings.npz (the image and caption embeddings), embedding_figures.zip (the map's numbers and a script that redraws it).
        """
        if drawn is None:
            raise refusal("Draw the embedding space first: the downloads hold what it shows.")
        encoded, pairs = drawn.encoded, drawn.pairs
        paths = write_embedding_files(
            session.export_folder("embedding"), drawn.view, drawn.data, encoded.image_features, encoded.text_features,
            pairs.names, pairs.captions,
        )  # fmt: skip
        return [str(path) for path in paths]

    def pick(self, picked: list[str] | None, drawn: Drawn | None) -> Updates:
        """Ring the picked samples in the plot and list them with their captions."""
        if drawn is None:
            raise refusal("Draw the embedding space first.")
        indices = [int(label.split(".", 1)[0]) - 1 for label in picked or []]
        pairs, view = drawn.pairs, drawn.view
        figure = embedding_scatter(
            view.coordinates.numpy(), pairs.names, pairs.captions, view.layout.axis_titles, view.title,
            highlight=indices,
        )  # fmt: skip
        listed = [
            (pairs.images[i], f"{i + 1}. {pairs.names[i]}: {pairs.captions[i]} · cos(image, caption) {drawn.matched_cosine[i]:.3f}")
            for i in indices
        ]  # fmt: skip
        return {self.plot: figure, self.picked: listed}

    def select_from_plot(self, selected: str | None, drawn: Drawn | None) -> Updates:
        """Points selected with the lasso or box (pair numbers, as JSON) become the picker's value."""
        if drawn is None or not selected or len(selected) > 16 * len(drawn.pairs) + 2:
            return gr.skip()
        try:
            indices = json.loads(selected)
        except json.JSONDecodeError:
            return gr.skip()
        labels = sample_labels(drawn.pairs)
        chosen = (
            [labels[i] for i in indices if isinstance(i, int) and 0 <= i < len(labels)]
            if isinstance(indices, list)
            else []
        )
        return self.pick(chosen, drawn) | {self.picker: gr.update(value=chosen)}


def build_embedding_tab(tab: gr.Tab, states: SessionStates) -> EmbeddingTab:
    """Create the tab's components and wire them to `EmbeddingTab.embedding_space` and `EmbeddingTab.pick`."""
    view = EmbeddingTab()
    inputs = [
        view.method, view.n_neighbors, view.min_dist, view.metric, view.seed, view.close_gap, view.keep_layout,
        view.kept_layout, states.session,
    ]  # fmt: skip
    view.run.click(view.embedding_space, inputs, view.outputs, api_name="embedding_space", **ANALYSIS_EVENT)
    view.close_gap.change(view.embedding_space, inputs, view.outputs, api_visibility="private", **ANALYSIS_EVENT)
    draw_on_first_view(view.embedding_space, tab, TAB, states, inputs, view.outputs)
    view.prepare.click(
        view.embedding_downloads, [view.drawn, states.session], view.downloads, api_name="embedding_downloads",
        **ANALYSIS_EVENT,
    )  # fmt: skip
    view.picker.input(
        view.pick, [view.picker, view.drawn], [view.plot, view.picked], api_visibility="private", show_progress="hidden"
    )
    view.lasso.change(
        view.select_from_plot, [view.lasso, view.drawn], [view.picker, view.plot, view.picked],
        api_visibility="private", show_progress="hidden",
    )  # fmt: skip
    return view
