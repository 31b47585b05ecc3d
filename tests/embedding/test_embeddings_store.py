"""Embedding folders: round trip, resume, refusals, and two gloo ranks whose shards equal one process's."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vlviz.embedding.store as store
from tests.conftest import free_port
from vlviz.data.formats import PairStream, RawPair, stream_pairs
from vlviz.data.inputs import InputError
from vlviz.data.scenes import generate_scenes
from vlviz.embedding.store import EmbedSettings, embed_to_folder, load_embeddings, read_index, read_shard
from vlviz.models.loading import load_model

N = 10  # pairs in the test source: shards of 3 give 3, 3, 3 and 1


def write_scene_shards(folder: Path, n: int = N, per_tar: int = 4, seed: int = 5, corrupt: tuple[int, ...] = ()) -> str:
    """`n` scenes as webdataset tar shards of `per_tar` samples (those in `corrupt` with bytes that are no
    image); returns their brace pattern."""
    scenes = generate_scenes(n, seed=seed, image_size=32)
    folder.mkdir(parents=True, exist_ok=True)
    tars = -(-n // per_tar)
    for number in range(tars):
        with tarfile.open(folder / f"{number:03d}.tar", "w") as tar:
            for i in range(number * per_tar, min(n, (number + 1) * per_tar)):
                png = io.BytesIO()
                scenes.pil_images()[i].save(png, format="PNG")
                if i in corrupt:
                    png = io.BytesIO(png.getvalue()[:40])  # a truncated file: the header, no pixels
                for name, data in ((f"{i:04d}.png", png.getvalue()), (f"{i:04d}.txt", scenes.captions[i].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{000..{tars - 1:03d}}}.tar")


@pytest.fixture
def source(tmp_path: Path) -> str:
    return write_scene_shards(tmp_path / "data")


def _reference(model, source: str):
    """The pairs of `source` encoded in one call by `VLModel.encode_pairs` (what /analyze computes)."""
    from vlviz.data.formats import read_pairs

    pairs = read_pairs(source)
    return pairs, model.encode_pairs(pairs.images, pairs.captions)


@pytest.mark.parametrize("file_format", ["npz", "parquet"])
def test_a_folder_reads_back_what_the_model_computes(
    tiny_vit_dir: Path, source: str, tmp_path: Path, file_format: str
) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    settings = EmbedSettings(shard_size=3, file_format=file_format, dtype="float32", patches=True, batch_size=2)
    summary = embed_to_folder(model, stream_pairs(source), tmp_path / "out", settings)
    assert (summary.pairs, summary.shards, summary.written, summary.skipped) == (N, 4, 4, 0)

    index = read_index(tmp_path / "out")
    assert index["complete"] and index["pairs"] == N and index["model"] == str(tiny_vit_dir)
    assert [(s["first"], s["count"], s["complete"]) for s in index["shards"]] == [
        (0, 3, True), (3, 3, True), (6, 3, True), (9, 1, True)
    ]  # fmt: skip
    assert index["dim"] == 16 and index["grid_size"] == [4, 4] and index["logit_bias"] is None

    pairs, reference = _reference(model, source)
    stored = load_embeddings(tmp_path / "out")
    assert stored.names == pairs.names and stored.captions == pairs.captions
    assert stored.positions.tolist() == list(range(N)) and not stored.sampled
    assert torch.allclose(stored.image_features, reference.image_features, atol=1e-5)
    assert torch.allclose(stored.text_features, reference.text_features, atol=1e-5)
    gap = (reference.image_features.mean(0) - reference.text_features.mean(0)).norm()
    assert stored.gap == pytest.approx(float(gap), abs=1e-5)
    own = (reference.image_features * reference.text_features).sum(1).mean()
    assert stored.matched_cosine == pytest.approx(float(own), abs=1e-5)

    shard = read_shard(tmp_path / "out" / f"embeddings-00001.{file_format}", patches=True)
    assert shard["index"].tolist() == [3, 4, 5] and shard["names"].tolist() == pairs.names[3:6]
    assert np.allclose(shard["patch_features"], reference.patch_features[3:6].numpy(), atol=1e-5)  # (3, 16, 16)
    assert np.allclose(shard["token_features"], reference.token_features[3:6].numpy(), atol=1e-5)  # (3, 16, 16)
    assert np.array_equal(shard["token_ids"], reference.tokens.ids[3:6].numpy())


def test_a_sample_is_seeded_uniform_and_in_folder_order(tiny_vit_dir: Path, source: str, tmp_path: Path) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    embed_to_folder(model, stream_pairs(source), tmp_path / "out", EmbedSettings(shard_size=4))
    whole = load_embeddings(tmp_path / "out")
    _, reference = _reference(model, source)  # without --patches: plain encode_image / encode_text, float16 on disk
    assert torch.allclose(whole.image_features, reference.image_features, atol=2e-3)
    assert torch.allclose(whole.text_features, reference.text_features, atol=2e-3)
    sample = load_embeddings(tmp_path / "out", max_pairs=4, seed=3)
    expected = torch.randperm(N, generator=torch.Generator().manual_seed(3))[:4].sort().values
    assert sample.sampled and sample.positions.tolist() == expected.tolist() and sample.pairs == N
    assert torch.equal(sample.image_features, whole.image_features[expected])
    assert sample.names == [whole.names[i] for i in expected.tolist()]
    assert (sample.gap, sample.matched_cosine) == (whole.gap, whole.matched_cosine)  # over every pair
    with pytest.raises(InputError, match="has no patch_features: embed with --patches"):
        read_shard(tmp_path / "out" / "embeddings-00000.npz", patches=True)


def _interrupted(stream: PairStream, after: int) -> PairStream:
    """The stream, failing at its pair `after` (a crash in the middle of a run)."""

    def pairs():
        for number, pair in enumerate(stream.pairs):
            if number == after:
                raise InputError("interrupted")
            yield pair

    return PairStream(stream.source, pairs(), stream.notices)


def test_a_rerun_resumes_and_encodes_only_missing_shards(
    tiny_vit_dir: Path, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    encoded: list[int] = []
    encode = store._encode_batch

    def counting(model, pairs: list[RawPair], pixels: torch.Tensor, patches: bool):
        encoded.extend(int(pair.name[:4]) for pair in pairs)
        return encode(model, pairs, pixels, patches)

    monkeypatch.setattr(store, "_encode_batch", counting)
    settings = EmbedSettings(shard_size=3, batch_size=2)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="interrupted"):
        embed_to_folder(model, _interrupted(stream_pairs(source), after=5), out, settings)
    assert sorted(p.name for p in out.iterdir()) == ["embeddings-00000.npz", "index.json"]  # no partial shard
    with pytest.raises(InputError, match=r"not finished \(1 shard written so far\)\. Run the same"):
        load_embeddings(out)

    encoded.clear()
    summary = embed_to_folder(model, stream_pairs(source), out, settings)
    assert encoded == list(range(3, N)) and (summary.written, summary.skipped) == (3, 1)
    (out / "embeddings-00002.npz").unlink()
    encoded.clear()
    assert embed_to_folder(model, stream_pairs(source), out, settings).written == 1
    assert encoded == [6, 7, 8]
    encoded.clear()
    assert embed_to_folder(model, stream_pairs(source), out, settings).skipped == 4  # complete: nothing read
    assert encoded == [] and len(load_embeddings(out).names) == N


@pytest.mark.parametrize("file_format", ["npz", "parquet"])
def test_an_image_that_does_not_decode_is_left_out_with_its_reason(
    tiny_vit_dir: Path, tmp_path: Path, file_format: str
) -> None:
    source = write_scene_shards(tmp_path / "data", corrupt=(4, 5))  # shard 1 (pairs 3-5 at size 3) loses two
    model = load_model(str(tiny_vit_dir), device="cpu")
    settings = EmbedSettings(shard_size=3, file_format=file_format, patches=True, batch_size=2)
    out = tmp_path / "out"
    summary = embed_to_folder(model, stream_pairs(source), out, settings)
    assert summary.left_out_count == 2 and [s["position"] for s in summary.left_out] == [4, 5]
    assert summary.left_out[0]["name"] == "0004.png" and "0004.png" in summary.left_out[0]["reason"]
    assert str(tmp_path) not in json.dumps(summary.left_out)  # names, never paths
    index = read_index(out)
    assert index["complete"] and (index["pairs"], index["held"], index["skipped"]) == (N, N - 2, 2)
    assert [s["held"] for s in index["shards"]] == [3, 1, 3, 1]
    stored = load_embeddings(out)
    kept = [i for i in range(N) if i not in (4, 5)]
    assert stored.positions.tolist() == kept and stored.pairs == N - 2 and len(stored.names) == N - 2
    _, reference = _reference(model, write_scene_shards(tmp_path / "clean"))
    assert torch.allclose(stored.image_features, reference.image_features[kept], atol=2e-3)
    sample = load_embeddings(out, max_pairs=3, seed=1)  # a sample of the stored pairs
    expected = torch.randperm(N - 2, generator=torch.Generator().manual_seed(1))[:3].sort().values
    assert sample.positions.tolist() == [kept[i] for i in expected.tolist()]
    assert embed_to_folder(model, stream_pairs(source), out, settings).skipped == 4  # a rerun finds it done

    lost = write_scene_shards(tmp_path / "bad", n=2, corrupt=(0, 1))  # nothing decodes: empty shards, a clear end
    assert embed_to_folder(model, stream_pairs(lost), tmp_path / "none", settings).left_out_count == 2
    with pytest.raises(InputError, match="holds no pair: no image of its source could be read"):
        load_embeddings(tmp_path / "none")


def test_another_model_or_other_settings_are_refused(
    tiny_vit_dir: Path, tiny_resnet_dir: Path, source: str, tmp_path: Path
) -> None:
    model = load_model(str(tiny_vit_dir), device="cpu")
    out = tmp_path / "out"
    embed_to_folder(model, stream_pairs(source), out, EmbedSettings(shard_size=3))
    other = load_model(str(tiny_resnet_dir), device="cpu")
    with pytest.raises(InputError, match=f"out holds embeddings of {tiny_vit_dir}, not {tiny_resnet_dir}"):
        embed_to_folder(other, stream_pairs(source), out, EmbedSettings(shard_size=3))
    with torch.no_grad():
        model.model.logit_scale.add_(1.0)  # same spec, other weights
    try:
        with pytest.raises(InputError, match="with other weights"):
            embed_to_folder(model, stream_pairs(source), out, EmbedSettings(shard_size=3))
    finally:
        with torch.no_grad():
            model.model.logit_scale.sub_(1.0)
    with pytest.raises(InputError, match=r"written with --shard-size 3 \(this run: 4\)"):
        embed_to_folder(model, stream_pairs(source), out, EmbedSettings(shard_size=4))
    with pytest.raises(InputError, match=r"--patches: .* has no patch embeddings"):
        embed_to_folder(other, stream_pairs(source), tmp_path / "resnet", EmbedSettings(patches=True))
    with pytest.raises(ValueError, match="Unknown format 'csv'"):
        EmbedSettings(file_format="csv")
    index = read_index(out)
    (out / "index.json").write_text(json.dumps({**index, "precision": "bfloat16"}))  # as a GPU run writes it
    with pytest.raises(InputError, match=r"computed in bfloat16 \(this run: float32, on another kind of device\)"):
        embed_to_folder(model, stream_pairs(source), out, EmbedSettings(shard_size=3))


def _rank_worker(rank: int, port: int, model_dir: str, source: str, out: str) -> None:
    from vlviz.training.distributed import init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed(torch.device("cpu"))
    model = load_model(model_dir, device="cpu")
    summary = embed_to_folder(
        model, stream_pairs(source), out, EmbedSettings(shard_size=3, batch_size=2), context.rank, context.world_size
    )
    seen = sorted(p.name for p in Path(out).glob("embeddings-*"))  # after the barrier: every rank's shards
    (Path(out).parent / f"rank{rank}.json").write_text(json.dumps([summary.written, summary.skipped, seen]))
    dist.destroy_process_group()


def test_two_gloo_ranks_write_what_one_process_writes(tiny_vit_dir: Path, source: str, tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(free_port(), str(tiny_vit_dir), source, str(tmp_path / "ranks" / "out")), nprocs=2)
    model = load_model(str(tiny_vit_dir), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embed_to_folder(model, stream_pairs(source), tmp_path / "one", EmbedSettings(shard_size=3, batch_size=2))
    finally:
        torch.set_num_threads(threads)
    shards = [f"embeddings-0000{i}.npz" for i in range(4)]
    for rank in range(2):  # each rank wrote its two shards (r, r + 2) and saw all four after the barrier
        assert json.loads((tmp_path / "ranks" / f"rank{rank}.json").read_text()) == [2, 0, shards]
    together, alone = read_index(tmp_path / "ranks" / "out"), read_index(tmp_path / "one")
    assert together["shards"] == alone["shards"] and together["complete"] and together["pairs"] == N
    for name in shards:
        two, one = read_shard(tmp_path / "ranks" / "out" / name), read_shard(tmp_path / "one" / name)
        assert two.keys() == one.keys()
        assert all(np.array_equal(two[key], one[key]) for key in two)
