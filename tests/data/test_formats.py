"""vlviz.data.formats: every data-source format gives the source's pairs in order, or an InputError a user can act on."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlviz.cli.main import main
from vlviz.data import formats, inputs
from vlviz.data.formats import expand_braces, read_pairs
from vlviz.data.inputs import InputError, PairSet
from vlviz.data.scenes import generate_scenes

SCENES = generate_scenes(6, seed=3)
IMAGES = SCENES.pil_images()
CAPTIONS = SCENES.captions


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def same_pixels(pairs: PairSet, indices: list[int]) -> bool:
    return all(np.array_equal(np.asarray(got), SCENES.images[i]) for got, i in zip(pairs.images, indices, strict=True))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two webdataset shards: scenes 0-2 captioned by .txt, scenes 3-5 by .json (a caption and a text field)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    texts = [(f"{i:04d}.txt", CAPTIONS[i].encode()) for i in range(3)]
    write_tar(folder / "000.tar", [m for i in range(3) for m in ((f"{i:04d}.png", png(IMAGES[i])), texts[i])])
    records = [{"caption": CAPTIONS[3]}, {"text": CAPTIONS[4], "width": 64}, {"caption": [CAPTIONS[5], "another"]}]
    jsons = [(f"{i + 3:04d}.json", json.dumps(record).encode()) for i, record in enumerate(records)]
    write_tar(folder / "001.tar", [m for i in range(3) for m in (jsons[i], (f"{i + 3:04d}.png", png(IMAGES[i + 3])))])
    return folder


def write_parquet(
    path: Path, image: pa.Array, captions: pa.Array, names: tuple[str, str] = ("image", "caption")
) -> Path:
    pq.write_table(pa.table({names[0]: image, names[1]: captions}), path, row_group_size=2)
    return path


def write_images(folder: Path) -> list[str]:
    folder.mkdir(exist_ok=True)
    files = [f"scene{i}.png" for i in range(len(IMAGES))]
    for file, image in zip(files, IMAGES):
        image.save(folder / file)
    return files


# -------------------------------------------------------------------------------------- webdataset


def test_brace_patterns_expand_like_webdataset() -> None:
    assert expand_braces("shards/{000..002}.tar") == ["shards/000.tar", "shards/001.tar", "shards/002.tar"]
    assert expand_braces("{8..10}.tar") == ["8.tar", "9.tar", "10.tar"]
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"] and expand_braces("odd{}.tar") == ["odd{}.tar"]
    with pytest.raises(InputError, match=r"more than 1000 files"):
        expand_braces("{0..99999999}.tar")  # refused from its size, without building the list
    with pytest.raises(InputError, match=r"more than 10 files"):
        expand_braces("{0..3}-{0..3}", limit=10)


def test_webdataset_shards_give_their_pairs_in_order(shards: Path) -> None:
    pairs = read_pairs(str(shards / "{000..001}.tar"))
    assert pairs.captions == CAPTIONS  # .txt, .json "caption", .json "text", and the first of a caption list
    assert pairs.names == [f"{i:04d}.png" for i in range(6)]
    assert same_pixels(pairs, list(range(6)))
    assert read_pairs(shards / "001.tar").captions == CAPTIONS[3:]  # a single shard, as a Path


def test_webdataset_caption_field_is_configurable(tmp_path: Path) -> None:
    shard = write_tar(
        tmp_path / "alt.tar", [("a.png", png(IMAGES[0])), ("a.json", b'{"alt": "a picture", "caption": 3}')]
    )
    assert read_pairs(shard, caption_column="alt").captions == ["a picture"]
    with pytest.raises(InputError, match=r'the "caption" field of a.json is not a string'):
        read_pairs(shard)
    with pytest.raises(InputError, match=r'no column "title"; its columns are alt, caption'):
        read_pairs(shard, caption_column="title")


def test_a_sample_without_a_caption_is_named(shards: Path) -> None:
    write_tar(shards / "001.tar", [("0003.png", png(IMAGES[3])), ("0004.png", png(IMAGES[4])), ("0004.txt", b"x")])
    with pytest.raises(InputError, match=r"001.tar: sample 0003 has an image \(0003.png\) but no caption"):
        read_pairs(str(shards / "{000..001}.tar"))


def test_samples_without_an_image_are_skipped_with_a_notice(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "s.tar", [("a.txt", b"no picture"), ("b.png", png(IMAGES[1])), ("b.txt", b"one")])
    pairs = read_pairs(shard)
    assert pairs.captions == ["one"] and "Skipped 1 sample without an image: s.tar: a" in pairs.notices


def test_corrupt_or_missing_shards_are_refused(shards: Path, tmp_path: Path) -> None:
    data = (shards / "000.tar").read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated.tar is not a readable tar archive"):
        read_pairs(truncated)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(InputError, match=r"garbage.tar is not a readable tar archive"):
        read_pairs(garbage)
    with pytest.raises(InputError, match=r"002.tar \(from .*\) does not exist"):
        read_pairs(str(shards / "{000..002}.tar"))
    broken_image = write_tar(tmp_path / "broken.tar", [("a.png", b"not a png"), ("a.txt", b"a caption")])
    with pytest.raises(InputError, match=r"broken.tar: a.png is not a readable image"):
        read_pairs(broken_image)


def test_shard_members_are_bounded(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(InputError, match=r"000.tar: 0000.png is 0.0 MB, more than the 0 MB allowed for an image"):
        read_pairs(shards / "000.tar")


def huge_member_tar(path: Path, size: int) -> Path:
    """A .tar.gz whose first member declares `size` bytes (a zero-filled "bomb") but whose data is cut short.

    A reader that decompresses the member to skip it fails late; one that checks the header refuses first.
    """
    info = tarfile.TarInfo("0000.bin")
    info.size = size
    with tarfile.open(path, "w:gz") as archive:
        archive.fileobj.write(info.tobuf())  # the header alone: nothing follows
    return path


def test_a_huge_member_is_refused_from_its_header_even_when_it_would_be_skipped(tmp_path: Path) -> None:
    bomb = huge_member_tar(tmp_path / "bomb.tar.gz", 4 * 2**30)
    with pytest.raises(InputError, match=r"bomb.tar.gz: 0000.bin is 4,096.0 MB, more than the 64 MB a member"):
        read_pairs(bomb)


def test_tar_members_are_bounded_in_bytes_and_count_over_every_shard(
    shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = [str(shards / "000.tar"), str(shards / "001.tar")]
    with tarfile.open(shards / "000.tar") as archive:
        first_shard = sum(m.size for m in archive)
    monkeypatch.setattr(formats, "MAX_TAR_BYTES", first_shard + 1)  # the second shard passes the total
    with pytest.raises(InputError, match=r"The shards up to 001.tar hold more than 0 MB of members"):
        formats.pairs_from_dataset_uploads(uploads)
    monkeypatch.setattr(formats, "MAX_TAR_BYTES", 2**30)
    monkeypatch.setattr(formats, "MAX_TAR_MEMBERS", 7)  # 6 members a shard
    with pytest.raises(InputError, match=r"The shards up to 001.tar hold more than 7 members"):
        formats.pairs_from_dataset_uploads(uploads)
    assert len(list(formats.stream_pairs(str(shards / "{000..001}.tar")).pairs)) == 6  # a stream has no total


def test_a_name_sent_by_a_client_is_never_a_brace_pattern(shards: Path, tmp_path: Path) -> None:
    """`{..,..}` passes a check that the path lies in the upload folder, then expands out of it (issue 21)."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    escaping = str(uploads / "{..,..}" / "shards" / "000.tar")  # expands to tmp_path/shards/000.tar (and more)
    assert len(read_pairs(str(shards / "{000..001}.tar"))) == 6  # the command line keeps its patterns
    with pytest.raises(InputError, match=r"000.tar is not a readable tar archive \(No such file") as refused:
        formats.pairs_from_dataset_uploads([escaping])
    assert CAPTIONS[0] not in str(refused.value)


def test_decoded_bytes_are_budgeted_from_the_headers_before_decoding(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = inputs.decoded_bytes(*IMAGES[0].size)
    assert one == 4 * IMAGES[0].width * IMAGES[0].height  # Pillow keeps RGB in 32 bits a pixel
    assert inputs.decoded_bytes(4000, 2000) == 4 * 1024 * 512  # held at MAX_SIDE on the longer side
    decoded = []
    monkeypatch.setattr(formats, "load_image", lambda image, label, notices: decoded.append(label) or IMAGES[0])
    with pytest.raises(InputError, match=r"up to 000.tar: 0002.png take .* MB in memory, more than"):
        formats.pairs_from_dataset_uploads([str(shards / "000.tar")], memory=inputs.ByteBudget(2 * one))
    assert len(decoded) == 2  # the third image was never decoded
    files = write_images(tmp_path / "loose")
    with pytest.raises(InputError, match=r"The 6 images uploaded take .* in memory"):
        inputs.pairs_from_uploads([str(tmp_path / "loose" / f) for f in files], "\n".join(CAPTIONS),
                                  memory=inputs.ByteBudget(5 * one))  # fmt: skip


# ----------------------------------------------------------------------------------------- parquet


def test_parquet_with_an_image_bytes_column(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "bytes.parquet", pa.array([png(im) for im in IMAGES]), pa.array(CAPTIONS))
    pairs = read_pairs(path)
    assert pairs.captions == CAPTIONS and same_pixels(pairs, list(range(6)))
    assert pairs.names == [f"bytes.parquet row {i}" for i in range(6)]


def spied_batches(monkeypatch: pytest.MonkeyPatch) -> list[pa.RecordBatch]:
    """Every record batch read from a parquet file from now on, in order."""
    seen: list[pa.RecordBatch] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        for batch in original(self, *args, **kwargs):
            seen.append(batch)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    return seen


def test_parquet_read_in_small_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "PARQUET_BATCH_ROWS", 4)
    path = write_parquet(tmp_path / "bytes.parquet", pa.array([png(im) for im in IMAGES]), pa.array(CAPTIONS))
    seen = spied_batches(monkeypatch)
    assert read_pairs(path).captions == CAPTIONS
    assert max(b.num_rows for b in seen) <= 4 and sum(b.num_rows for b in seen) == 6


def test_parquet_row_groups_are_bounded_before_their_cells_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few KB of parquet can declare a huge caption (issue 21): its row group's size refuses it unread."""
    long = "a" * (3 * formats.MAX_CAPTION_BYTES)
    bomb = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"image": [png(IMAGES[0])], "caption": [long]}), bomb, compression="zstd")
    assert bomb.stat().st_size < 20_000
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", None)  # nothing may be read
    with pytest.raises(InputError, match=r'row group 0 of column "caption" holds 3.0 MB uncompressed, more than'):
        read_pairs(bomb)


def test_a_dictionary_repeated_cell_is_read_a_few_rows_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dictionary encoding stores one big value once for every row; expanded, a batch must stay within its bytes."""
    value = png(IMAGES[0]) + b"\0" * 2**20  # a valid PNG with 1 MB of trailing bytes, in every row
    path = tmp_path / "repeated.parquet"
    pq.write_table(pa.table({"image": [value] * 16, "caption": CAPTIONS[:1] * 16}), path, use_dictionary=True)
    assert path.stat().st_size < 200_000
    monkeypatch.setattr(formats, "PARQUET_BATCH_BYTES", 3 * 2**20)
    seen = spied_batches(monkeypatch)
    assert len(read_pairs(path)) == 16
    assert max(b.nbytes for b in seen) <= 3 * 2**20 and len(seen) >= 8


def test_parquet_with_a_hugging_face_image_struct(tmp_path: Path) -> None:
    structs = pa.array([{"bytes": png(im), "path": f"scene{i}.png"} for i, im in enumerate(IMAGES)])
    captions = pa.array([[c, "a second caption"] for c in CAPTIONS])  # a list column: its first caption
    path = write_parquet(tmp_path / "hf.parquet", structs, captions, names=("image", "captions"))
    pairs = read_pairs(path)
    assert pairs.captions == CAPTIONS and pairs.names == [f"scene{i}.png" for i in range(6)]
    assert same_pixels(pairs, list(range(6)))


def test_parquet_with_a_path_column(tmp_path: Path) -> None:
    files = write_images(tmp_path / "images")
    path = write_parquet(tmp_path / "paths.parquet", pa.array([f"images/{f}" for f in files]), pa.array(CAPTIONS),
                         names=("Image Path", "text"))  # fmt: skip
    pairs = read_pairs(path)
    assert pairs.captions == CAPTIONS and pairs.names == files and same_pixels(pairs, list(range(6)))
    elsewhere = write_parquet(tmp_path / "bare.parquet", pa.array(files), pa.array(CAPTIONS), names=("file", "text"))
    assert read_pairs(elsewhere, images_dir=tmp_path / "images").captions == CAPTIONS
    with pytest.raises(InputError, match=r"names an image file"):
        read_pairs(path, allow_paths=False)  # an uploaded parquet must hold its images


def test_parquet_columns_can_be_chosen_and_missing_ones_are_named(tmp_path: Path) -> None:
    table = pa.table(
        {"id": pa.array(range(6)), "pixels": pa.array([png(im) for im in IMAGES]), "words": pa.array(CAPTIONS)}
    )
    path = tmp_path / "custom.parquet"
    pq.write_table(table, path)
    with pytest.raises(
        InputError, match=r"custom.parquet has no image column \(image/img/.*\); its columns are id, pixels, words"
    ):
        read_pairs(path)
    with pytest.raises(
        InputError, match=r"has no caption column .*; its columns are id, pixels, words.*--caption-column"
    ):
        read_pairs(path, image_column="pixels")
    assert read_pairs(path, image_column="pixels", caption_column="words").captions == CAPTIONS
    with pytest.raises(InputError, match=r'column "id" holds int64, not images'):
        read_pairs(path, image_column="id", caption_column="words")


def test_bad_parquet_rows_and_files_are_refused(tmp_path: Path) -> None:
    images = pa.array([png(IMAGES[0]), png(IMAGES[1]), None])
    with pytest.raises(InputError, match=r'nulls.parquet row 1 has no caption: its "caption" is None'):
        read_pairs(write_parquet(tmp_path / "nulls.parquet", images, pa.array(["one", None, "three"])))
    with pytest.raises(InputError, match=r'nulls.parquet row 2 has no image in its "image" column'):
        read_pairs(write_parquet(tmp_path / "nulls.parquet", images, pa.array(["one", "two", "three"])))
    with pytest.raises(InputError, match=r"is a URL"):
        read_pairs(write_parquet(tmp_path / "urls.parquet", pa.array(["https://x.org/a.png"]), pa.array(["a"])))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 but not really a parquet file")
    with pytest.raises(InputError, match=r"corrupt.parquet is not a readable parquet file"):
        read_pairs(corrupt)


# -------------------------------------------------------------------------------------------- COCO


def write_coco(path: Path, files: list[str], extra: tuple[tuple[int, str], ...] = ()) -> Path:
    annotations = [{"id": 100 + i, "image_id": i, "caption": c} for i, c in enumerate(CAPTIONS)]
    annotations += [{"id": 200 + k, "image_id": i, "caption": c} for k, (i, c) in enumerate(extra)]
    images = [{"id": i, "file_name": f, "width": 64, "height": 64} for i, f in enumerate(files)]
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_coco_captions_first_or_every_caption(tmp_path: Path) -> None:
    files = write_images(tmp_path / "val2017")
    annotations = write_coco(tmp_path / "captions.json", files, extra=((1, "scene one again"), (4, "scene four again")))
    with pytest.raises(InputError, match=r"scene0.png could not be found"):
        read_pairs(annotations)  # the images are not beside the JSON ...
    first = read_pairs(annotations, images_dir=tmp_path / "val2017")  # ... but in their own folder
    assert first.captions == CAPTIONS and first.names == files and same_pixels(first, list(range(6)))
    every = read_pairs(annotations, images_dir=tmp_path / "val2017", all_captions=True)
    assert every.captions == [*CAPTIONS[:2], "scene one again", *CAPTIONS[2:5], "scene four again", CAPTIONS[5]]
    assert every.names[1:3] == ["scene1.png", "scene1.png (2)"] and every.images[1] is every.images[2]
    beside = write_coco(tmp_path / "val2017" / "captions.json", files)
    assert read_pairs(beside).captions == CAPTIONS


def test_bad_coco_files_are_refused(tmp_path: Path) -> None:
    files = write_images(tmp_path)
    data = json.loads(write_coco(tmp_path / "coco.json", files).read_text())
    data["annotations"] = data["annotations"][:4]
    (tmp_path / "coco.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"coco.json: 2 images have no caption: scene4.png, scene5.png"):
        read_pairs(tmp_path / "coco.json")
    data["annotations"].append({"image_id": 99, "caption": "lost"})
    (tmp_path / "coco.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"annotation 5 is for image_id 99, which no image has"):
        read_pairs(tmp_path / "coco.json")
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(InputError, match=r"broken.json is not valid JSON"):
        read_pairs(tmp_path / "broken.json")


# ------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_with_metadata_jsonl_or_csv(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    files = write_images(folder)
    order = [5, 0, 3, 1, 4, 2]  # metadata order, not file order
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": files[i], "text": CAPTIONS[i]}) + "\n" for i in order)
    )
    pairs = read_pairs(folder)
    assert pairs.captions == [CAPTIONS[i] for i in order] and same_pixels(pairs, order)
    (folder / "metadata.jsonl").unlink()
    with (folder / "metadata.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file_name", "caption", "source"])
        writer.writerows([files[i], CAPTIONS[i], "scenes"] for i in order[:4])
    pairs = read_pairs(folder)
    assert pairs.names == [files[i] for i in order[:4]] and same_pixels(pairs, order[:4])
    assert any("does not list 2 images, so skipped: scene2.png, scene4.png" in n for n in pairs.notices)


def test_bad_imagefolders_are_refused(tmp_path: Path) -> None:
    files = write_images(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": files[0], "label": 3}) + "\n")
    with pytest.raises(InputError, match=r"has no caption column .*; its columns are file_name, label"):
        read_pairs(tmp_path)
    with pytest.raises(InputError, match=r"row 1 \(scene0.png\) has no caption in its label column"):
        read_pairs(tmp_path, caption_column="label")  # a number is not a caption
    (tmp_path / "metadata.csv").write_text("file_name,text\nscene0.png,a\n")
    with pytest.raises(InputError, match=r"holds both metadata.jsonl and metadata.csv; keep one"):
        read_pairs(tmp_path)


# ---------------------------------------------------------------------------- bounds and detection


def test_more_than_max_pairs_is_refused(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "MAX_PAIRS", 4)
    with pytest.raises(InputError, match=r"holds more than 4 pairs, but at most 4 can be compared"):
        read_pairs(str(shards / "{000..001}.tar"))  # streamed: refused before the fifth image is decoded
    parquet = write_parquet(tmp_path / "six.parquet", pa.array([png(im) for im in IMAGES]), pa.array(CAPTIONS))
    with pytest.raises(InputError, match=r"six.parquet holds 6 pairs, but at most 4"):
        read_pairs(parquet)  # counted from the file's metadata, before anything is decoded
    assert len(read_pairs(parquet, max_pairs=6)) == 6
    files = write_images(tmp_path / "images")
    with pytest.raises(InputError, match=r"captions.json holds 6 pairs, but at most 4"):
        read_pairs(write_coco(tmp_path / "images" / "captions.json", files))


def test_image_bounds_are_the_uploads(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match=r"megapixels one request may decode"):
        read_pairs(shards / "000.tar", max_request_pixels=64 * 64 * 2)
    monkeypatch.setattr(inputs, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match=r"000.tar: 0000.png is 64x64 pixels .* more than the"):
        read_pairs(shards / "000.tar")


def test_the_upload_formats_are_read_too(tmp_path: Path) -> None:
    files = write_images(tmp_path)
    with (tmp_path / "captions.csv").open("w", newline="") as file:
        csv.writer(file).writerows([("file", "caption"), *zip(files, CAPTIONS)])
    assert read_pairs(tmp_path).captions == CAPTIONS  # a folder with a caption table
    table = read_pairs(tmp_path / "captions.csv")  # a table beside its images
    assert table.captions == CAPTIONS and same_pixels(table, list(range(6)))
    with pytest.raises(InputError, match=r"names image files on disk"):
        read_pairs(tmp_path / "captions.csv", allow_paths=False)


def test_unknown_sources_and_options_that_do_not_apply(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing does not exist: give a folder of images"):
        read_pairs(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes.txt: vlviz reads .*\.parquet"):
        read_pairs(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"000.tar is webdataset tar shards; the image column option does not apply"):
        read_pairs(shards / "000.tar", image_column="jpg")
    with pytest.raises(InputError, match=r"the all captions and images dir options do not apply"):
        read_pairs(shards / "000.tar", all_captions=True, images_dir=tmp_path)


def test_nothing_is_unpacked_to_disk(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    parquet = write_parquet(tmp_path / "p.parquet", pa.array([png(im) for im in IMAGES]), pa.array(CAPTIONS))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    read_pairs(str(shards / "{000..001}.tar"))
    read_pairs(parquet)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not any(scratch.iterdir())


# --------------------------------------------------------------------------------- command line


def test_report_command_reads_webdataset_shards(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    args = ["report", "--pairs", str(shards / "{000..001}.tar"), "--out", str(out), "--method", "pca", "--top-k", "2"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert json.loads((out / "report.json").read_text())["pairs"] == 6
    assert main([*args, "--image-column", "jpg"]) == 2
    assert "the image column option does not apply" in capsys.readouterr().err


def test_training_data_can_be_any_source(tmp_path: Path) -> None:
    """`train --data` reads through the same function: a parquet file trains like a folder of pairs."""
    from vlviz.training.config import TrainConfig
    from vlviz.training.runs import FRESH, prepare_run

    parquet = write_parquet(tmp_path / "train.parquet", pa.array([png(im) for im in IMAGES]), pa.array(CAPTIONS))
    run = prepare_run(FRESH, str(parquet), TrainConfig(batch_size=2), tmp_path / "run", device="cpu")
    assert run.data == str(parquet) and len(run.source) + len(run.source.held_out.captions) == 6


def test_uploaded_shards_are_read_in_one_budget_and_never_name_files_on_disk(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = [str(shards / "000.tar"), str(shards / "001.tar")]
    pairs = formats.pairs_from_dataset_uploads(uploads, "a caption typed in the box")
    assert pairs.captions == [*CAPTIONS[:5], CAPTIONS[5]] and same_pixels(pairs, list(range(6)))
    assert any("captions box was not used" in notice for notice in pairs.notices)
    assert formats.pairs_from_dataset_uploads([str(tmp_path / "a.png")]) is None  # images: the usual uploads
    with pytest.raises(InputError, match="not both"):
        formats.pairs_from_dataset_uploads([uploads[0], str(tmp_path / "a.png")])
    monkeypatch.setattr(inputs, "MAX_PAIRS", 4)  # one budget over every shard
    with pytest.raises(InputError):
        formats.pairs_from_dataset_uploads(uploads)
    files = write_images(tmp_path)  # beside the parquet file: a path column would find them
    paths = write_parquet(tmp_path / "paths.parquet", pa.array(files), pa.array(CAPTIONS))
    with pytest.raises(InputError, match="path"):
        formats.pairs_from_dataset_uploads([str(paths)])


# ----------------------------------------------------------------------------------------- streams


def test_a_stream_gives_the_pairs_of_read_pairs_without_decoding_or_bounds(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_images(tmp_path / "folder")
    with (tmp_path / "folder" / "captions.csv").open("w", newline="") as file:
        csv.writer(file).writerows([("file", "caption"), *zip(files, CAPTIONS)])
    monkeypatch.setattr(inputs, "MAX_PAIRS", 2)  # an upload's bounds do not apply to a stream
    monkeypatch.setattr(formats._Pairs, "decode", None)  # and no image is opened
    webdataset = list(formats.stream_pairs(str(shards / "{000..001}.tar")).pairs)
    assert [p.caption for p in webdataset] == CAPTIONS and [p.image for p in webdataset] == [png(i) for i in IMAGES]
    assert [p.name for p in webdataset] == [f"{i:04d}.png" for i in range(6)]
    for source in (tmp_path / "folder", tmp_path / "folder" / "captions.csv"):
        listed = list(formats.stream_pairs(source).pairs)
        assert [p.caption for p in listed] == CAPTIONS and [p.name for p in listed] == files
        assert [p.image for p in listed] == [tmp_path / "folder" / f for f in files]
    (tmp_path / "pairs.zip").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"pairs.zip is a zip, which vlviz reads whole"):
        formats.stream_pairs(tmp_path / "pairs.zip")


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_images_of_plain_tars_are_read_again_at_their_locations(tmp_path: Path, tar_format: int) -> None:
    long_key = "deep/" * 12 + "scene"  # 65 characters: ustar splits it into prefix and name
    keys = ["a", long_key, "c"] if tar_format == tarfile.USTAR_FORMAT else ["a", "b" * 150, "c"]
    for number in range(2):
        with tarfile.open(tmp_path / f"{number}.tar", "w", format=tar_format) as tar:
            for key, image, caption in zip(keys, IMAGES[3 * number :], CAPTIONS[3 * number :]):
                for name, data in ((f"{key}.png", png(image)), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    source = str(tmp_path / "{0..1}.tar")
    raw = list(formats.stream_pairs(source).pairs)
    assert [pair.location[0] for pair in raw] == [0, 0, 0, 1, 1, 1]
    picked = [raw[4], raw[1], raw[5]]
    read = formats.read_located_images(source, [pair.location for pair in picked], [pair.name for pair in picked])
    assert read == [pair.image for pair in picked]

    number, offset, size, crc = raw[1].location
    with pytest.raises(InputError, match="not where the embedding folder says"):
        formats.read_located_images(source, [(2, offset, size, crc)], [raw[1].name])
    with pytest.raises(InputError, match=r"0\.tar no longer holds"):
        formats.read_located_images(source, [(number, offset, size, crc + 1)], [raw[1].name])
    with pytest.raises(InputError, match=r"0\.tar no longer holds"):
        formats.read_located_images(source, [raw[0].location], [raw[1].name])


def test_compressed_shards_and_other_sources_carry_no_locations(tmp_path: Path) -> None:
    write_tar(tmp_path / "plain.tar", [("a.png", png(IMAGES[0])), ("a.txt", b"a red circle")])
    (tmp_path / "packed.tar.gz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    assert formats.is_plain_tar(tmp_path / "plain.tar") and not formats.is_plain_tar(tmp_path / "packed.tar.gz")
    assert [pair.location for pair in formats.stream_pairs(str(tmp_path / "packed.tar.gz")).pairs] == [None]


# ------------------------------------------------------------------------------------ source fields


def test_numeric_fields_keep_numbers_and_booleans_under_short_names() -> None:
    record = {"similarity": 0.31, "width": 640, "nsfw": False, "url": "http://x", "tags": [1, 2], "none": None,
              "bad<b>name": 1, "x" * 65: 2, "inf": float("inf"), 3: 4.0}  # fmt: skip
    fields = formats.numeric_fields(record)
    assert [name for name, _ in fields] == ["similarity", "width", "nsfw", "inf"]
    assert fields[:3] == (("similarity", 0.31), ("width", 640.0), ("nsfw", 0.0)) and np.isnan(fields[3][1])
    assert formats.numeric_fields({"score": "0.5", "label": "cat", "size": " 1e3 "}, numbers_in_text=True) == (
        ("score", 0.5),
        ("size", 1000.0),
    )
    assert formats.numeric_fields({"score": "0.5"}) == ()  # a JSON string is text
    many = formats.numeric_fields({f"f{i}": i for i in range(40)})
    assert len(many) == formats.MAX_SOURCE_FIELDS and many[-1] == ("f15", 15.0)


def test_every_streamed_format_carries_its_rows_numeric_fields(shards: Path, tmp_path: Path) -> None:
    webdataset = list(formats.stream_pairs(str(shards / "{000..001}.tar")).pairs)
    assert [pair.fields for pair in webdataset] == [(), (), (), (), (("width", 64.0),), ()]
    images = pa.array([png(image) for image in IMAGES[:3]], pa.binary())
    table = pa.table({"image": images, "caption": CAPTIONS[:3], "similarity": [0.1, None, 0.3], "id": [7, 8, 9],
                      "url": ["a", "b", "c"], "keep": [True, False, True]})  # fmt: skip
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=2)
    parquet = list(formats.stream_pairs(tmp_path / "rows.parquet").pairs)
    assert [pair.fields for pair in parquet] == [
        (("similarity", 0.1), ("id", 7.0), ("keep", 1.0)),
        (("id", 8.0), ("keep", 0.0)),  # a null is no value: the pair lacks the field
        (("similarity", 0.3), ("id", 9.0), ("keep", 1.0)),
    ]
    files = write_images(tmp_path / "coco")
    coco = list(formats.stream_pairs(write_coco(tmp_path / "coco" / "captions.json", files)).pairs)
    assert coco[0].fields == (("width", 64.0), ("height", 64.0))  # the image's own, not its id
    folder = tmp_path / "imagefolder"
    write_images(folder)
    with (folder / "metadata.csv").open("w", newline="") as file:
        csv.writer(file).writerows([["file_name", "caption", "aesthetic", "label"], [files[0], "a", "5.5", "cat"]])
    assert [pair.fields for pair in formats.stream_pairs(folder).pairs] == [(("aesthetic", 5.5),)]
    (folder / "metadata.csv").unlink()
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": files[1], "text": "b", "aesthetic": 4}) + "\n")
    assert [pair.fields for pair in formats.stream_pairs(folder).pairs] == [(("aesthetic", 4.0),)]
