"""The Dataset tab without a browser: the owner's list of folders, open, search, a selection to Analyze, bad folders
refused without a path, and the points route and hover asking for the session's map token."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import vlviz.embedding.layout_store as layout_store
from tests.browser import SCENES
from tests.conftest import free_port
from tests.embedding.test_dataset import write_scene_parquet
from tests.embedding.test_embeddings_store import write_scene_shards
from vlviz.cli.main import main
from vlviz.embedding import space
from vlviz.embedding.dataset import MANIFEST_FILE, DatasetLayout, open_dataset
from vlviz.embedding.linked import link_datasets
from vlviz.embedding.store import load_embeddings
from vlviz.metrics.affinity import retrieval_ranks
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.ui.dataset_tab import (
    MAX_MAP_THUMBNAILS,
    POINTS_ROUTE,
    DatasetCatalog,
    FirstMap,
    MapHandle,
    dataset_point,
    dataset_thumbnails,
    open_listed,
    public_message,
    register_map,
)
from vlviz.viz.dataset_view import (
    CLUSTER,
    CLUSTER_COLOURS,
    MODALITY,
    cluster_choices,
    colour_choices,
    colour_values,
    legend_markdown,
    map_points,
    points_preview,
    rank_shift,
    selected_pairs,
)

N = 120  # pairs of the shared folder


def embedded_folder(root: Path, n: int = N, model: str = OFFLINE_SPEC, name: str = "scenes") -> Path:
    """`n` bundled-style scenes embedded by `model` into root/name, with a PCA map (UMAP's compile takes longer than
    these tests)."""
    source = write_scene_shards(root / f"{name}-source", n=n, per_tar=64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout_store, "fit_layout", lambda i, t, *_: space.fit_layout(i, t, space.LayoutSettings("pca")))
        args = ["embed", "--model", model, "--data", source, "--out", str(root / name), "--shard-size", "64"]
        assert main([*args, "--layout"]) == 0
    return root / name


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> dict[str, Path]:
    """A good folder, the same pairs embedded by another model, fewer pairs, and folders with a missing shard,
    another model's shard and a truncated search index."""
    root = tmp_path_factory.mktemp("datasets")
    good = embedded_folder(root)
    linked = embedded_folder(root, model=str(tiny_vit_dir), name="scenes-vit")
    missing = Path(shutil.copytree(good, root / "missing"))
    (missing / "embeddings-00001.npz").unlink()
    fewer = embedded_folder(root, n=70, model=str(tiny_vit_dir), name="fewer")
    other = Path(shutil.copytree(fewer, root / "other"))
    shutil.copy(good / "embeddings-00001.npz", other / "embeddings-00001.npz")
    truncated = Path(shutil.copytree(good, root / "truncated"))
    search = truncated / "search-images.faiss"
    search.write_bytes(search.read_bytes()[:100])
    return {
        "scenes": good, "scenes-vit": linked, "fewer": fewer, "missing": missing, "other": other,
        "truncated": truncated,
    }  # fmt: skip


@pytest.fixture(scope="module")
def dataset_app(folders: dict[str, Path]) -> Iterator[str]:
    """The app with the folders listed (as `explore` lists them), on a free local port."""
    from vlviz.ui import build_app, launch_kwargs

    demo = build_app(OFFLINE_SPEC, initial_sample=None, datasets=list(folders.values()))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_the_catalog_lists_the_owners_folders_by_name_and_refuses_anything_else(tmp_path: Path) -> None:
    (tmp_path / "a" / "set").mkdir(parents=True)
    (tmp_path / "b" / "set").mkdir(parents=True)
    env = {"VLVIZ_DATASETS": f"{tmp_path / 'b' / 'set'}:{tmp_path / 'a' / 'set'}"}
    catalog = DatasetCatalog.listed([tmp_path / "a" / "set"], env=env)
    assert catalog.names == ["set", "set (2)"]  # the explore argument first, each folder once
    assert catalog.folder("set (2)") == (tmp_path / "b" / "set").resolve()
    for name in (str(tmp_path / "a" / "set"), "../set", None, ["set"]):
        with pytest.raises(Exception, match="Pick one of the datasets this server lists"):
            catalog.folder(name)


def test_messages_never_show_a_server_path(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    text = f"{folder} lacks a shard; the source /srv/data/shards/{{000..009}}.tar moved (C:\\data\\x.tar too)"
    shown = public_message(text, folder)
    assert str(tmp_path) not in shown and "/srv" not in shown and "C:\\data" not in shown
    assert shown.startswith("scenes lacks a shard")


def test_selected_points_name_their_pairs_bounded() -> None:
    pairs, named = selected_pairs([3, 103, 5, 250, -1, "x", 7, 9], n_pairs=100, limit=3)
    assert pairs.tolist() == [3, 5, 7] and named == 4  # 103 is pair 3's caption; 250, -1, "x" are no points
    payload = np.frombuffer(map_points(np.array([[0, 0], [2, 4], [4, 0]]), np.array([0, 0.5, 1])), "<f4")
    x, y, values = payload[:3], payload[3:6], payload[6:]
    assert np.abs(np.concatenate([x, y])).max() <= 1 and values.tolist() == [0, 0.5, 1]
    assert np.isclose(2 * (x[1] - x[0]), y[1] - y[0])  # one scale for both axes: the map keeps its aspect


def test_a_maps_preview_is_every_kth_point_where_the_whole_map_draws_it() -> None:
    coordinates = np.stack([np.arange(10.0), np.arange(10.0) ** 2], axis=1)
    whole = np.frombuffer(map_points(coordinates, np.arange(10) / 10), "<f4").reshape(3, 10)
    for at_most, kept in ((4, [0, 3, 6, 9]), (5, [0, 2, 4, 6, 8]), (10, list(range(10))), (1, [0])):
        preview = np.frombuffer(points_preview(whole.tobytes(), at_most), "<f4").reshape(3, -1)
        assert np.array_equal(preview, whole[:, kept])  # positions as in the whole map


def test_open_search_and_analyze_the_selection(dataset_app: str, folders: dict[str, Path]) -> None:
    client = Client(dataset_app, verbose=False)
    opened = client.predict("scenes", api_name="/dataset_open")
    info, selection = opened[1], opened[4]
    assert f"{N} pairs ({2 * N} points)" in info and "vlviz-scenes" in info and selection == "No pairs selected."
    _, hits, selection, _ = client.predict("a red circle", None, "image", api_name="/dataset_search")
    captions = [row[3] for row in hits["data"]]
    assert len(captions) == 24 and all("red" in caption for caption in captions[:2])
    assert selection.startswith("**24 pairs selected** (the search's)")
    result = client.predict("cosine similarity", api_name="/dataset_analyze")
    data, status = result[5], result[6]
    assert sorted(data["captions"]) == sorted(captions) and len(data["image_to_text_rank"]) == 24
    assert "24 pairs selected in the dataset 'scenes'" in status
    query = client.predict("a red circle", api_name="/query")  # the other tabs work on the selection
    assert len(query) == 24


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is `width` x `height` and holds 64 bytes of pixel data: any decode of it fails, so a clear
    refusal of its size shows that only its header was read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )


def test_an_image_query_is_read_from_its_header_first_and_never_from_the_request(
    dataset_app: str, tmp_path: Path
) -> None:
    client = Client(dataset_app, verbose=False)
    client.predict("scenes", api_name="/dataset_open")
    scene = tmp_path / "scene.png"
    Image.open(SCENES / "scene_00.png").save(scene)
    _, hits, selection, _ = client.predict("", handle_file(str(scene)), "image", api_name="/dataset_search")
    assert len(hits["data"]) == 24 and selection.startswith("**24 pairs selected**")
    for name, data, says in [
        ("huge.png", _png_header(12_000, 12_000), "The query image has over 40,000,000 pixels; send a smaller one."),
        ("bomb.png", _png_header(20_000, 20_000), "The query image is too large to open safely"),
        ("notes.png", b"not an image", "The query image is not a readable image (not a known image format)"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AppError) as refused:
            client.predict("", handle_file(str(tmp_path / name)), "image", api_name="/dataset_search")
        assert says in str(refused.value) and str(tmp_path) not in str(refused.value)

    # an image inside the request's JSON (Gradio would decode it, and encode it again, before any callback)
    url = "data:image/png;base64," + base64.b64encode(scene.read_bytes()).decode()
    payload = {"data": ["", {"url": url, "path": None, "meta": {"_type": "gradio.FileData"}}, "image"]}
    call = httpx.post(f"{dataset_app.rstrip('/')}/gradio_api/call/dataset_search", json=payload, timeout=30)
    answer = httpx.get(
        f"{dataset_app.rstrip('/')}/gradio_api/call/dataset_search/{call.json()['event_id']}", timeout=30
    )
    assert "an image inside the request (a data: URL) is refused" in answer.text


def test_a_cluster_of_the_map_is_a_selection_to_analyze(dataset_app: str, folders: dict[str, Path]) -> None:
    client = Client(dataset_app, verbose=False)
    client.predict("scenes", api_name="/dataset_open")
    clusters = open_dataset(folders["scenes"]).clusters
    assert clusters is not None and len(clusters.labels) == 16 and clusters.sizes.sum() == 2 * N
    named = clusters.points(3) % N
    _, selection, _ = client.predict(3, api_name="/dataset_cluster")
    kept = len(np.unique(named))
    assert selection.startswith(f"**{kept} pairs selected** (cluster 4's)")
    result = client.predict("cosine similarity", api_name="/dataset_analyze")
    assert sorted(result[5]["names"]) == sorted(open_dataset(folders["scenes"]).names(np.unique(named)))
    for cluster in (16, -1):
        with pytest.raises(AppError) as refused:
            client.predict(cluster, api_name="/dataset_cluster")
        assert "Traceback" not in str(refused.value)


def test_the_map_colours_by_cluster_and_lists_them_named(folders: dict[str, Path]) -> None:
    dataset = open_dataset(folders["scenes"])
    assert colour_choices(dataset)[:2] == [MODALITY, CLUSTER]
    colour = colour_values(dataset, CLUSTER)
    assert colour.kind == "clusters" and np.array_equal(colour.values, dataset.clusters.assignment)
    choices = cluster_choices(dataset)
    assert [value for _, value in choices] == list(range(16))
    sizes = [int(re.search(r"\((\d+) points\)$", label).group(1)) for label, _ in choices]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == 2 * N
    assert choices[0][0].startswith(f"1: {dataset.clusters.labels[0] or 'no word stands out'} (")
    assert colour_values(dataset, MODALITY).kind == "categorical"
    assert colour_values(dataset, "own_cosine").kind == "continuous"
    assert colour.swatches == tuple(zip(CLUSTER_COLOURS, [label for label, _ in choices], strict=True))
    legend = legend_markdown(replace(colour, swatches=(("#4e79a7", "1: <img src=x> · red (9 points)"),)))
    assert '<span style="color:#4e79a7">&#9632;</span> 1: &lt;img src=x&gt; · red (9 points)' in legend


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("missing", "lacks embeddings-00001.npz, which its index.json lists. Run the same `python -m vlviz embed`"),
        ("other", "it is another folder's or another model's shard; delete it and run the same"),
        ("truncated", "(image search index) is 100 bytes where dataset.json lists"),
        ("/etc", "is not in the list of choices"),  # Gradio refuses it first; `DatasetCatalog.folder` would too
    ],
)
def test_bad_folders_get_a_clear_message_without_paths(
    dataset_app: str, folders: dict[str, Path], name: str, says: str
) -> None:
    client = Client(dataset_app, verbose=False)
    with pytest.raises(AppError) as refused:
        client.predict(name, api_name="/dataset_open")
    message = str(refused.value)
    assert says in message and str(folders["scenes"].parent) not in message and "Traceback" not in message


def test_the_points_route_and_hover_answer_only_the_maps_token(dataset_app: str, folders: dict[str, Path]) -> None:
    dataset = open_dataset(folders["scenes"])
    handle = register_map(MapHandle("scenes", dataset))  # as opening the tab does
    points = httpx.get(f"{dataset_app.rstrip('/')}{POINTS_ROUTE}/{handle.token}/points?colour=own_cosine", timeout=30)
    assert points.status_code == 200 and len(points.content) == 3 * 4 * 2 * N
    preview = httpx.get(f"{dataset_app.rstrip('/')}{POINTS_ROUTE}/{handle.token}/points?preview={N}", timeout=30)
    assert preview.content == points_preview(map_points(dataset.layout.coordinates, np.arange(2 * N) >= N), N)
    refused = ("0", str(2 * N + 1), "-1", "1e3", "", "9" * 12, "²")  # beyond the map's points, or not a count
    for url in (f"wrong{handle.token}/points", f"{handle.token}/points?colour=__class__", "../points"):
        assert httpx.get(f"{dataset_app.rstrip('/')}{POINTS_ROUTE}/{url}", timeout=30).status_code == 404
    for count in refused:
        url = f"{dataset_app.rstrip('/')}{POINTS_ROUTE}/{handle.token}/points?preview={quote(count)}"
        assert httpx.get(url, timeout=30).status_code == 404
    point = dataset_point([handle.token, N + 4])
    assert point["caption"] == dataset.captions([4])[0] and point["thumbnail"].startswith("data:image/jpeg;base64,")
    assert point["title"].startswith("pair 5, caption") and point["fields"] == ""  # the tars' rows carry none
    for request in ([f"x{handle.token}", 0], [handle.token, 2 * N], [handle.token, "0"], handle.token, None):
        assert dataset_point(request) is None

    thumbnails = dataset_thumbnails([handle.token, [3, 0, 3]])  # the stored JPEGs, as `embed` wrote them
    assert thumbnails == [
        "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() for jpeg in dataset.thumbnail_jpegs([3, 0, 3])
    ]
    assert Image.open(io.BytesIO(base64.b64decode(thumbnails[1].split(",")[1]))).size == dataset.thumbnail(0).size
    too_many = list(range(MAX_MAP_THUMBNAILS + 1))
    for request in ([handle.token, [N]], [handle.token, [True]], [handle.token, too_many], [handle.token, 3], [0, [1]]):
        assert dataset_thumbnails(request) is None  # a caption's point, a bool, too many, not a list, no token


def test_the_sources_fields_colour_the_map_and_show_on_hover(dataset_app: str, tmp_path: Path) -> None:
    similarity = [i / 10 for i in range(12)]
    source = write_scene_parquet(tmp_path / "pairs.parquet", 12, 4, similarity=similarity)
    assert main(["embed", "--model", OFFLINE_SPEC, "--data", source, "--out", str(tmp_path / "out")]) == 0
    dataset = open_dataset(tmp_path / "out", layout=False)
    dataset = replace(dataset, layout=DatasetLayout(np.zeros((24, 2), np.float32), "none", {}))
    handle = register_map(MapHandle("out", dataset))
    assert "source: similarity" in colour_choices(dataset)
    url = f"{dataset_app.rstrip('/')}{POINTS_ROUTE}/{handle.token}/points?colour={quote('source: similarity')}"
    points = np.frombuffer(httpx.get(url, timeout=30).content, "<f4")
    assert np.allclose(points[48:60], np.array(similarity) / 1.1)  # the colour values: min-max scaled
    assert dataset_point([handle.token, 3])["fields"] == "similarity 0.3"


def test_the_first_listed_map_is_in_the_pages_config_and_the_same_for_everyone(
    dataset_app: str, folders: dict[str, Path], tmp_path: Path
) -> None:
    catalog = DatasetCatalog.listed([folders["scenes"], folders["fewer"]], env={})
    first = FirstMap.of(catalog)
    assert first is not None and first.name == "scenes" and first.count == 2 * N
    dataset = open_dataset(folders["scenes"])
    handle = register_map(MapHandle("scenes", dataset))
    base = dataset_app.rstrip("/")
    shared = httpx.get(f"{base}{first.url}", timeout=30)
    own = httpx.get(f"{base}{POINTS_ROUTE}/{handle.token}/points?colour=modality", timeout=30)
    assert shared.status_code == 200 and shared.content == own.content
    shared_preview = httpx.get(f"{base}{first.url}?preview=7", timeout=30)
    assert shared_preview.content == points_preview(own.content, 7) and len(shared_preview.content) < len(own.content)
    assert httpx.get(f"{base}{POINTS_ROUTE}/first/{first.key}x/points", timeout=30).status_code == 404
    unbuilt = Path(shutil.copytree(folders["scenes"], tmp_path / "unbuilt"))
    manifest = json.loads((unbuilt / MANIFEST_FILE).read_text())
    del manifest["built"]["layout"]
    (unbuilt / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert FirstMap.of(DatasetCatalog.listed([unbuilt], env={})) is None  # the page waits for the open event
    assert FirstMap.of(DatasetCatalog.listed([tmp_path / "nothing"], env={})) is None


def test_a_public_server_never_builds_what_a_folder_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_scene_shards(tmp_path / "source", n=10)
    assert main(["embed", "--model", OFFLINE_SPEC, "--data", source, "--out", str(tmp_path / "plain")]) == 0
    monkeypatch.setenv("VLVIZ_PUBLIC", "1")
    dataset = open_listed(DatasetCatalog.listed([tmp_path / "plain"], env={}), "plain")
    assert dataset.layout is None and not (tmp_path / "plain" / "layout.npz").exists()  # its owner runs explore


def test_a_linked_map_needs_the_same_pairs_and_colours_by_how_far_ranks_moved(
    dataset_app: str, folders: dict[str, Path]
) -> None:
    client = Client(dataset_app, verbose=False)
    client.predict("scenes", api_name="/dataset_open")
    _, colour, info = client.predict("scenes-vit", api_name="/dataset_link")
    assert colour["value"] == "modality" and ["rank_shift", "rank_shift"] in colour["choices"]
    assert "**scenes-vit**: 120 pairs" in info and "**scenes**: 120 pairs" in info
    with pytest.raises(AppError, match="'fewer' does not hold the same pairs as 'scenes'"):
        client.predict("fewer", api_name="/dataset_link")

    stored = {name: load_embeddings(folders[name]) for name in ("scenes", "scenes-vit")}
    exact = {name: retrieval_ranks(e.image_features, e.text_features)[0].numpy() for name, e in stored.items()}
    opened = [open_dataset(folders[name], prepare=False) for name in stored]
    shift = rank_shift(link_datasets(*opened), N)  # N is within the reference sample: every caption, one rank rule
    assert np.allclose(shift, (exact["scenes-vit"] - exact["scenes"]) / (N - 1), atol=1e-6) and shift.max() > 0
