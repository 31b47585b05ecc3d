"""The Affinity tab: image-text, image-image and text-text affinities, ranks, and text queries."""

from __future__ import annotations

from typing import Any

import gradio as gr

from vlviz.affinity import affinity_report, rank_images_by_text
from vlviz.data.inputs import MAX_CAPTION_CHARS
from vlviz.encoding import EncodedPairs
from vlviz.ui.session import ANALYSIS_EVENT, SESSIONS, SessionSpace, analyze_uploads, analyzed, model_for, model_status
from vlviz.viz.exports import write_affinity_files
from vlviz.viz.views import affinity_view

VALUE_KINDS = ["cosine similarity", "match probability"]


def analyze(
    files: list[str] | None,
    captions_text: str | None,
    model_spec: str | None,
    value_kind: str = VALUE_KINDS[0],
    space: SessionSpace | None = None,  # this session (gr.State)
    request: gr.Request | None = None,  # filled in by Gradio
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's documented idiom)
) -> tuple[Any, ...]:
    """Read the pairs, encode them once for every tab, and draw the Affinity view (the `analyze` API)."""
    progress(0.05, desc="Reading and encoding images and captions")
    SESSIONS.bind(space, request)
    analysis, model, notice = analyze_uploads(files, captions_text, model_spec, space)
    pairs, encoding = analysis.pairs, analysis.encoding
    report = affinity_report(encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias)
    progress(0.85, desc="Drawing")
    view = affinity_view(report, pairs.names, pairs.captions, probabilities=value_kind == VALUE_KINDS[1])
    gallery = [(image, f"{i + 1}. {caption}") for i, (image, caption) in enumerate(zip(pairs.images, pairs.captions))]
    data = {"model": model.name, "names": pairs.names, "captions": pairs.captions, "notices": analysis.notices}
    data |= report.to_dict() | {"logit_scale": encoding.logit_scale, "logit_bias": encoding.logit_bias}
    message = "\n".join(f"- {n}" for n in analysis.notices)
    figures = [view.image_text, view.image_image, view.text_text]
    downloads = [str(path) for path in write_affinity_files(
        space.export_folder("affinity"), report, figures, data, pairs.names, pairs.captions
    )]  # fmt: skip
    status = model_status(model, notice)
    return (*figures, view.ranks, gallery, data, status, message, downloads, analysis)


def redraw(value_kind: str, analysis: EncodedPairs | None) -> Any:
    """The image-text heatmap in the other value kind, from the analysed encoding (no re-encoding, no exports)."""
    if analysis is None:
        return gr.skip()
    encoding, pairs = analysis.encoding, analysis.pairs
    report = affinity_report(encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias)
    return affinity_view(report, pairs.names, pairs.captions, probabilities=value_kind == VALUE_KINDS[1]).image_text


def query(
    text: str, analysis: EncodedPairs | None, model_spec: str | None, space: SessionSpace
) -> list[tuple[Any, str]]:
    """Rank the analysed images against any text (the `query` API)."""
    pairs = analyzed(analysis, "the query ranks their images.").pairs
    if not text or not text.strip():
        raise gr.Error("Type a query, e.g. 'a red circle'.")
    if len(text) > MAX_CAPTION_CHARS:
        raise gr.Error(f"The query is {len(text)} characters long; queries have at most {MAX_CAPTION_CHARS}.")
    model, _ = model_for(model_spec, space)
    image_features = model.encode_images(pairs.images)
    order, scores = rank_images_by_text(model.encode_texts([text.strip()])[0], image_features)
    return [
        (pairs.images[i], f"{rank + 1}. {pairs.names[i]}  cos {score:.3f}")
        for rank, (i, score) in enumerate(zip(order, scores))
    ]


def build_affinity_tab(
    files: gr.File, captions: gr.Textbox, model_spec: gr.Dropdown, analyze_button: gr.Button,
    status: gr.Markdown, analysis: gr.State, space: gr.State,
) -> tuple[list[gr.components.Component], list[gr.components.Component]]:  # fmt: skip
    """Create the tab's components and wire them to `analyze` and `query`; return analyze's inputs and outputs."""
    value_kind = gr.Radio(VALUE_KINDS, value=VALUE_KINDS[0], label="Image-text cells show", elem_id="value-kind")
    notices = gr.Markdown(elem_id="notices")
    image_text = gr.Plot(label="Image-text", elem_id="image-text-plot")
    with gr.Row():
        image_image = gr.Plot(label="Image-image", elem_id="image-image-plot")
        text_text = gr.Plot(label="Text-text", elem_id="text-text-plot")
    ranks = gr.Dataframe(
        label="Retrieval rank of each true pair (1 = best)", interactive=False, wrap=True, max_height=360
    )
    gallery = gr.Gallery(label="Pairs", columns=6, height="auto", object_fit="contain", elem_id="pairs-gallery")
    with gr.Accordion("Query the images with any text", open=True):
        with gr.Row():
            query_text = gr.Textbox(label="Query", placeholder="a small red circle", scale=4, elem_id="query-text")
            query_button = gr.Button("Rank images", scale=1)
        query_gallery = gr.Gallery(label="Images, best match first", columns=8, height="auto", object_fit="contain")
    with gr.Accordion("Data (JSON): every matrix, probability and rank", open=False):
        data = gr.JSON(label="analyze output")
    downloads = gr.File(
        label="Downloads: figures (HTML), numbers (JSON, CSV)", file_count="multiple", interactive=False
    )

    outputs = [image_text, image_image, text_text, ranks, gallery, data, status, notices, downloads, analysis]
    inputs = [files, captions, model_spec, value_kind, space]
    # A minimal progress display: a failed run (bad input) must not cover the plots already shown.
    analyze_button.click(analyze, inputs, outputs, api_name="analyze", **ANALYSIS_EVENT)
    value_kind.change(redraw, [value_kind, analysis], image_text, api_visibility="private", **ANALYSIS_EVENT)
    query_event = dict(fn=query, inputs=[query_text, analysis, model_spec, space], outputs=query_gallery)
    query_button.click(**query_event, api_name="query")
    query_text.submit(**query_event, api_visibility="private")
    return inputs, outputs
