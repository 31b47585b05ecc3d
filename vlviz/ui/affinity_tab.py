"""The Affinity tab: image-text, image-image and text-text affinities, ranks, and text queries."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from vlviz.data.inputs import MAX_CAPTION_CHARS
from vlviz.metrics.affinity import AffinityReport, PairFigures, affinity_report, pair_figures, rank_images_by_text
from vlviz.models.encoding import EncodedPairs
from vlviz.ui.messages import refusal
from vlviz.ui.session import (
    ANALYSIS_EVENT,
    SESSIONS,
    Session,
    SessionStates,
    Updates,
    analyze_uploads,
    client_address,
    downloads_row,
    model_status,
    pairs_state,
)
from vlviz.viz.exports import write_affinity_files
from vlviz.viz.html import markdown_list
from vlviz.viz.views import AffinityView, affinity_view, heatmap_page, heatmap_pages

VALUE_KINDS = ["cosine similarity", "match probability"]
GALLERY_PAIRS = 48  # pairs shown in the gallery (the first ones); the ranks table lists every pair
QUERY_TOP_K = 24  # images a query returns, best first: every image, re-encoded per call, let one visitor stall others
THUMBNAIL_SIDE = 256


def _affinity(
    analysis: EncodedPairs, value_kind: str, page: float, figures: KeptFigures | None = None
) -> tuple[AffinityReport, AffinityView, str | None]:
    """The report and view of one heatmap page of the analysed pairs (`figures`: their kept `pair_figures`)."""
    encoding, pairs = analysis.encoding, analysis.pairs
    shown, note = heatmap_page(len(pairs), int(page or 1))
    report = affinity_report(
        encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias, shown=shown,
        pairs=_figures_of(analysis, figures)[1],
    )  # fmt: skip
    view = affinity_view(report, pairs.names, pairs.captions, probabilities=value_kind == VALUE_KINDS[1])
    return report, view, note


KeptFigures = tuple[int, PairFigures]  # an analysis' serial and its `pair_figures` (a gr.State)


def _figures_of(analysis: EncodedPairs, kept: KeptFigures | None) -> KeptFigures:
    """The analysed pairs' `pair_figures`: the kept ones when they belong to this analysis, else computed."""
    if kept is not None and kept[0] == analysis.serial:
        return kept
    encoding = analysis.encoding
    figures = pair_figures(encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias)
    return analysis.serial, figures


def _data(analysis: EncodedPairs, report: AffinityReport) -> dict[str, Any]:
    """The view's numbers for JSON: names, captions, notices, the report and the model's logit scale and bias."""
    pairs, encoding = analysis.pairs, analysis.encoding
    data = {"model": analysis.model_name, "names": pairs.names, "captions": pairs.captions, "notices": analysis.notices}
    return data | report.to_dict() | {"logit_scale": encoding.logit_scale, "logit_bias": encoding.logit_bias}


class AffinityTab:
    """The Affinity tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self, status: gr.Markdown, states: SessionStates) -> None:
        """Create the tab's components (inside its gr.Tab); `status` is the model's line beside the inputs."""
        self.value_kind = gr.Radio(
            VALUE_KINDS, value=VALUE_KINDS[0], label="Image-text cells show", elem_id="value-kind"
        )
        self.notices = gr.Markdown(elem_id="notices")
        self.image_text = gr.Plot(label="Image-text", elem_id="image-text-plot")
        with gr.Row():
            self.image_image = gr.Plot(label="Image-image", elem_id="image-image-plot")
            self.text_text = gr.Plot(label="Text-text", elem_id="text-text-plot")
        self.page = gr.Slider(1, 2, value=1, step=1, label="Heatmap page", visible=False, elem_id="affinity-page")
        self.ranks = gr.Dataframe(
            label="Retrieval rank of each true pair (1 = best)", interactive=False, wrap=True, max_height=360
        )
        self.gallery = gr.Gallery(
            label="Pairs", columns=6, height="auto", object_fit="contain", elem_id="pairs-gallery"
        )
        with gr.Accordion("Query the images with any text", open=True):
            with gr.Row():
                self.query_text = gr.Textbox(
                    label="Query", placeholder="a small red circle", scale=4, elem_id="query-text"
                )
                self.query_button = gr.Button("Rank images", scale=1)
            self.query_gallery = gr.Gallery(
                label=f"The best {QUERY_TOP_K} images, best match first", columns=8, height="auto",
                object_fit="contain",
            )  # fmt: skip
        with gr.Accordion("Data (JSON): every matrix, probability and rank", open=False):
            self.data = gr.JSON(label="analyze output")
        self.prepare, self.downloads = downloads_row(
            "affinity", "figures (HTML; zip: CSV + redraw.py), numbers (JSON, CSV, .npz)"
        )
        self.figures = pairs_state()  # the analysed pairs' `pair_figures` (ranks over all N), shared by every page
        self.status, self.analysed = status, states.analysed
        # In the API's order (states are no outputs there): a new output goes last, so older clients still work.
        self.outputs = [
            self.image_text, self.image_image, self.text_text, self.ranks, self.gallery, self.data, status,
            self.notices, self.downloads, states.analysed, self.page, self.figures,
        ]  # fmt: skip

    def analyze(
        self,
        files: list[str] | None,
        captions_text: str | None,
        model_spec: str | None,
        value_kind: str = VALUE_KINDS[0],
        session: Session | None = None,  # this session (gr.State)
        request: gr.Request | None = None,  # filled in by Gradio
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's documented idiom)
    ) -> Updates:
        """Read image-caption pairs, encode them once for every view, and draw the Affinity view (the `analyze` API).

        Call it first: every other tool works on the pairs this session analyzed last. The heatmaps and the
        data's matrices cover the first 300 pairs; ranks and own-pair figures cover all N.
        Cosines lie in [-1, 1], probabilities in [0, 1]; ranks count from 1 (best). Files are written on
        request (`affinity_downloads`).

        Args:
            files: images (PNG, JPEG, WebP, ...), a zip of images, a captions CSV (file,caption) or JSON ({"image.png": "caption"}), webdataset .tar shards or .parquet files, as http(s) URLs (a file uploaded to this server through /gradio_api/upload has the URL SERVER/gradio_api/file=PATH) or uploads; at most 10,000 pairs.
            captions_text: one caption per line, in the order of the images; empty when a CSV, JSON, .tar or .parquet file holds them.
            model_spec: 'vlviz-scenes' (built-in, offline, knows only coloured shapes), an open_clip 'NAME:PRETRAINED' such as 'ViT-B-32:laion2b_s34b_b79k', 'hf-hub:ORG/NAME', or 'session run N' (a checkpoint the `train` tool saved).
            value_kind: what the image-text heatmap's cells show: 'cosine similarity' or 'match probability'.

        Returns:
            [0] the image-text heatmap (rows images, columns captions) as plotly figure JSON
            [1] the image-image heatmap A_I (cosine), plotly JSON
            [2] the text-text heatmap A_T (cosine), plotly JSON
            [3] a table of every pair: its cos(own pair), P(own caption | image), image-to-text and text-to-image rank
            [4] a gallery of the first 48 pairs (image files with '#. caption')
            [5] the data: model, names, captions, notices, shown (0-based pairs of the matrices), image_text, image_image, text_text (S x S cosines), image_to_text_probability and text_to_image_probability (S x S), own_cosine, own_probability, image_to_text_rank, text_to_image_rank (N each), head ('softmax' for CLIP, 'sigmoid' for SigLIP), logit_scale, logit_bias
            [6] the model's status line (name, device, dtype, notice)
            [7] notices about the input (skipped or downscaled images, truncated captions)
            [8] None (the downloads: call affinity_downloads)
            [9] the heatmap page slider's settings (for the browser)
        """
        with session.exclusive("analysis"):  # a second one of this session is refused, not queued
            progress(0.05, desc="Reading and encoding images and captions")
            SESSIONS.bind(session, request)
            own_host = request.headers.get("host") if request is not None else None
            analysis, notice = analyze_uploads(
                files, captions_text, model_spec, session, own_host, client_address(request)
            )
            progress(0.85, desc="Drawing")
            return self.shown(analysis.encoded, model_status(analysis.model, notice), value_kind)

    def shown(self, encoded: EncodedPairs, status: str, value_kind: str) -> Updates:
        """The view of pairs already encoded (an Analyze's, or the pairs a view link hands over), with `status`."""
        figures = _figures_of(encoded, None)
        report, view, note = _affinity(encoded, value_kind, 1, figures)
        pairs = encoded.pairs
        gallery = [(pairs.images[i], f"{i + 1}. {pairs.captions[i]}") for i in range(min(len(pairs), GALLERY_PAIRS))]
        pages = heatmap_pages(len(pairs))
        return {
            self.image_text: view.image_text,
            self.image_image: view.image_image,
            self.text_text: view.text_text,
            self.ranks: view.ranks,
            self.gallery: gallery,
            self.data: _data(encoded, report),
            self.status: status,
            self.notices: markdown_list([*encoded.notices, *([note] if note else [])]),
            self.downloads: None,
            self.analysed: encoded.serial,
            self.page: gr.update(maximum=max(pages, 2), value=1, visible=pages > 1),  # a slider needs a range
            self.figures: figures,
        }

    def redraw(self, value_kind: str, page: float, session: Session, figures: KeptFigures | None = None) -> Updates:
        """The heatmaps of another page or value kind, from the analysed encoding and its kept per-pair figures
        (no re-encoding, no ranks recomputed, no files)."""
        analysis = session.analysis
        if analysis is None:
            return gr.skip()
        _, view, note = _affinity(analysis.encoded, value_kind, page, figures)
        return {
            self.image_text: view.image_text,
            self.image_image: view.image_image,
            self.text_text: view.text_text,
            self.notices: markdown_list([*analysis.encoded.notices, *([note] if note else [])]),
        }

    def affinity_downloads(
        self, value_kind: str, page: float, session: Session, figures: KeptFigures | None = None
    ) -> list[str]:
        """Write the Affinity view of the pairs last analyzed as files (the `affinity_downloads` API).

        Args:
            value_kind: what the image-text heatmap's cells show: 'cosine similarity' or 'match probability'.
            page: the heatmap page, 1-based, of 300 pairs each.

        Returns:
            the files, each with a URL: affinity.html (the heatmaps), affinity.json (the analyze data), image_text.csv and affinity.npz (the page's matrices), ranks.csv (every pair), affinity_figures.zip (each heatmap's numbers and a script that redraws it).
        """
        encoded = session.analyzed("the downloads hold the Affinity view of the pairs last analyzed.").encoded
        report, view, _ = _affinity(encoded, value_kind, page, figures)
        pairs = encoded.pairs
        heatmaps = [view.image_text, view.image_image, view.text_text]
        data = _data(encoded, report)
        folder = session.export_folder("affinity")
        return [str(path) for path in write_affinity_files(folder, report, heatmaps, data, pairs.names, pairs.captions)]

    def query(self, text: str, session: Session) -> list[tuple[Image.Image, str]]:
        """Rank the images of the pairs last analyzed against any text (the `query` API).

        The text is encoded by the model that analyzed the pairs, and ranked against their kept image
        embeddings (nothing is re-encoded); the best QUERY_TOP_K come back as thumbnails.

        Args:
            text: the query, at most 1,000 characters, e.g. 'a small red circle'.

        Returns:
            the best 24 images, best match first, as thumbnails of at most 256 pixels a side, each with the caption '#rank. file name  cos COSINE' (cosine in [-1, 1]).
        """
        analysis = session.analyzed("the query ranks their images.")
        if not text or not text.strip():
            raise refusal("Type a query, e.g. 'a red circle'.")
        if len(text) > MAX_CAPTION_CHARS:
            raise refusal(f"The query is {len(text)} characters long; queries have at most {MAX_CAPTION_CHARS}.")
        text_features = session.model_of(analysis).encode_texts([text.strip()])[0]
        order, scores = rank_images_by_text(text_features, analysis.encoded.image_features.to(text_features.device))
        pairs = analysis.pairs
        return [
            (_thumbnail(pairs.images[i]), f"{rank + 1}. {pairs.names[i]}  cos {score:.3f}")
            for rank, (i, score) in enumerate(zip(order[:QUERY_TOP_K], scores[:QUERY_TOP_K]))
        ]


def _thumbnail(image: Image.Image) -> Image.Image:
    """A copy at most THUMBNAIL_SIDE a side: what the gallery shows, a few kB to encode and send."""
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return small


def build_affinity_tab(
    files: gr.File, captions: gr.Textbox, model_spec: gr.Dropdown, analyze_button: gr.Button, status: gr.Markdown,
    states: SessionStates,
) -> AffinityTab:  # fmt: skip
    """Create the tab's components and wire them to `AffinityTab.analyze` and `AffinityTab.query`."""
    tab = AffinityTab(status, states)
    inputs = [files, captions, model_spec, tab.value_kind, states.session]
    # A minimal progress display: a failed run (bad input) must not cover the plots already shown.
    analyze_button.click(tab.analyze, inputs, tab.outputs, api_name="analyze", **ANALYSIS_EVENT)
    drawn = [tab.image_text, tab.image_image, tab.text_text, tab.notices]
    redrawn = [tab.value_kind, tab.page, states.session, tab.figures]
    tab.value_kind.change(tab.redraw, redrawn, drawn, api_visibility="private", **ANALYSIS_EVENT)
    tab.page.release(tab.redraw, redrawn, drawn, api_visibility="private", **ANALYSIS_EVENT)
    tab.prepare.click(tab.affinity_downloads, redrawn, tab.downloads, api_name="affinity_downloads", **ANALYSIS_EVENT)
    query = dict(fn=tab.query, inputs=[tab.query_text, states.session], outputs=tab.query_gallery)
    tab.query_button.click(**query, api_name="query")
    tab.query_text.submit(**query, api_visibility="private")
    return tab
