"""Embedding folders opened for exploring: columns, search, layout, thumbnails, a selection, and bad folders."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlviz.embedding.layout_store as layout_store
import vlviz.embedding.pair_columns as pair_columns
from bench.dataset import HELD_OUT, synthetic_pairs, write_synthetic_folder
from tests.embedding.test_embeddings_store import write_scene_shards
from vlviz.cli.main import main
from vlviz.data.inputs import ByteBudget, InputError, decoded_bytes
from vlviz.data.scenes import generate_scenes
from vlviz.embedding.dataset import COLUMNS, MANIFEST_FILE, SOURCE_COLUMN_PREFIX, open_dataset, prepare_dataset
from vlviz.embedding.folder import file_record, open_folder
from vlviz.embedding.search_index import exact_search, recall_at_k
from vlviz.embedding.store import load_embeddings, thumbnail_jpeg
from vlviz.metrics.consistency import sample_inconsistency
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.viz.dataset_view import colour_values

N = 90  # scenes in the shared folder: shards of 32, 32 and 26


def embed(source: str, out: Path, *options: str, model: str = OFFLINE_SPEC) -> None:
    assert main(["embed", "--model", model, "--data", source, "--out", str(out), "--shard-size", "32", *options]) == 0


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """N scenes as webdataset tars, and the folder `embed` wrote of them with the offline model."""
    root = tmp_path_factory.mktemp("dataset")
    source = write_scene_shards(root / "data", n=N, per_tar=30)
    embed(source, root / "out")
    return source, root / "out"


@pytest.fixture
def folder(scenes: tuple[str, Path], tmp_path: Path) -> Path:
    """A copy of the shared folder, for a test that changes it."""
    return Path(shutil.copytree(scenes[1], tmp_path / "out"))


@pytest.fixture(scope="module")
def offline_model():
    return load_model(OFFLINE_SPEC, device="cpu")


def test_embed_builds_the_columns_and_search_index_and_they_are_the_metrics(
    scenes: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = scenes
    assert set(json.loads((out / MANIFEST_FILE).read_text())["built"]) == {"columns", "search"}
    dataset = open_dataset(out, layout=False)
    assert len(dataset) == N and dataset.layout is None and dataset.positions.tolist() == list(range(N))
    stored = load_embeddings(out)
    images, texts = stored.image_features, stored.text_features
    assert np.allclose(dataset.columns["own_cosine"], (images * texts).sum(1).numpy(), atol=1e-5)
    exact = sample_inconsistency(images, texts).numpy()  # N <= REFERENCE_PAIRS: every other pair
    assert np.allclose(dataset.columns["inconsistency"], exact, atol=1e-5)

    monkeypatch.setattr(pair_columns, "REFERENCE_PAIRS", 20)
    columns = pair_columns.pair_columns(open_folder(out))
    reference = torch.from_numpy(columns["reference"])
    difference = (images @ images[reference].T - texts @ texts[reference].T).abs()  # (N, 20)
    itself = reference[None, :] == torch.arange(N)[:, None]
    expected = difference.masked_fill(itself, 0).sum(1) / (20 - itself.sum(1))
    assert len(reference) == 20 and np.allclose(columns["inconsistency"], expected.numpy(), atol=1e-5)
    assert dataset.captions([2, 0]) == [stored.captions[2], stored.captions[0]]
    assert dataset.names([5]) == [stored.names[5]]
    assert np.allclose(dataset.features([4])["caption"], texts[4:5].numpy())


def test_search_reaches_the_recall_of_exact_search_scanning_few_lists(tmp_path: Path) -> None:
    write_synthetic_folder(tmp_path / "synthetic", 5_000, dim=64, shard_size=1_000)
    dataset = open_dataset(tmp_path / "synthetic", layout=False)
    built = json.loads((tmp_path / "synthetic" / MANIFEST_FILE).read_text())["built"]["search"]
    images, captions = synthetic_pairs(200, HELD_OUT, dim=64)
    for modality, queries in (("image", captions), ("caption", images), ("image", images)):
        record = built["files"][modality]
        assert record["probes"] < built["lists"] == 128  # approximate: most lists are never scanned
        found = np.stack([dataset.search(query, k=10, modality=modality).pairs for query in queries])
        truth = exact_search(dataset.embeddings, queries, 10, modality).pairs
        assert recall_at_k(found, truth) >= 0.95
    hits = dataset.search(captions[0], k=5)
    assert np.all(np.diff(hits.scores) <= 0) and hits.pairs.shape == (5,)
    with pytest.raises(InputError, match="load synthetic and pass it as model="):
        dataset.search("a red circle")
    with pytest.raises(ValueError, match="has 64 values, got 3"):
        dataset.search(np.ones(3))


def test_text_image_and_vector_queries_find_their_pairs(
    scenes: tuple[str, Path], offline_model, tiny_vit_dir: Path
) -> None:
    dataset = open_dataset(scenes[1], layout=False)
    hits = dataset.search("a red circle", k=5, model=offline_model)
    captions = dataset.captions(hits.pairs)
    assert "red" in captions[0] and sum("red" in caption for caption in captions) >= 3
    image = dataset.pairs([7]).images[0]
    assert dataset.search(image, k=3, model=offline_model).pairs[0] == 7
    vector = dataset.features([11])["image"][0]
    assert dataset.search(vector, k=1).pairs.tolist() == [11]
    truth = exact_search(dataset.embeddings, vector[None], 10, "caption")
    assert dataset.search(vector, k=10, modality="caption").pairs.tolist() == truth.pairs[0].tolist()
    with pytest.raises(InputError, match="is not the model out was embedded with"):
        dataset.search("a red circle", model=load_model(str(tiny_vit_dir), device="cpu"))
    with pytest.raises(ValueError, match="Unknown modality 'text'"):
        dataset.search(vector, modality="text")


def test_search_lists_beyond_the_memory_budget_are_memory_mapped(scenes: tuple[str, Path]) -> None:
    held = open_dataset(scenes[1], layout=False)
    mapped = open_dataset(scenes[1], layout=False, memory_budget=1)
    assert all(index.mapped for index in mapped._indexes.values()) and mapped.nbytes < held.nbytes
    vector = held.features([3])["caption"][0]
    assert mapped.search(vector).pairs.tolist() == held.search(vector).pairs.tolist()
    with pytest.raises(InputError, match="more than the 0 MB budget"):
        mapped.features([1, 2])


@pytest.mark.parametrize("file_format", ["npz", "parquet"])
def test_thumbnails_and_a_selection_come_back_from_the_folder_and_its_source(tmp_path: Path, file_format: str) -> None:
    source = write_scene_shards(tmp_path / "data", n=12, per_tar=5)
    embed(source, tmp_path / "out", "--format", file_format)
    dataset = open_dataset(tmp_path / "out", layout=False)
    selection = dataset.pairs([7, 1, 3])
    assert selection.names == ["0001.png", "0003.png", "0007.png"]
    assert selection.captions == dataset.captions([1, 3, 7])
    for pair, image in zip([1, 3, 7], selection.images):
        expected = Image.open(io.BytesIO(thumbnail_jpeg(image, 64)))
        assert np.array_equal(np.asarray(dataset.thumbnail(pair)), np.asarray(expected))
    with pytest.raises(InputError, match="Select 1 to 2 pairs to analyse, not 3"):
        dataset.pairs([1, 2, 3], max_pairs=2)

    write_scene_shards(tmp_path / "data", n=12, per_tar=5, seed=9)  # other scenes under the same names
    with pytest.raises(
        InputError, match=r"000.tar no longer holds 0001.png .* the source changed since it was embedded"
    ):
        dataset.pairs([1])
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(InputError, match="The source of out cannot be read"):
        dataset.pairs([1])
    embed(write_scene_shards(tmp_path / "bare", n=3), tmp_path / "none", "--thumbnails", "0")
    assert open_dataset(tmp_path / "none", layout=False).thumbnail(0) is None


def test_thumbnails_read_only_the_rows_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    import vlviz.embedding.store as store

    monkeypatch.setattr(store, "PARQUET_ROW_GROUP", 4)  # 12 pairs: row groups of pairs 0-3, 4-7 and 8-11
    source = write_scene_shards(tmp_path / "data", n=12, per_tar=5)
    embed(source, tmp_path / "parquet", "--format", "parquet")
    embed(source, tmp_path / "npz")
    shard = tmp_path / "parquet" / "embeddings-00000.parquet"
    assert pq.ParquetFile(shard).num_row_groups == 3
    read_groups = []
    read_row_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, **kw: read_groups.append(i) or read_row_group(self, i, **kw)
    )
    rows = np.array([9, 0, 9, 2])
    expected = open_dataset(tmp_path / "npz", layout=False).thumbnail_jpegs(rows)
    assert store.read_thumbnails(shard, rows) == expected  # the same JPEGs from either format
    assert sorted(read_groups) == [0, 2]  # the groups of pairs 0, 2 and 9, once each
    assert all(Image.open(io.BytesIO(jpeg)).format == "JPEG" for jpeg in expected)


def write_scene_parquet(path: Path, n: int, seed: int, **columns: list) -> str:
    """`n` scenes as one parquet file of PNG bytes and captions, with more `columns` (a source with its own fields)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scenes = generate_scenes(n, seed=seed, image_size=32)
    encoded = []
    for image in scenes.pil_images():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    pq.write_table(pa.table({"image": encoded, "caption": scenes.captions, **columns}), path)
    return str(path)


@pytest.mark.parametrize("file_format", ["npz", "parquet"])
def test_the_source_rows_numeric_fields_become_colour_columns(tmp_path: Path, file_format: str) -> None:
    similarity = [None if i == 5 else i / 40 for i in range(40)]
    width = [None] * 32 + [float(i) for i in range(32, 40)]  # only the second shard's rows have it
    url = [f"u{i}" for i in range(40)]
    source = write_scene_parquet(tmp_path / "pairs.parquet", 40, 2, similarity=similarity, width=width, url=url)
    embed(source, tmp_path / "out", "--format", file_format)
    dataset = open_dataset(tmp_path / "out", layout=False)
    assert list(dataset.columns) == [*COLUMNS, "source: similarity", "source: width"]
    expected = np.array([np.nan if v is None else v for v in similarity], np.float32)
    assert np.array_equal(dataset.columns["source: similarity"], expected, equal_nan=True)
    assert np.isnan(dataset.columns["source: width"][:32]).all()
    assert dataset.columns["source: width"][32:].tolist() == list(range(32, 40))
    colour = colour_values(dataset, "source: width")
    assert colour.values[32:40].tolist() == pytest.approx(np.linspace(0, 1, 8).tolist())
    assert colour.legend == (
        "Colour: width (a field of the source's rows), from dark purple (32) to yellow (39). 32 pairs without a "
        "value are drawn dark purple."
    )


def test_a_selection_reads_images_of_plain_tars_in_place_and_streams_compressed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_scene_shards(tmp_path / "data", n=12, per_tar=5)
    embed(source, tmp_path / "plain")
    streamed = [tmp_path / "gz" / f"{number:03d}.tar.gz" for number in range(3)]
    streamed[0].parent.mkdir()
    for number, packed in enumerate(streamed):
        packed.write_bytes(gzip.compress((tmp_path / "data" / f"{number:03d}.tar").read_bytes()))
    embed(str(tmp_path / "gz" / "{000..002}.tar.gz"), tmp_path / "compressed")
    expected = open_dataset(tmp_path / "compressed", layout=False).pairs([11, 2, 6])  # streamed: no locations

    located = open_folder(tmp_path / "plain").rows(np.arange(12), ("image_locations",))["image_locations"]
    assert located.shape == (12, 4) and located[:, 0].tolist() == [0] * 5 + [1] * 5 + [2] * 2
    with (tmp_path / "data" / "002.tar").open("rb") as tar:
        tar.seek(int(located[11, 1]))
        assert zlib.crc32(tar.read(int(located[11, 2]))) == located[11, 3]

    def no_streaming(*args: object, **kwargs: object) -> None:
        raise AssertionError("a located selection must not stream the source")

    monkeypatch.setattr("vlviz.embedding.dataset.stream_pairs", no_streaming)
    selection = open_dataset(tmp_path / "plain", layout=False).pairs([11, 2, 6])
    assert selection.names == expected.names == ["0002.png", "0006.png", "0011.png"]
    assert selection.captions == expected.captions
    for image, other in zip(selection.images, expected.images):
        assert np.array_equal(np.asarray(image), np.asarray(other))
    with pytest.raises(AssertionError, match="must not stream"):
        open_dataset(tmp_path / "compressed", layout=False).pairs([1])
    one_image = decoded_bytes(32, 32)  # a 32-pixel scene, decoded
    with pytest.raises(InputError, match="The selected images take"):  # from the headers, before decoding
        open_dataset(tmp_path / "plain", layout=False).pairs([1, 2, 3], memory=ByteBudget(2 * one_image))
    budget = ByteBudget(3 * one_image)
    open_dataset(tmp_path / "plain", layout=False).pairs([1, 2, 3], memory=budget)
    assert budget.taken == 3 * one_image


def test_the_layout_is_stored_and_a_rerun_resumes_it(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout_store, "SAMPLE_PAIRS", 30)  # 60 points fitted, the other 120 placed
    place = layout_store._place_shard
    placed: list[int] = []
    interrupt = [True]

    def interrupted(embeddings, shard, *args):
        if shard == 1 and interrupt[0]:
            raise RuntimeError("interrupted")
        placed.append(shard)
        return place(embeddings, shard, *args)

    monkeypatch.setattr(layout_store, "_place_shard", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_dataset(folder)
    assert (folder / "layout-fit.npz").is_file() and (folder / "layout-part-00000.npy").is_file()
    assert (
        not (folder / "layout.npz").exists()
        and "layout" not in json.loads((folder / MANIFEST_FILE).read_text())["built"]
    )
    with np.load(folder / "layout-fit.npz") as fit:
        sample, fitted = fit["sample"], fit["coordinates"]

    assert placed == [0]
    interrupt[0] = False  # the rerun goes through; the fit is reused, never redone
    monkeypatch.setattr(layout_store, "fit_layout", lambda *a, **k: pytest.fail("the fit was redone"))
    assert prepare_dataset(folder) == ["layout"]
    assert placed == [0, 1, 2]  # shard 0 is not placed again
    assert not list(folder.glob("layout-part-*")) and not (folder / "layout-fit.npz").exists()
    layout = open_dataset(folder, prepare=False).layout
    assert layout is not None and layout.coordinates.shape == (2 * N, 2)
    assert np.array_equal(layout.coordinates[sample], fitted[:30])  # a sampled pair keeps its UMAP position
    assert np.array_equal(layout.coordinates[N + sample], fitted[30:])
    assert layout.pair.tolist() == [*range(N), *range(N)] and layout.modality.tolist() == [0] * N + [1] * N
    assert "UMAP of a seeded sample of 30 pairs; every other point at the weighted mean" in layout.method

    stored = load_embeddings(folder)  # every other point at the weighted mean of its nearest sampled points
    points = torch.cat([stored.image_features, stored.text_features])
    anchors = torch.cat([stored.image_features[sample], stored.text_features[sample]])
    placed_here = layout_store.Anchors.of(anchors, torch.from_numpy(fitted)).place(points).numpy()
    others = np.setdiff1d(np.arange(2 * N), np.concatenate([sample, N + sample]))
    assert np.allclose(layout.coordinates[others], placed_here[others], atol=1e-4)

    damaged = bytearray((folder / "layout.npz").read_bytes())
    damaged[-40] ^= 0xFF
    (folder / "layout.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"out/layout.npz \(layout\) is damaged \(its CRC-32 differs\); delete it"):
        open_dataset(folder)


def test_embed_fits_the_layout_with_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout_store, "SAMPLE_PAIRS", 10)
    embed(write_scene_shards(tmp_path / "data", n=15, per_tar=8), tmp_path / "out", "--layout")
    assert json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["built"].keys() == {"columns", "search", "layout"}


def test_bad_folders_are_refused_with_what_is_wrong_and_what_to_do(
    scenes: tuple[str, Path], folder: Path, tmp_path: Path, tiny_vit_dir: Path, tiny_siglip_dir: Path
) -> None:
    source, _ = scenes
    with pytest.raises(ValueError, match=r"holds no index.json: write it with `python -m vlviz embed`"):
        open_dataset(tmp_path)

    search = folder / "search-images.faiss"
    size = search.stat().st_size
    search.write_bytes(search.read_bytes()[: size // 2])
    with pytest.raises(ValueError, match=rf"out/search-images.faiss \(image search index\) is {size // 2} bytes where "
                                         rf"dataset.json lists {size}: it is truncated"):  # fmt: skip
        open_dataset(folder)
    search.unlink()
    with pytest.raises(ValueError, match=r"is missing though dataset.json lists it; open the folder again"):
        open_dataset(folder, prepare=False)
    vector = open_dataset(folder).features([5])["image"][0]  # opening rebuilds what lost a file
    assert search.stat().st_size == size and open_dataset(folder).search(vector, k=1).pairs.tolist() == [5]

    (folder / MANIFEST_FILE).write_text('{"format": "vlviz-dataset", "built": ')
    with pytest.raises(ValueError, match=r"dataset.json is unreadable .*; delete it and open the folder again"):
        open_dataset(folder)
    manifest = json.loads((scenes[1] / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "embeddings": "0" * 32}))
    with pytest.raises(ValueError, match="built from other embeddings than the shards now hold"):
        open_dataset(folder)

    embed(source, tmp_path / "vit", model=str(tiny_vit_dir))
    embed(source, tmp_path / "siglip", model=str(tiny_siglip_dir))
    shutil.copy(tmp_path / "vit" / "embeddings-00001.npz", folder / "embeddings-00001.npz")
    with pytest.raises(ValueError, match=r"embeddings-00001.npz holds \(32, 16\) image features where index.json "
                                         r"lists 32 pairs of width 128 .*another model's shard; delete it and run"):  # fmt: skip
        open_dataset(folder)
    shutil.copy(tmp_path / "siglip" / "embeddings-00002.npz", tmp_path / "vit" / "embeddings-00002.npz")
    with pytest.raises(ValueError, match=r"embeddings-00002.npz holds embeddings of other weights than index.json's"):
        open_dataset(tmp_path / "vit")
    (tmp_path / "vit" / "embeddings-00000.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=r"embeddings-00000.npz is not a readable embedding shard"):
        open_dataset(tmp_path / "vit")
    (folder / "embeddings-00002.npz").unlink()
    with pytest.raises(ValueError, match=r"lacks embeddings-00002.npz, which its index.json lists. Run the same"):
        open_dataset(folder)


def test_thumbnails_are_a_setting_a_rerun_must_repeat(
    tiny_vit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, out = write_scene_shards(tmp_path / "data", n=3), tmp_path / "out"
    embed(source, out, model=str(tiny_vit_dir))
    args = ["embed", "--model", str(tiny_vit_dir), "--data", source, "--out", str(out), "--shard-size", "32"]
    assert main([*args, "--thumbnails", "32"]) == 2
    assert "written with --thumbnails 64 (this run: 32)" in capsys.readouterr().err
    index = json.loads((out / "index.json").read_text())
    del index["thumbnails"]  # as a folder written before thumbnails were stored: none
    (out / "index.json").write_text(json.dumps(index))
    assert main([*args, "--thumbnails", "0"]) == 0


def test_columns_of_an_older_build_open_without_source_fields_or_ask_for_a_rebuild(folder: Path) -> None:
    with np.load(folder / "columns.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    np.savez(folder / "columns.npz", **{k: v for k, v in arrays.items() if not k.startswith("source_")})  # version 2
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["built"]["columns"] |= {**file_record(folder / "columns.npz"), "version": 2}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert list(open_dataset(folder, prepare=False).columns) == list(COLUMNS)  # as a public server opens it
    np.savez(folder / "columns.npz", **{k: v for k, v in arrays.items() if k != "caption_rank_share"})  # version 1
    manifest["built"]["columns"] |= {**file_record(folder / "columns.npz"), "version": 1}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"out/columns.npz was built by an older vlviz \(it has no caption_rank_share"):
        open_dataset(folder, prepare=False)
    assert list(open_dataset(folder).columns) == list(COLUMNS)  # prepare rebuilds it
    assert json.loads((folder / MANIFEST_FILE).read_text())["built"]["columns"]["version"] == 3


def test_a_version_2_columns_file_keeps_its_pair_metrics_and_gains_the_source_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 only added the source's fields: the metrics (minutes at a million pairs) are not computed again,
    unless the file is not the one dataset.json lists."""
    folder = tmp_path / "out"
    embed(write_scene_parquet(tmp_path / "data.parquet", 12, 3, similarity=[i / 12 for i in range(12)]), folder)
    with np.load(folder / "columns.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["own_cosine"] = np.full(12, 0.25, np.float32)  # a mark the upgrade must keep
    np.savez(folder / "columns.npz", **{k: v for k, v in arrays.items() if not k.startswith("source_")})
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["built"]["columns"] |= {**file_record(folder / "columns.npz"), "version": 2}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    computed = []
    monkeypatch.setattr(pair_columns, "pair_columns", lambda *args: computed.append(args) or {})
    dataset = open_dataset(folder, layout=False)
    assert not computed and dataset.columns["own_cosine"].tolist() == [0.25] * 12
    assert [name for name in dataset.columns if name.startswith(SOURCE_COLUMN_PREFIX)] == ["source: similarity"]
    assert json.loads((folder / MANIFEST_FILE).read_text())["built"]["columns"]["version"] == 3
