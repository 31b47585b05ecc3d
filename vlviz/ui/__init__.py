"""The Gradio app: shared inputs on the left, one tab per view. The only UI code besides app.py.

Each browser session gets a `Session` (`vlviz.ui.session`) in a `gr.State`: a server-made token naming its
folder, the pairs it analysed with their model, which every tab reads, and its training runs. Its files go
when the tab closes (`demo.unload`), when Gradio drops the state, or in an age sweep; its analysis
`SESSION_TTL_S` after it was made; Gradio's copies of returned files after `SESSION_TTL_S` (`delete_cache`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from vlviz.data.samples import ASSETS_DIR, SAMPLE_SETS, sample_files
from vlviz.embedding.layout_worker import LayoutWorkerError
from vlviz.models.loading import OFFLINE_NOTICE, ModelUnavailableError, load_model, parse_spec
from vlviz.models.policy import ModelPolicy
from vlviz.ui.affinity_tab import build_affinity_tab
from vlviz.ui.agents import accept_urls, hide_state_loads, mcp_enabled, open_choices, repair_gradio_mcp
from vlviz.ui.consistency_tab import TAB as CONSISTENCY_TAB
from vlviz.ui.consistency_tab import build_consistency_tab
from vlviz.ui.dataset_tab import TAB as DATASET_TAB
from vlviz.ui.dataset_tab import DatasetCatalog, build_dataset_tab, dataset_routes, open_listed
from vlviz.ui.embedding_tab import LAYOUT_WORKER, build_embedding_tab
from vlviz.ui.embedding_tab import TAB as EMBEDDING_TAB
from vlviz.ui.fair_share import QUEUE_SHARE, QUEUE_SHARE_PER_ADDRESS, share_queue
from vlviz.ui.figure_export import FIGURE_EXPORT_HEAD
from vlviz.ui.grounding_tab import TAB as GROUNDING_TAB
from vlviz.ui.grounding_tab import build_grounding_tab
from vlviz.ui.keywords_tab import TAB as KEYWORDS_TAB
from vlviz.ui.keywords_tab import build_keywords_tab
from vlviz.ui.memory import trim_heap_every
from vlviz.ui.origins import host_guard
from vlviz.ui.request_limits import MAX_UPLOAD_BYTES, RequestBodyLimit
from vlviz.ui.session import (
    MODEL_CHOICES,
    SESSION_TTL_S,
    SESSIONS,
    SessionStates,
    check_data_dir,
    current_tab,
    expire_analyses,
    pairs_state,
)
from vlviz.ui.talk_page import TALK_CSS, build_talk_page, open_as_talk
from vlviz.ui.train_tab import build_train_tab
from vlviz.ui.view_links import LinkTargets, open_view, view_link

QUEUE_SIZE = int(os.environ.get("VLVIZ_QUEUE_SIZE", 64))  # requests waiting, all events together; more are refused
HEAP_TRIM_EVERY_S = 10.0  # freed analyses go back to the system this often (`vlviz.ui.memory`)
DEFAULT_CONCURRENCY = 4  # small private events (sample choice, picker, comparisons)

INTRO = """# vlviz
See how a CLIP-style model aligns images with text: upload image-caption pairs (or pick a sample
set), choose a model, and press **Analyze**; then look at its consistency, embedding space and
word grounding, or train it live in the **Train** tab."""


def build_app(
    model_spec: str, initial_sample: str | None = "scenes", policy: ModelPolicy | None = None,
    datasets: Sequence[str | Path] = (),
) -> gr.Blocks:  # fmt: skip
    """The whole app. `model_spec` is the model chosen at start; `initial_sample` is analyzed on load;
    `policy` says which models visitors may load (default: from the environment, see `vlviz.models.policy`);
    `datasets` are embedding folders the Dataset tab opens (besides `VLVIZ_DATASETS`'s; the tab shows, first,
    when any is listed)."""
    check_data_dir()
    threading.Thread(target=_warm_up, args=(model_spec,), name="vlviz-warm-up", daemon=True).start()
    trim_heap_every(HEAP_TRIM_EVERY_S, expire_analyses)
    policy = policy or ModelPolicy.from_env(MODEL_CHOICES, always=[model_spec])
    initial_files, initial_captions = sample_files(initial_sample) if initial_sample else (None, "")
    catalog = DatasetCatalog.listed(datasets)
    threading.Thread(target=_open_datasets, args=(catalog,), name="vlviz-open-datasets", daemon=True).start()
    sweep = int(min(SESSION_TTL_S, 3600))
    with gr.Blocks(title="vlviz", delete_cache=(sweep, int(SESSION_TTL_S))) as demo:
        gr.Markdown(INTRO)
        states = SessionStates(
            session=gr.State(lambda: SESSIONS.new(policy), delete_callback=lambda session: session.close()),
            analysed=gr.State(None),  # the serial of the session's analysis: its change draws the tab in view
            shown_tab=gr.State(DATASET_TAB if catalog.names else "Affinity"),  # the label of the tab in view
        )
        wanted = gr.State(None)  # the Grounding pair and word a view link asks for (`WantedView`)
        linked = pairs_state()  # the analysis a view link hands over (`EncodedPairs`), shown without encoding
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
                open_choices(model)  # any spec, not only the listed ones
                status = gr.Markdown(f"> {OFFLINE_NOTICE}", elem_id="model-status")
                with gr.Row():
                    sample = gr.Radio(list(SAMPLE_SETS), value=initial_sample, label="Sample set", scale=2)
                    use_sample = gr.Button("Use sample", scale=1)
                files = gr.File(
                    file_count="multiple",
                    file_types=["image", ".zip", ".csv", ".json", ".tar", ".tgz", ".gz", ".parquet"],
                    value=initial_files,
                    label="Images (or a zip), optionally a captions CSV/JSON; or webdataset .tar shards or .parquet",
                    height=220,
                    elem_id="uploads",
                )
                accept_urls(files)  # agents (MCP) give files as URLs
                captions = gr.Textbox(
                    value=initial_captions,
                    lines=8,
                    label="Captions, one per line, in upload order",
                    placeholder="a red circle on the left\na small blue square at the top",
                    elem_id="captions",
                )
                analyze_button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                with gr.Row():
                    talk_button = gr.Button("Open as a talk", size="sm", elem_id="open-talk")
                    link_button = gr.Button("Link to this view", size="sm", elem_id="view-link-button")
                talk_link = gr.Markdown(elem_id="talk-link")
                view_link_text = gr.Markdown(elem_id="view-link")
            with gr.Column(scale=3), gr.Tabs(selected="dataset" if catalog.names else None) as tabs:
                with gr.Tab("Affinity", id="affinity"):
                    affinity = build_affinity_tab(files, captions, model, analyze_button, status, states)
                with gr.Tab(CONSISTENCY_TAB, id="consistency") as consistency_tab:
                    build_consistency_tab(consistency_tab, states)
                with gr.Tab(EMBEDDING_TAB, id="embedding") as embedding_tab:
                    build_embedding_tab(embedding_tab, states)
                with gr.Tab(GROUNDING_TAB, id="grounding") as grounding_tab:
                    grounding = build_grounding_tab(grounding_tab, states, wanted)
                with gr.Tab(KEYWORDS_TAB, id="keywords") as keywords_tab:
                    build_keywords_tab(keywords_tab, states)
                with gr.Tab("Train", id="train"):
                    build_train_tab(model, states)
                if catalog.names:
                    with gr.Tab(DATASET_TAB, id="dataset"):
                        build_dataset_tab(demo, catalog, affinity, tabs, states)
        tabs.select(current_tab, None, states.shown_tab, api_visibility="private", show_progress="hidden")
        use_sample.click(sample_files, sample, [files, captions], api_visibility="private")
        link = LinkTargets(model, sample, files, captions, tabs, states.shown_tab, wanted, linked)
        opened = [files, captions, model, affinity.value_kind, states.session, linked]
        demo.load(link.restore, states.session, list(vars(link).values()), api_visibility="private").then(
            open_view(affinity), opened, affinity.outputs, api_visibility="private"
        )
        link_button.click(
            view_link,
            [states.shown_tab, grounding.pair, grounding.words, states.session],
            view_link_text,
            api_visibility="private",
        )
        talk_button.click(open_as_talk, states.session, talk_link, api_visibility="private")
        demo.unload(SESSIONS.end)
    build_talk_page(demo, policy)
    hide_state_loads(demo)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_SIZE)
    share_queue(demo, QUEUE_SHARE, QUEUE_SHARE_PER_ADDRESS if policy.public else None)  # a local app: one address
    return demo


def _warm_up(model_spec: str) -> None:
    """Before anyone waits: load the start model when it needs no network, and start the layout worker,
    which compiles UMAP's numba code in its own process (`vlviz.embedding.layout_worker`).

    A model loads once per process; one that fails to load here says so when a visitor asks for it.
    While the worker compiles (about 25 s on 2 cores), the Embedding-space tab shows PCA first.
    """
    try:
        if not parse_spec(model_spec).needs_hub:
            load_model(model_spec)
    except (ValueError, ModelUnavailableError):
        pass
    with contextlib.suppress(LayoutWorkerError):  # it says so when a visitor asks for a UMAP
        LAYOUT_WORKER.start()


def _open_datasets(catalog: DatasetCatalog) -> None:
    """Open the listed folders before anyone asks (2 s at a million pairs: the search index and the map read in,
    then the map's clusters, about 2 s more), so that the first visitor's map comes as fast as the next one's. A
    folder that cannot be opened says why when a visitor opens it."""
    for name in catalog.names:
        with contextlib.suppress(gr.Error):
            _ = open_listed(catalog, name).clusters


def launch_kwargs() -> dict:
    """Settings `launch()` needs: the sample assets are servable, and nothing else of the server's files;
    Gradio's MCP server serves the API endpoints as tools to agents where `vlviz.ui.agents.mcp_enabled`
    says (a local server, or `VLVIZ_MCP=1`); every plot has SVG and PNG (3x) download buttons
    (`vlviz.ui.figure_export`); a local app answers only its own Host and Origin (`vlviz.ui.origins`); every
    request's body is bounded in bytes before it is read (`vlviz.ui.request_limits`); the Dataset tab's map has
    its bundle and points routes (`vlviz.ui.dataset_tab.dataset_routes`).

    Gradio binds to `GRADIO_SERVER_NAME` (default 127.0.0.1), the variable `vlviz.models.policy` reads to
    tell a public server; a launcher that binds elsewhere passes `build_app(..., policy=...)`.
    """
    mcp = mcp_enabled()
    if mcp:
        repair_gradio_mcp()
    return {
        "allowed_paths": [str(ASSETS_DIR)],
        "mcp_server": mcp,
        "head": FIGURE_EXPORT_HEAD,
        "css": TALK_CSS,
        "max_file_size": MAX_UPLOAD_BYTES,
        "app_kwargs": {"middleware": [Middleware(RequestBodyLimit), *host_guard()], "routes": dataset_routes()},
    }
