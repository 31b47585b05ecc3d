"""The Dataset tab: an embedding folder (`python -m vlviz embed`) as one 2-D map of every pair's image and caption,
coloured by modality or a per-pair column, with hover, search, and a selection sent to Analyze.

Which folders open is the server owner's choice, never a visitor's: `python -m vlviz explore FOLDER` or
`VLVIZ_DATASETS` (folders separated by the path separator, ':' on Linux) lists them, and a visitor picks one by
its listed name; no message shows a server path. An opened folder is shared by every session (`OPENED`: one
explicit process cache, the search index and layout are large); each session's map has a random token
(`MapHandle`) that the points route and the hover function ask for, as view links do. One map is the same for
every visitor, the first listed folder's coloured by modality: the page's config names its points (`FirstMap`), so
the page fetches them while its load event opens the folder instead of after.

The map is regl-scatterplot (`vlviz.ui.frontend`) in a gr.HTML: `js_on_load` imports the bundle and calls its
`mountDatasetMap`, which fetches the points from `POINTS_ROUTE`, asks `dataset_point` on hover, and answers a
lasso with a `select` event whose value is the selected point indices (JSON).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import threading
import weakref
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import gradio as gr
import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from vlviz.data.inputs import MAX_CAPTION_CHARS, MAX_PAIRS, InputError, header_size, load_image
from vlviz.embedding.dataset import MANIFEST_FILE, SOURCE_COLUMN_PREFIX, EmbeddedDataset, open_dataset
from vlviz.embedding.linked import LinkedPairs, link_datasets
from vlviz.embedding.store import read_index, shard_held
from vlviz.models.encoding import encode_pair_set
from vlviz.models.loading import ModelUnavailableError, load_model
from vlviz.models.policy import is_public
from vlviz.ui.affinity_tab import AffinityTab
from vlviz.ui.agents import uploaded_file
from vlviz.ui.memory import LEDGER
from vlviz.ui.messages import refusal
from vlviz.ui.session import (
    ANALYSIS_EVENT,
    SESSIONS,
    VIEW_EVENT,
    Session,
    SessionStates,
    Updates,
    client_address,
    model_status,
    pairs_state,
)
from vlviz.viz.dataset_view import (
    CLUSTER_COLOURS,
    MODALITY,
    RANK_SHIFT,
    ColourValues,
    Columns,
    cluster_choices,
    colour_choices,
    colour_values,
    hits_table,
    legend_markdown,
    map_points,
    pair_points,
    pairs_of_points,
    points_preview,
    rank_shift,
    selected_pairs,
)
from vlviz.viz.html import markdown_text

TAB = "Dataset"
DATASETS_ENV = "VLVIZ_DATASETS"
POINTS_ROUTE = "/vlviz-dataset"  # POINTS_ROUTE/{token}/points?colour=NAME
SEARCH_K = 24  # pairs a search returns and highlights
SELECTION_LIMIT = MAX_PAIRS  # pairs a selection hands to Analyze, as many as an upload (decoded from the source)
MAP_PREVIEW_POINTS = 20_000
"""A map of more points is drawn first from every k-th of them (at most this many), then whole: two million points
take several seconds to draw in software, and even 200,000 most of a second (the spatial index and the first
frame) that a 20,000-point preview draws in a fifth of it."""
MAX_SELECTION_CHARS = 400_000  # a lasso's JSON; the page sends at most 20,000 point indices
MAX_QUERY_PIXELS = 40_000_000  # an uploaded query image, checked before the model resizes it
MAP_HEIGHT_PX = 560
MAX_MAP_THUMBNAILS = 64  # thumbnails one call of the zoomed-in map asks for (the page draws at most 60)
NO_LINK = "none"
LASSO_EVENT = {"show_progress": "hidden", "concurrency_id": "dataset-lasso", "concurrency_limit": 1}
"""A lasso's deselect and select arrive back to back: one at a time, so the last one the page made wins."""
LINK_EVENT = {"show_progress": "minimal", "concurrency_id": "dataset-link", "concurrency_limit": 1}
"""One link at a time: a pick the dropdown reports twice finds the map linked already instead of linking a second
map whose token would replace the first's while the page still fetches it."""
STATIC_DIR = Path(__file__).resolve().parent / "static"  # the map's bundle (`vlviz.ui.frontend` builds it)
STATIC_ROUTE = "/vlviz-static"  # Gradio's own file route sends .js as an attachment, which an import refuses
BUNDLE = STATIC_DIR / "dataset-map.js"
ABSOLUTE_PATH = re.compile(r"(?<![\w.:])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"`]+[/\\])+[^\s'\"`]*")


@dataclass(frozen=True)
class DatasetCatalog:
    """The folders this server opens, by the name a visitor picks them by (the folder's own name, numbered when
    two share one)."""

    folders: dict[str, Path]

    @classmethod
    def listed(
        cls, extra: Iterable[str | os.PathLike[str]] = (), env: Mapping[str, str] | None = None
    ) -> DatasetCatalog:
        """The folders of `extra` (the explore command's) then of `VLVIZ_DATASETS`, each once."""
        env = os.environ if env is None else env
        listed = [*extra, *(part for part in env.get(DATASETS_ENV, "").split(os.pathsep) if part.strip())]
        folders: dict[str, Path] = {}
        for folder in dict.fromkeys(Path(str(entry).strip()).expanduser().resolve() for entry in listed):
            name, number = folder.name or "dataset", 2
            while name in folders:
                name, number = f"{folder.name} ({number})", number + 1
            folders[name] = folder
        return cls(folders)

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def folder(self, name: str | None) -> Path:
        """The folder listed as `name`; a name not listed is refused, whatever it is (a path included)."""
        if not isinstance(name, str) or name not in self.folders:
            raise refusal(f"Pick one of the datasets this server lists ({', '.join(self.folders) or 'none'}).")
        return self.folders[name]


def public_message(error: BaseException | str, folder: Path | None = None) -> str:
    """An error's text with every server path taken out: the folder's path becomes its name, others '…'."""
    text = str(error)
    if folder is not None:
        text = text.replace(str(folder), folder.name)
    return ABSOLUTE_PATH.sub("…", text)


OPENED: dict[Path, EmbeddedDataset] = {}  # the process's opened folders, shared by every session
_OPENING = threading.Lock()  # one folder opens (and builds what it lacks) at a time


def open_listed(catalog: DatasetCatalog, name: str) -> EmbeddedDataset:
    """The listed folder `name`, opened once per process (its columns, search index and map built if missing).

    Raises:
        gr.Error: The name is not listed, or the folder cannot be opened (the library's reason, without paths).
    """
    folder = catalog.folder(name)
    with _OPENING:
        if folder not in OPENED:
            try:  # a public server's visitors never start a build: its owner prepares the folder (`explore`)
                OPENED[folder] = open_dataset(folder, prepare=not is_public())
            except (InputError, ValueError, OSError) as error:
                raise refusal(f"The dataset '{name}' cannot be opened: {public_message(error, folder)}") from error
    return OPENED[folder]


def public_model_name(spec: str) -> str:
    """What the page calls a folder's model: its spec, or for a file or folder on the server, only its name."""
    return Path(spec).name if ("/" in spec or "\\" in spec) and not spec.startswith("hf-hub:") else spec


def _path_only(image: gr.Image) -> gr.Image:
    """`image` (an upload input) handing its callback the uploaded file's path with no pixel decoded, so that the
    callback reads the header and refuses a huge image before decoding it (`load_image`). Gradio's own Image
    decodes the upload whole first (as "pil", or to convert its mode), up to Pillow's bomb limit of 179 megapixels;
    and it decodes and re-encodes a data: URL in an API call's JSON before any callback runs: refused here. (Set on
    the instance, as `vlviz.ui.agents.accept_urls` sets a data model: a subclass of a Gradio component makes
    Gradio write a .pyi file beside this module at import.)"""

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if (payload.url or "").startswith("data:") or not payload.path:
            raise refusal("Upload the query image as a file; an image inside the request (a data: URL) is refused.")
        return str(payload.path)

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


@dataclass(eq=False)
class MapHandle:
    """A session's open map: its dataset and colour, and the token its points route and hover ask for."""

    name: str
    dataset: EmbeddedDataset
    colour: str = MODALITY
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    selection: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # pairs for Analyze
    extra: Columns = field(default_factory=dict)  # colour columns of a comparison (the rank shift)
    linked: MapHandle | None = None  # the map of the same pairs by another model, drawn beside this one

    def __deepcopy__(self, memo: dict) -> MapHandle:
        return self  # one object per session, as `Session` is


_BY_TOKEN: weakref.WeakValueDictionary[str, MapHandle] = weakref.WeakValueDictionary()


def register_map(handle: MapHandle) -> MapHandle:
    """Let the points route and hover answer `handle`'s token for as long as the handle lives (in its session's
    gr.State, or as the map another links)."""
    _BY_TOKEN[handle.token] = handle
    return handle


def _opened(handle: MapHandle | None) -> MapHandle:
    if handle is None:
        raise refusal("Open a dataset first.")
    return handle


def _points(request: Request) -> Response:  # sync: Starlette runs it in its thread pool, off the event loop
    """The map of the session whose token the URL holds, as raw float32 arrays; 404 for any other token."""
    handle = _BY_TOKEN.get(request.path_params["token"])
    layout = handle.dataset.layout if handle is not None else None
    colour = request.query_params.get("colour", MODALITY)
    if handle is None or layout is None or colour not in colour_choices(handle.dataset, handle.extra):
        return Response(status_code=404)
    payload = map_points(layout.coordinates, colour_values(handle.dataset, colour, handle.extra).values)
    return _points_response(request, payload)


def _points_response(request: Request, payload: bytes) -> Response:
    """`payload`, or with `?preview=K` (1 <= K <= its points) every k-th point of it, at most K (`points_preview`);
    404 for any other preview."""
    preview = request.query_params.get("preview")
    if preview is not None:
        points = len(payload) // 12
        if not (preview.isdecimal() and len(preview) <= 9 and 1 <= int(preview) <= points):
            return Response(status_code=404)
        payload = points_preview(payload, int(preview))
    return Response(payload, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


@dataclass(frozen=True)
class FirstMap:
    """The map a page shows first: the first listed folder's, coloured by modality. Its points' URL carries a key
    of its own (the same for every visitor: the map is), and the page's config holds it with the point count."""

    catalog: DatasetCatalog
    name: str
    count: int  # points: 2N
    key: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def url(self) -> str:
        return f"{POINTS_ROUTE}/first/{self.key}/points"

    @classmethod
    def of(cls, catalog: DatasetCatalog) -> FirstMap | None:
        """The first listed folder's map, when its map is built (else the page waits for the open event)."""
        if not catalog.names:
            return None
        name = catalog.names[0]
        folder = catalog.folders[name]
        try:
            built = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))["built"]
            pairs = sum(shard_held(shard) for shard in read_index(folder)["shards"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # opening it says what is wrong
        if "layout" not in built or pairs <= 0:
            return None
        first = cls(catalog, name, 2 * pairs)
        _FIRST_MAPS[first.key] = first
        return first


_FIRST_MAPS: dict[str, FirstMap] = {}
_FIRST_POINTS: dict[str, bytes] = {}  # key -> the points, made once (12 bytes a point)
_FIRST_POINTS_LOCK = threading.Lock()  # the page asks for a preview and the whole map at once: made once for both


def _first_points(request: Request) -> Response:  # sync: the first request may wait for the folder to open
    """The first listed folder's map coloured by modality; 404 for an unknown key or a folder that cannot open."""
    first = _FIRST_MAPS.get(request.path_params["key"])
    if first is None:
        return Response(status_code=404)
    with _FIRST_POINTS_LOCK:
        if first.key not in _FIRST_POINTS:
            try:
                dataset = open_listed(first.catalog, first.name)
            except gr.Error:
                return Response(status_code=404)  # the open event shows why
            if dataset.layout is None or 2 * len(dataset) != first.count:
                return Response(status_code=404)
            values = colour_values(dataset, MODALITY).values
            _FIRST_POINTS[first.key] = map_points(dataset.layout.coordinates, values)
    return _points_response(request, _FIRST_POINTS[first.key])


def bundle_url() -> str:
    """Where the page imports the map's module from (its CRC-32 in the query: a rebuilt bundle is fetched anew)."""
    return f"{STATIC_ROUTE}/{BUNDLE.name}?v={zlib.crc32(BUNDLE.read_bytes()):08x}"


def dataset_routes() -> list[BaseRoute]:
    """The routes the map needs: the bundle (served as JavaScript) and each session's points."""
    return [
        Mount(STATIC_ROUTE, StaticFiles(directory=STATIC_DIR), name="vlviz-static"),
        Route(f"{POINTS_ROUTE}/{{token}}/points", _points),
        Route(f"{POINTS_ROUTE}/first/{{key}}/points", _first_points),
    ]


def dataset_point(request: Any) -> dict[str, str] | None:
    """What hovering a point shows: its pair's thumbnail (a data URL), title, caption and source fields. The page
    calls it with [map token, point index] (Gradio hands a server function its arguments as one list); None for an
    unknown token or index."""
    token, index = request if isinstance(request, list) and len(request) == 2 else (None, None)
    handle = _BY_TOKEN.get(token) if isinstance(token, str) else None
    if handle is None or not isinstance(index, int) or not 0 <= index < 2 * len(handle.dataset):
        return None
    dataset, pair = handle.dataset, index % len(handle.dataset)
    kind = "image" if index < len(dataset) else "caption"
    fields = [
        f"{name.removeprefix(SOURCE_COLUMN_PREFIX)} {float(values[pair]):.4g}"
        for name, values in dataset.columns.items()
        if name.startswith(SOURCE_COLUMN_PREFIX) and np.isfinite(values[pair])
    ]
    return {"title": f"pair {pair + 1}, {kind}: {dataset.names([pair])[0]}", "caption": dataset.captions([pair])[0],
            "fields": " · ".join(fields), "thumbnail": _data_url(dataset.thumbnail_jpegs([pair])[0])}  # fmt: skip


def dataset_thumbnails(request: Any) -> list[str] | None:
    """The thumbnails the zoomed-in map draws over its image points: the page calls it with [map token, [image
    point indices]] and gets a data URL each ('' where the folder keeps none); None for an unknown token, an index
    that is no image's point, or more than MAX_MAP_THUMBNAILS."""
    token, indices = request if isinstance(request, list) and len(request) == 2 else (None, None)
    handle = _BY_TOKEN.get(token) if isinstance(token, str) else None
    if handle is None or not isinstance(indices, list) or len(indices) > MAX_MAP_THUMBNAILS:
        return None
    pairs = len(handle.dataset)
    if not all(type(index) is int and 0 <= index < pairs for index in indices):
        return None
    return [_data_url(jpeg) for jpeg in handle.dataset.thumbnail_jpegs(indices)]


def _data_url(jpeg: bytes | None) -> str:
    """A stored thumbnail as the page shows it ('' for none)."""
    return "" if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _describe(handle: MapHandle) -> str:
    """A map's line: its dataset, size, model and layout."""
    dataset = handle.dataset
    return (
        f"**{markdown_text(handle.name)}**: {len(dataset):,} pairs ({2 * len(dataset):,} points) embedded by "
        f"{markdown_text(public_model_name(dataset.model_spec))}; map: "
        f"{markdown_text(dataset.layout.method if dataset.layout else 'none')}."
    )


def linked_pairs(dataset: EmbeddedDataset, other: EmbeddedDataset) -> LinkedPairs | None:
    """The two folders' pairs linked (`link_datasets`) when they hold the same pairs in the same order, so that a
    point of one map is the same point of the other; else None."""
    if len(dataset) != len(other) or not np.array_equal(dataset.positions, other.positions):
        return None
    try:
        return link_datasets(dataset, other)  # the same names and captions at the same places
    except InputError:
        return None


def _map(elem_id: str, role: str, visible: bool | Literal["hidden"] = True, first: FirstMap | None = None) -> gr.HTML:
    """A map (`mountDatasetMap`), empty until a callback sets its points, or drawing `first` from the start."""
    return gr.HTML(
        "[]", html_template=MAP_TEMPLATE, js_on_load=MAP_JS, apply_default_css=False, elem_id=elem_id,
        server_functions=[dataset_point, dataset_thumbnails], bundle=bundle_url(), points=first.url if first else "",
        count=first.count if first else 0, colour_kind="categorical", token="", highlight=[], role=role,
        preview=MAP_PREVIEW_POINTS, cluster_colours=list(CLUSTER_COLOURS), visible=visible,
    )  # fmt: skip


MAP_TEMPLATE = f"""<div class="vlviz-map" style="position:relative;width:100%;height:{MAP_HEIGHT_PX}px;overflow:hidden">
<canvas style="width:100%;height:{MAP_HEIGHT_PX}px;display:block;background:#fff"></canvas>
<div class="vlviz-map-thumbnails" style="position:absolute;inset:0;pointer-events:none;overflow:hidden"></div>
<div class="vlviz-map-tip" style="display:none;position:absolute;max-width:250px;padding:6px;background:#fff;
border:1px solid #999;border-radius:4px;font-size:12px;pointer-events:none;gap:6px"></div>
<div class="vlviz-map-status" style="position:absolute;left:8px;top:8px;font-size:13px"></div></div>"""
MAP_JS = """(async () => {
  const { mountDatasetMap } = await import(props.bundle);
  mountDatasetMap(element, props, trigger, server, watch);
})();"""


class DatasetTab:
    """The Dataset tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self, catalog: DatasetCatalog, affinity: AffinityTab, tabs: gr.Tabs, states: SessionStates) -> None:
        """Create the tab's components (inside its gr.Tab); `affinity` and `tabs` show an analysed selection."""
        self.catalog, self.affinity, self.tabs, self.states = catalog, affinity, tabs, states
        with gr.Row():
            self.name = gr.Dropdown(
                catalog.names, value=catalog.names[0] if catalog.names else None, label="Dataset", scale=3,
                info="the embedding folders this server lists", elem_id="dataset-name",
            )  # fmt: skip
            self.open_button = gr.Button("Open", scale=1, elem_id="dataset-open")
            self.colour = gr.Radio([MODALITY], value=MODALITY, label="Colour by", scale=3, elem_id="dataset-colour")
        self.info = gr.Markdown(elem_id="dataset-info")
        self.first = FirstMap.of(catalog)
        with gr.Row():
            self.map = _map("dataset-map", "main", first=self.first)
            # in the page from the start, hidden, when there is a folder to link: a map made visible by an update
            # loaded before the update's props (its bundle) reached it, and never drew
            self.unlinked: bool | Literal["hidden"] = "hidden" if len(catalog.names) > 1 else False
            self.map2 = _map("dataset-map-linked", "linked", visible=self.unlinked)
        with gr.Row():
            self.cluster = gr.Dropdown(
                [], value=None, label="Select a cluster", elem_id="dataset-cluster",
                info="k-means on the map, largest first, named by the words its captions use most",
            )  # fmt: skip
            self.linked_name = gr.Dropdown(
                [NO_LINK, *catalog.names], value=NO_LINK, label="Linked map", elem_id="dataset-linked",
                info="the same pairs embedded by another model: drawn beside, hover linked, colour by rank_shift",
                visible=len(catalog.names) > 1,  # a second listed folder to link
            )  # fmt: skip
        gr.Markdown(
            "Drag to pan, scroll to zoom, hover a point for its pair; shift-drag (or press and hold, then drag) "
            "lassoes points, whose pairs **Analyze the selection** sends to every tab, as it does a cluster's or a "
            "search's."
        )
        with gr.Row():
            self.query = gr.Textbox(label="Search", placeholder="a red circle", scale=3, elem_id="dataset-query")
            self.query_image = _path_only(
                gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="or an image", height=120, scale=1,
                    elem_id="dataset-image",
                )
            )  # fmt: skip
            with gr.Column(scale=1):
                self.search_in = gr.Radio(["image", "caption"], value="image", label="Search the pairs'")
                self.search_button = gr.Button("Search", elem_id="dataset-search")
        self.hits = gr.Dataframe(
            label="Nearest pairs, best first", interactive=False, wrap=True, elem_id="dataset-hits"
        )
        with gr.Row():
            self.selection = gr.Markdown("No pairs selected.", elem_id="dataset-selection")
            self.analyze_button = gr.Button("Analyze the selection", variant="primary", elem_id="dataset-analyze")
        # the session's map (`MapHandle`): a state of its own, set by the event that opened it (the page's first
        # events run at once, and only the state an event outputs is surely the one the next events read)
        self.handle = pairs_state()
        self.outputs = [
            self.colour, self.info, self.map, self.hits, self.selection, self.map2, self.linked_name, self.cluster,
            self.handle,
        ]  # fmt: skip

    # --- callbacks ------------------------------------------------------------------------------
    def open(self, name: str, session: Session, request: gr.Request | None = None) -> Updates:
        """Open the listed dataset `name` and draw its map coloured by modality."""
        SESSIONS.bind(session, request)
        dataset = open_listed(self.catalog, name)  # not the session's analysis slot: the page's load runs an Analyze
        if dataset.layout is None:
            raise refusal(
                f"The dataset '{name}' has no map yet: its owner builds it with `python -m vlviz explore FOLDER` "
                "(or `embed --layout`)."
            )
        handle = register_map(MapHandle(name, dataset))
        return {
            self.colour: gr.Radio(colour_choices(dataset), value=MODALITY),
            self.info: self._info(handle, colour_values(dataset, MODALITY)),
            self.map: self._drawn(handle, []),
            self.hits: None,
            self.selection: "No pairs selected.",
            self.map2: gr.HTML(visible=self.unlinked, points="", count=0),
            self.linked_name: NO_LINK,
            self.cluster: gr.Dropdown(cluster_choices(dataset), value=None),
            self.handle: handle,
        }

    def link(self, name: str, handle: MapHandle | None) -> Updates:
        """Draw the listed dataset `name` beside the session's map: the same pairs embedded by another model, hover
        linked, and a colour by how far each pair's rank moved between the two (NO_LINK: the map alone)."""
        handle = _opened(handle)
        if name == NO_LINK:
            handle.linked, handle.extra = None, {}
            handle.colour = MODALITY if handle.colour == RANK_SHIFT else handle.colour
            return {
                self.map2: gr.HTML(visible=self.unlinked, points="", count=0),
                self.colour: gr.Radio(colour_choices(handle.dataset), value=handle.colour),
            }
        if handle.linked is not None and handle.linked.name == name:
            return gr.skip()  # linked already (a repeated pick)
        other = open_listed(self.catalog, name)
        linked = linked_pairs(handle.dataset, other) if other.layout is not None else None
        if linked is None:
            raise refusal(f"'{name}' does not hold the same pairs as '{handle.name}' (embed the same source).")
        handle.extra = {RANK_SHIFT: rank_shift(linked, len(handle.dataset))}
        handle.linked = register_map(MapHandle(name, other, handle.colour, extra=handle.extra))
        colouring = colour_values(handle.dataset, handle.colour, handle.extra)
        return {
            self.map2: self._drawn(handle.linked, gr.skip(), visible=True),
            self.colour: gr.Radio(colour_choices(handle.dataset, handle.extra), value=handle.colour),
            self.info: self._info(handle, colouring),
        }

    def open_once(
        self, name: str, handle: MapHandle | None, session: Session, request: gr.Request | None = None
    ) -> Updates:
        """The page's load opens the first listed dataset, unless the session has a map already."""
        if handle is not None or not name:
            return gr.skip()
        return self.open(name, session, request)

    def recolour(self, colour: str, handle: MapHandle | None) -> Updates:
        """Colour the session's map by another column (the page fetches the points again)."""
        handle = _opened(handle)
        choices = colour_choices(handle.dataset, handle.extra)
        if colour not in choices:
            raise refusal(f"Colour by one of {', '.join(choices)}.")
        handle.colour = colour
        colouring = colour_values(handle.dataset, colour, handle.extra)
        updates = {self.map: self._drawn(handle, gr.skip()), self.info: self._info(handle, colouring)}
        if handle.linked is not None:
            handle.linked.colour = colour
            updates[self.map2] = self._drawn(handle.linked, gr.skip())
        return updates

    def search(self, text: str | None, image: str | None, modality: str, handle: MapHandle | None) -> Updates:
        """The SEARCH_K pairs nearest a text (or, without one, an image file), highlighted on the map and listed;
        they become the selection."""
        handle = _opened(handle)
        dataset = handle.dataset
        query: str | Image.Image
        if text and text.strip():
            if len(text) > MAX_CAPTION_CHARS:
                raise refusal(f"The query is {len(text)} characters long; queries have at most {MAX_CAPTION_CHARS}.")
            query = text.strip()
        elif image is not None:
            image = uploaded_file(image)
            width, height = header_size(image)  # nothing decoded yet
            if width * height > MAX_QUERY_PIXELS:
                raise refusal(f"The query image has over {MAX_QUERY_PIXELS:,} pixels; send a smaller one.")
            try:
                query = load_image(image, "The query image")
            except InputError as error:
                raise refusal(public_message(error)) from error
        else:
            raise refusal("Type a query, or drop an image to search with.")
        if modality not in ("image", "caption"):
            raise refusal("Search the pairs' images or their captions.")
        try:
            model = load_model(dataset.model_spec, name=public_model_name(dataset.model_spec))
            hits = dataset.search(query, k=SEARCH_K, modality=modality, model=model)
        except (InputError, ValueError, ModelUnavailableError) as error:
            raise refusal(f"The search failed: {public_message(error)}") from error
        handle.selection = hits.pairs.astype(np.int64)
        highlight = gr.HTML(highlight=pair_points(hits.pairs, len(dataset)))
        return {
            self.map: highlight,
            self.hits: hits_table(dataset, hits),
            self.selection: self._selected(len(hits.pairs), len(hits.pairs), "the search's"),
            self.map2: highlight if handle.linked is not None else gr.skip(),
        }

    def select_cluster(self, cluster: int | None, handle: MapHandle | None) -> Updates:
        """The pairs of a cluster's points (the first SELECTION_LIMIT, highlighted on the map) become the
        selection."""
        handle = _opened(handle)
        clusters = handle.dataset.clusters
        if clusters is None or type(cluster) is not int or not 0 <= cluster < len(clusters.labels):
            raise refusal("Pick one of the map's clusters.")
        n_pairs = len(handle.dataset)
        chosen, named = pairs_of_points(clusters.points(cluster), n_pairs, SELECTION_LIMIT)
        handle.selection = chosen
        highlight = gr.HTML(highlight=pair_points(chosen, n_pairs))
        return {
            self.map: highlight,
            self.selection: self._selected(len(chosen), named, f"cluster {cluster + 1}'s"),
            self.map2: highlight if handle.linked is not None else gr.skip(),
        }

    def lassoed(self, handle: MapHandle | None, event: gr.SelectData) -> Updates:
        """The page's lasso (the selected points' indices, JSON, in the select event): their pairs become the
        selection."""
        value = event.value
        if handle is None or not isinstance(value, str) or len(value) > MAX_SELECTION_CHARS:
            return {self.selection: "No pairs selected."}
        try:
            points = json.loads(value)
        except ValueError:
            points = []
        chosen, named = selected_pairs(points if isinstance(points, list) else [], len(handle.dataset), SELECTION_LIMIT)
        handle.selection = chosen
        return {self.selection: self._selected(len(chosen), named, "the lasso's")}

    def analyze_selection(
        self, value_kind: str, handle: MapHandle | None, session: Session, request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's documented idiom)
    ) -> Updates:  # fmt: skip
        """Read the selected pairs from the folder's source, encode them with the folder's model, and make them the
        session's analysis: the Affinity tab shows them, and every other tab works on them."""
        handle = _opened(handle)
        if len(handle.selection) == 0:
            raise refusal("Select pairs first: search, pick a cluster, or lasso points on the map.")
        SESSIONS.bind(session, request)
        address = client_address(request)
        dataset = handle.dataset
        with session.exclusive("analysis"):
            progress(0.05, desc=f"Reading {len(handle.selection)} pairs from the dataset's source")
            try:
                model = load_model(dataset.model_spec, name=public_model_name(dataset.model_spec))
                with LEDGER.reserve(session.token, address) as room:
                    pairs = dataset.pairs(handle.selection, max_pairs=SELECTION_LIMIT, memory=room)  # header first
                    room.take(model.encoded_bytes(len(pairs)), f"These {len(pairs)} pairs with their embeddings")
                    progress(0.4, desc="Encoding")
                    analysis = session.hold(encode_pair_set(model, pairs), model, address)
            except (InputError, ValueError, ModelUnavailableError) as error:
                raise refusal(f"The selection cannot be analysed: {public_message(error)}") from error
            progress(0.85, desc="Drawing")
            status = model_status(analysis.model, f"{len(pairs)} pairs selected in the dataset '{handle.name}'")
            shown = self.affinity.shown(analysis.encoded, status, value_kind)
        return shown | {self.tabs: gr.Tabs(selected="affinity"), self.states.shown_tab: "Affinity"}

    # --- helpers --------------------------------------------------------------------------------
    def _drawn(self, handle: MapHandle, highlight: Any, **settings: Any) -> gr.HTML:
        """The map's props that draw `handle`'s points in its colour (`settings`: more of gr.HTML's, e.g. visible)."""
        colour = colour_values(handle.dataset, handle.colour, handle.extra)
        first, count = self.first, 2 * len(handle.dataset)
        if first and (handle.name, handle.colour, count) == (first.name, MODALITY, first.count):
            points = first.url  # what the page's config named: not fetched again
        else:
            points = f"{POINTS_ROUTE}/{handle.token}/points?colour={quote(handle.colour)}"
        return gr.HTML(
            points=points, count=count, colour_kind=colour.kind,
            token=handle.token, highlight=highlight, **settings,
        )  # fmt: skip

    def _info(self, handle: MapHandle, colour: ColourValues) -> str:
        lines = [_describe(map_handle) for map_handle in (handle, handle.linked) if map_handle is not None]
        return "\n\n".join([*lines, legend_markdown(colour)])

    @staticmethod
    def _selected(kept: int, named: int, source: str) -> str:
        more = f" (the first {kept} of {named} go to Analyze)" if named > kept else ""
        return f"**{kept} pairs selected** ({source}){more}." if kept else "No pairs selected."


def build_dataset_tab(
    demo: gr.Blocks, catalog: DatasetCatalog, affinity: AffinityTab, tabs: gr.Tabs, states: SessionStates
) -> DatasetTab:
    """Create the tab's components and wire them: open (on the button, a new pick, and the page's load: the tab
    is the first one shown when a dataset is listed), colour, search, lasso and Analyze the selection."""
    view = DatasetTab(catalog, affinity, tabs, states)
    opened = dict(fn=view.open, inputs=[view.name, states.session], outputs=view.outputs, **ANALYSIS_EVENT)
    view.open_button.click(**opened, api_name="dataset_open")
    view.name.input(**opened, api_visibility="private")
    first = [view.name, view.handle, states.session]
    demo.load(view.open_once, first, view.outputs, api_visibility="private", **ANALYSIS_EVENT)
    recoloured = [view.map, view.info, view.map2]
    view.colour.input(view.recolour, [view.colour, view.handle], recoloured, api_visibility="private")
    linked = [view.map2, view.colour, view.info]
    view.linked_name.input(view.link, [view.linked_name, view.handle], linked, api_name="dataset_link", **LINK_EVENT)
    searched = dict(
        fn=view.search, inputs=[view.query, view.query_image, view.search_in, view.handle],
        outputs=[view.map, view.hits, view.selection, view.map2], **VIEW_EVENT,
    )  # fmt: skip
    view.search_button.click(**searched, api_name="dataset_search")
    view.query.submit(**searched, api_visibility="private")
    view.cluster.input(
        view.select_cluster, [view.cluster, view.handle], [view.map, view.selection, view.map2],
        api_name="dataset_cluster", **VIEW_EVENT,
    )  # fmt: skip
    for drawn in (view.map, view.map2):  # the linked map holds the same pairs: its lasso selects them too
        drawn.select(view.lassoed, view.handle, view.selection, api_visibility="private", **LASSO_EVENT)
    shown = [*affinity.outputs, tabs, states.shown_tab]
    view.analyze_button.click(
        view.analyze_selection, [affinity.value_kind, view.handle, states.session], shown, api_name="dataset_analyze",
        **ANALYSIS_EVENT,
    )  # fmt: skip
    return view
