"""The Affinity tab: image-text, image-image and text-text affinities, ranks, and text queries."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from vlviz.affinity import affinity_report, rank_images_by_text
from vlviz.exports import write_affinity_files
from vlviz.figures import heatmap, short_labels
from vlviz.inputs import MAX_CAPTION_CHARS, InputError, PairSet
from vlviz.ui.session import ANALYSIS_EVENT, SESSIONS, SessionSpace, model_for, model_status, read_pairs

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
    """Read the pairs, encode them, and draw the Affinity view (the `analyze` API)."""
    progress(0.05, desc="Reading images and captions")
    SESSIONS.bind(space, request)
    try:
        pairs = read_pairs(files, captions_text)
    except InputError as error:
        raise gr.Error(str(error)) from error
    progress(0.25, desc="Loading the model")
    model, notice = model_for(model_spec, space)
    progress(0.5, desc="Encoding images and captions")
    encoding = model.encode_pairs(pairs.images, pairs.captions)
    report = affinity_report(encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias)
    progress(0.85, desc="Drawing")

    notices = list(pairs.notices)
    notices += [
        f"Caption {i + 1} ({pairs.names[i]}) is longer than the model's {model.context_length} tokens and was truncated."
        for i in encoding.truncated
    ]
    labels = short_labels(pairs.captions)
    image_hover = [f"image {i + 1} ({name})" for i, name in enumerate(pairs.names)]
    caption_hover = [f"caption {i + 1}: {c}" for i, c in enumerate(pairs.captions)]
    image_labels = [f"{i + 1}. {name}" for i, name in enumerate(pairs.names)]
    if value_kind == VALUE_KINDS[1]:
        head = "sigmoid(s·cos + b)" if report.head == "sigmoid" else "softmax over captions"
        image_text = heatmap(
            report.image_to_text_probability.numpy(), labels, image_labels, caption_hover, image_hover,
            f"P(caption | image), {head}", "probability", zrange=(0.0, 1.0),
        )  # fmt: skip
    else:
        image_text = heatmap(
            report.image_text.numpy(), labels, image_labels, caption_hover, image_hover,
            "Image-text cosine similarity", "cosine",
        )  # fmt: skip
    image_image = heatmap(
        report.image_image.numpy(), image_labels, image_labels, image_hover, image_hover,
        "Image-image similarity (A_I)", "cosine",
    )  # fmt: skip
    text_text = heatmap(
        report.text_text.numpy(), labels, labels, caption_hover, caption_hover,
        "Text-text similarity (A_T)", "cosine",
    )  # fmt: skip
    ranks = pd.DataFrame(
        {
            "#": range(1, len(pairs) + 1),
            "image": pairs.names,
            "caption": pairs.captions,
            "cos(own pair)": report.image_text.diagonal().numpy().round(3),
            "P(own caption | image)": report.image_to_text_probability.diagonal().numpy().round(3),
            "image→text rank": report.image_to_text_rank.numpy(),
            "text→image rank": report.text_to_image_rank.numpy(),
        }
    )
    gallery = [(image, f"{i + 1}. {caption}") for i, (image, caption) in enumerate(zip(pairs.images, pairs.captions))]
    data = {"model": model.name, "names": pairs.names, "captions": pairs.captions, "notices": notices}
    data |= report.to_dict() | {"logit_scale": encoding.logit_scale, "logit_bias": encoding.logit_bias}
    status = model_status(model, notice)
    message = "\n".join(f"- {n}" for n in notices)
    figures = [image_text, image_image, text_text]
    downloads = [str(path) for path in write_affinity_files(
        space.export_folder("affinity"), report, figures, data, pairs.names, pairs.captions
    )]  # fmt: skip
    return image_text, image_image, text_text, ranks, gallery, data, status, message, downloads, pairs


def query(text: str, pairs: PairSet | None, model_spec: str | None, space: SessionSpace) -> list[tuple[Any, str]]:
    """Rank the loaded images against any text (the `query` API)."""
    if pairs is None:
        raise gr.Error("Analyze a set of pairs first: the query ranks their images.")
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
    status: gr.Markdown, pairs_state: gr.State, space: gr.State,
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

    outputs = [image_text, image_image, text_text, ranks, gallery, data, status, notices, downloads, pairs_state]
    inputs = [files, captions, model_spec, value_kind, space]
    # A minimal progress display: a failed run (bad input) must not cover the plots already shown.
    analyze_button.click(analyze, inputs, outputs, api_name="analyze", **ANALYSIS_EVENT)
    value_kind.change(analyze, inputs, outputs, api_visibility="private", **ANALYSIS_EVENT)
    query_event = dict(fn=query, inputs=[query_text, pairs_state, model_spec, space], outputs=query_gallery)
    query_button.click(**query_event, api_name="query")
    query_text.submit(**query_event, api_visibility="private")
    return inputs, outputs
