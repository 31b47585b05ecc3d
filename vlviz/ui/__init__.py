"""The Gradio app: shared inputs on the left, one tab per view. The only UI code besides app.py."""

from __future__ import annotations

import gradio as gr

from vlviz.models import OFFLINE_NOTICE
from vlviz.ui.affinity_tab import analyze, build_affinity_tab
from vlviz.ui.consistency_tab import build_consistency_tab
from vlviz.ui.embedding_tab import build_embedding_tab
from vlviz.ui.grounding_tab import build_grounding_tab
from vlviz.ui.keywords_tab import build_keywords_tab
from vlviz.ui.session import ASSETS_DIR, MODEL_CHOICES, SAMPLES, sample_files
from vlviz.ui.train_tab import RUNS_DIR, build_train_tab

INTRO = """# vlviz
See how a CLIP-style model aligns images with text: upload image-caption pairs (or pick a sample
set), choose a model, and press **Analyze**; then look at its consistency, embedding space and
word grounding, or train it live in the **Train** tab."""


def build_app(model_spec: str, initial_sample: str | None = "scenes") -> gr.Blocks:
    """The whole app. `model_spec` is the model chosen at start; `initial_sample` is analyzed on load."""
    initial_files, initial_captions = sample_files(initial_sample) if initial_sample else (None, "")
    with gr.Blocks(title="vlviz") as demo:
        gr.Markdown(INTRO)
        pairs_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Dropdown(
                    MODEL_CHOICES if model_spec in MODEL_CHOICES else [model_spec, *MODEL_CHOICES],
                    value=model_spec,
                    allow_custom_value=True,
                    label="Model",
                    info="open_clip NAME:TAG, hf-hub:org/name, a local folder or file, or vlviz-scenes (offline)",
                    elem_id="model-spec",
                )
                status = gr.Markdown(f"> {OFFLINE_NOTICE}", elem_id="model-status")
                with gr.Row():
                    sample = gr.Radio(list(SAMPLES), value=initial_sample, label="Sample set", scale=2)
                    use_sample = gr.Button("Use sample", scale=1)
                files = gr.File(
                    file_count="multiple",
                    file_types=["image", ".zip", ".csv", ".json"],
                    value=initial_files,
                    label="Images (or a zip), optionally a captions CSV/JSON",
                    height=220,
                    elem_id="uploads",
                )
                captions = gr.Textbox(
                    value=initial_captions,
                    lines=8,
                    label="Captions, one per line, in upload order",
                    placeholder="a red circle on the left\na small blue square at the top",
                    elem_id="captions",
                )
                analyze_button = gr.Button("Analyze", variant="primary", elem_id="analyze")
            with gr.Column(scale=3), gr.Tabs():
                with gr.Tab("Affinity", id="affinity"):
                    analyze_inputs, analyze_outputs = build_affinity_tab(
                        files, captions, model, analyze_button, status, pairs_state
                    )
                with gr.Tab("Consistency", id="consistency"):
                    build_consistency_tab(files, captions, model)
                with gr.Tab("Embedding space", id="embedding"):
                    build_embedding_tab(files, captions, model)
                with gr.Tab("Grounding", id="grounding"):
                    build_grounding_tab(model, pairs_state)
                with gr.Tab("Keywords", id="keywords"):
                    build_keywords_tab(model, pairs_state)
                with gr.Tab("Train", id="train"):
                    build_train_tab(model, files, captions)
        use_sample.click(sample_files, sample, [files, captions], api_visibility="private")
        if initial_sample is not None:
            demo.load(analyze, analyze_inputs, analyze_outputs, api_visibility="private")
    return demo


def launch_kwargs() -> dict:
    """Settings `launch()` needs: the sample assets must be servable."""
    return {"allowed_paths": [str(ASSETS_DIR), str(RUNS_DIR)]}
