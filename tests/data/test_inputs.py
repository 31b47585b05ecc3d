"""Tests for vlviz.data.inputs: every user upload turns into pairs, or into an InputError a user can act on."""

from __future__ import annotations

import csv
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vlviz.data import inputs
from vlviz.data.inputs import (
    InputError,
    PairSet,
    load_caption_table,
    load_image,
    load_pairs_folder,
    pairs_from_uploads,
    parse_caption_lines,
)
from vlviz.data.samples import SAMPLES_DIR

SAMPLES = SAMPLES_DIR


def save(image: Image.Image, path: Path, **params: object) -> str:
    image.save(path, **params)
    return str(path)


def solid(path: Path, colour: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (8, 6)) -> str:
    return save(Image.new("RGB", size, colour), path)


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes | str]) -> str:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


# ------------------------------------------------------------------------------------ load_image


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide, 20 high: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise
    # to display", so the user sees a 20 x 40 portrait with red on top.
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(array), tmp_path / "portrait.jpg", exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_result_is_rgb_and_detached_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    solid(path, (1, 2, 3))
    image = load_image(str(path))
    path.write_bytes(b"overwritten")  # the returned image must not depend on the file any more
    assert image.mode == "RGB"
    assert not isinstance(image, ImageFile.ImageFile)
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_bytes_source_uses_the_given_name_in_messages() -> None:
    assert load_image(png_bytes((9, 8, 7))).getpixel((3, 3)) == (9, 8, 7)
    with pytest.raises(InputError, match=r"^upload\.png is not a readable image"):
        load_image(b"not an image at all", name="upload.png")


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    array = np.zeros((4, 3, 4), np.uint8)
    array[:, 0] = (255, 0, 0, 255)  # opaque red
    array[:, 1] = (255, 0, 0, 0)  # fully transparent
    array[:, 2] = (0, 0, 0, 128)  # half-transparent black
    image = load_image(save(Image.fromarray(array, "RGBA"), tmp_path / "alpha.png"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(v - 127) <= 1 for v in image.getpixel((2, 0)))


def test_la_is_composited_on_white(tmp_path: Path) -> None:
    array = np.zeros((2, 2, 2), np.uint8)
    array[0] = (0, 255)  # opaque black
    array[1] = (0, 0)  # transparent
    image = load_image(save(Image.fromarray(array, "LA"), tmp_path / "grey_alpha.png"))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((0, 1)) == (255, 255, 255)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette_image.putpixel((1, 1), 1)
    path = save(palette_image, tmp_path / "sprite.png", transparency=0)
    gif = save(palette_image, tmp_path / "sprite.gif", transparency=0)
    for source in (path, gif):
        image = load_image(source)
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (255, 255, 255)
        assert image.getpixel((1, 1)) == (0, 200, 0)


def test_cmyk_is_converted(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (5, 5), (0, 255, 255, 0)), tmp_path / "print.tif")
    assert load_image(path).getpixel((2, 2)) == (255, 0, 0)


def test_sixteen_bit_ramp_keeps_its_range(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    source = Image.fromarray(ramp)
    assert source.mode == "I;16"
    image = load_image(save(source, tmp_path / "depth16.png"))
    values = np.asarray(image)
    assert image.mode == "RGB" and image.size == (256, 4)
    assert values.min() == 0 and values.max() == 255  # not clipped to white
    assert values[0, 0].tolist() == [0, 0, 0] and values[0, -1].tolist() == [255, 255, 255]
    assert abs(int(values[0, 128, 0]) - 128) <= 1  # linear in between
    assert np.all(np.diff(values[0, :, 0].astype(int)) >= 0)


def test_32_bit_integer_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.int32), (2, 1))
    image = load_image(save(Image.fromarray(ramp, "I"), tmp_path / "int32.tif"))
    assert np.asarray(image)[0, 0, 0] == 0 and np.asarray(image)[0, -1, 0] == 255
    assert np.asarray(image)[0, 32, 0] < 140  # Pillow's own conversion would clip this to 255


def test_float_images(tmp_path: Path) -> None:
    unit = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (2, 1))
    image = load_image(save(Image.fromarray(unit, "F"), tmp_path / "unit.tif"))
    assert np.asarray(image)[0, 0, 0] == 0 and np.asarray(image)[0, -1, 0] == 255
    # No natural range: stretched from minimum to maximum.
    wide = np.tile(np.linspace(-5, 5, 32, dtype=np.float32), (2, 1))
    image = load_image(save(Image.fromarray(wide, "F"), tmp_path / "wide.tif"))
    assert np.asarray(image)[0, 0, 0] == 0 and np.asarray(image)[0, -1, 0] == 255


def test_one_bit_image(tmp_path: Path) -> None:
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((2, 2), 1)
    image = load_image(save(bits, tmp_path / "bits.png"))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((2, 2)) == (255, 255, 255)


def test_image_over_the_pixel_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "MAX_IMAGE_PIXELS", 1000)
    path = solid(tmp_path / "big.png", size=(100, 50))
    with pytest.raises(InputError, match=r"big\.png is 100x50 pixels"):
        load_image(path)


@pytest.mark.parametrize("size", [(12, 12), (50, 50)])  # past Pillow's warning / error threshold
def test_pillow_decompression_bomb_guard_becomes_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    path = solid(tmp_path / "bomb.png", size=size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError, match=r"bomb\.png is too large"):
        warnings.simplefilter("always")
        load_image(path)
    assert caught == []  # turned into the error, not printed
    assert warnings.filters == filters_before  # the process-wide warning filters are restored
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's own setting is left as the caller set it


def test_large_image_is_downscaled_with_a_notice(tmp_path: Path) -> None:
    path = solid(tmp_path / "wide.png", size=(2048, 1025))
    notices: list[str] = []
    image = load_image(path, notices=notices)
    assert image.size == (1024, 513)
    assert notices == ["wide.png was 2048x1025, downscaled to 1024x513"]
    assert load_image(solid(tmp_path / "small.png", size=(1024, 10)), notices=notices).size == (1024, 10)
    assert len(notices) == 1  # no notice when nothing changed


def test_large_rotated_jpeg_is_downscaled_in_its_display_orientation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "MAX_SIDE", 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.new("RGB", (300, 200), (0, 128, 0)), tmp_path / "photo.jpg", exif=exif)
    notices: list[str] = []
    image = load_image(path, notices=notices)
    assert image.size == (43, 64)
    assert notices == ["photo.jpg was 200x300, downscaled to 43x64"]
    assert abs(image.getpixel((20, 30))[1] - 128) <= 3


def test_truncated_jpeg_is_refused_by_name(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=r"^cut\.jpg is not a readable image \(.*truncated"):
        load_image(cut)


def test_text_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list\n")
    with pytest.raises(InputError, match=r"^notes\.txt is not a readable image \(not a known image format\)\.") as info:
        load_image(str(path))
    assert str(tmp_path) not in str(info.value)  # no server-side paths in user-facing messages


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone\.png could not be found"):
        load_image(tmp_path / "gone.png")


# ------------------------------------------------------------------------------- caption parsing


def test_caption_lines_are_stripped_and_blank_lines_dropped() -> None:
    text = "\ufeff  a cat  \r\n\r\n\ta dog\n   \nthe sea\n\n"
    assert parse_caption_lines(text) == ["a cat", "a dog", "the sea"]
    assert parse_caption_lines("") == []


def test_overlong_caption_names_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "short\n\n" + "x" * (inputs.MAX_CAPTION_CHARS + 1) + "\n"
    with pytest.raises(InputError, match=rf"line 3 is {inputs.MAX_CAPTION_CHARS + 1} characters long"):
        parse_caption_lines(text)
    assert parse_caption_lines("y" * inputs.MAX_CAPTION_CHARS) == ["y" * inputs.MAX_CAPTION_CHARS]


def test_csv_table_with_header_aliases_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "meta.csv"
    path.write_text('id,Filename,Text\n1,photos/a.jpg," a cat, sleeping "\n2,C:\\pics\\b.png,a dog\n\n')
    assert load_caption_table(str(path), "meta.csv") == {"a.jpg": "a cat, sleeping", "b.png": "a dog"}


def test_headerless_csv_table(tmp_path: Path) -> None:
    data = b'a.jpg,a cat\r\nb.jpg,"a dog, running"\r\n'
    assert load_caption_table(data, "pairs.csv") == {"a.jpg": "a cat", "b.jpg": "a dog, running"}


def test_csv_table_errors_say_what_is_expected() -> None:
    with pytest.raises(InputError, match=r"t\.csv has a header row \(file, notes\) but lacks a caption column"):
        load_caption_table(b"file,notes\na.jpg,a cat\n", "t.csv")
    with pytest.raises(InputError, match=r"row 2 has 3 columns instead of 2 .*Quote captions that contain commas"):
        load_caption_table(b"a.jpg,a cat\nb.jpg,a dog, running\n", "t.csv")
    with pytest.raises(InputError, match=r"gives a\.jpg two different captions"):
        load_caption_table(b"a.jpg,a cat\na.jpg,a dog\n", "t.csv")
    with pytest.raises(InputError, match=r"t\.csv is not UTF-8"):
        load_caption_table("a.jpg,caf\u00e9\n".encode("latin-1"), "t.csv")
    with pytest.raises(InputError, match=r"t\.csv \(row 1\) is 1001 characters long"):
        load_caption_table(b"a.jpg," + b"x" * 1001, "t.csv")


@pytest.mark.parametrize(
    ("header", "extension"),
    [
        ("Image Path,Alt-Text", ".csv"),
        ("IMG,Prompt", ".csv"),
        ("file_name,sentence", ".csv"),
        ("image-file,Description", ".csv"),
        ("url,captions", ".csv"),
        ("FilePath,alt_text", ".csv"),
        ("image_name,ALT", ".csv"),
    ],
)
def test_csv_header_aliases_ignore_case_spaces_underscores_and_dashes(header: str, extension: str) -> None:
    data = f"{header}\nphotos/a.jpg,a cat\nb.png,a dog\n".encode()
    assert load_caption_table(data, "t" + extension) == {"a.jpg": "a cat", "b.png": "a dog"}


def test_json_records_accept_the_same_aliases() -> None:
    records = [{"Image_File": "a.jpg", "alt text": "a cat"}, {"image-path": "x/b.jpg", "Prompt": "a dog"}]
    assert load_caption_table(json.dumps(records).encode(), "c.json") == {"a.jpg": "a cat", "b.jpg": "a dog"}


def test_unrecognised_csv_header_names_the_columns_needed() -> None:
    # Read as a data row before, it paired an image called "name" with the caption "label".
    with pytest.raises(InputError, match=r"^t\.csv starts with a row \(name, label\) that is neither a header") as info:
        load_caption_table(b"name,label\na.jpg,a cat\n", "t.csv")
    assert "file column" in str(info.value) and "caption column" in str(info.value)
    # Headerless rows still work when the first cell names an image.
    assert load_caption_table(b"photos/A.JPEG,a cat\n", "t.csv") == {"A.JPEG": "a cat"}


def test_json_table_both_shapes() -> None:
    mapping = json.dumps({"a.jpg": "a cat", "dir/b.jpg": " a dog "}).encode()
    assert load_caption_table(mapping, "captions.json") == {"a.jpg": "a cat", "b.jpg": "a dog"}
    records = json.dumps([{"Image": "a.jpg", "caption": "a cat"}, {"path": "x/b.jpg", "title": "a dog"}]).encode()
    assert load_caption_table(records, "captions.json") == {"a.jpg": "a cat", "b.jpg": "a dog"}
    # Without a telling extension the format is sniffed from the content.
    assert load_caption_table(mapping, "captions.txt") == {"a.jpg": "a cat", "b.jpg": "a dog"}


def test_json_table_errors_say_what_is_expected() -> None:
    with pytest.raises(InputError, match=r"c\.json is not valid JSON .*\{\"cat\.jpg\": \"a cat\""):
        load_caption_table(b"{'a.jpg': 'a cat'}", "c.json")
    with pytest.raises(InputError, match=r"c\.json: item 2 is not an object with a file name and a caption"):
        load_caption_table(b'[{"file": "a.jpg", "caption": "x"}, {"file": "b.jpg"}]', "c.json")
    with pytest.raises(InputError, match=r"c\.json holds a JSON str"):
        load_caption_table(b'"a cat"', "c.json")
    with pytest.raises(InputError, match=r"the caption for a\.jpg is not a string"):
        load_caption_table(b'{"a.jpg": 3}', "c.json")


# ------------------------------------------------------------------------------ pairs_from_uploads


def test_text_captions_pair_in_upload_order(tmp_path: Path) -> None:
    paths = [solid(tmp_path / "b.png", (200, 0, 0)), solid(tmp_path / "a.png", (0, 0, 200))]
    pairs = pairs_from_uploads(paths, "a red square\n\n a blue square \n")
    assert isinstance(pairs, PairSet) and len(pairs) == 2
    assert pairs.names == ["b.png", "a.png"]
    assert pairs.captions == ["a red square", "a blue square"]
    assert [image.getpixel((0, 0)) for image in pairs.images] == [(200, 0, 0), (0, 0, 200)]
    assert pairs.notices == []


def test_count_mismatch_names_both_counts(tmp_path: Path) -> None:
    paths = [solid(tmp_path / f"{i}.png") for i in range(3)]
    with pytest.raises(InputError, match=r"^3 images but 2 captions: give one caption per image, one per line"):
        pairs_from_uploads(paths, "one\ntwo")
    with pytest.raises(InputError, match=r"^1 image but 0 captions"):
        pairs_from_uploads(paths[:1], "  \n")
    with pytest.raises(InputError, match=r"^2 images but 1 caption:"):
        pairs_from_uploads(paths[:2], "only one\n\n")
    with pytest.raises(InputError, match=r"^2 images but 0 captions:"):
        pairs_from_uploads(paths[:2], None)


def test_no_images_and_too_many_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match=r"No images were uploaded"):
        pairs_from_uploads([], "a cat")
    with pytest.raises(InputError, match=r"No images were uploaded"):
        pairs_from_uploads(None, None)  # type: ignore[arg-type]
    monkeypatch.setattr(inputs, "MAX_PAIRS", 2)
    paths = [solid(tmp_path / f"{i}.png") for i in range(3)]
    with pytest.raises(InputError, match=r"3 images were uploaded, but at most 2"):
        pairs_from_uploads(paths, "a\nb\nc")


def test_bad_image_among_uploads_is_named(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError, match=r"^notes\.txt is not a readable image"):
        pairs_from_uploads([solid(tmp_path / "a.png"), str(notes)], "a\nb")


def test_caption_table_pairs_by_name_whatever_the_order(tmp_path: Path) -> None:
    paths = [solid(tmp_path / "cat.jpg", (1, 1, 1)), solid(tmp_path / "Dog.PNG", (2, 2, 2))]
    table = tmp_path / "captions.csv"
    table.write_text("file,caption\ndog.png,a dog\ncat.jpg,a cat\n")
    pairs = pairs_from_uploads(paths, "these lines are ignored", str(table))
    assert pairs.names == ["cat.jpg", "Dog.PNG"]
    assert pairs.captions == ["a cat", "a dog"]  # Dog.PNG matched case-insensitively
    assert pairs.notices == ["The caption text was ignored: captions.csv supplies the captions."]


def test_caption_table_uploaded_among_the_images(tmp_path: Path) -> None:
    table = tmp_path / "labels.json"
    table.write_text(json.dumps({"a.png": "first"}))
    pairs = pairs_from_uploads([solid(tmp_path / "a.png"), str(table)])
    assert pairs.captions == ["first"]
    assert pairs.notices == ["labels.json was uploaded with the images; it supplies the captions"]


def test_table_missing_an_image_or_naming_an_extra_one(tmp_path: Path) -> None:
    paths = [solid(tmp_path / "cat.jpg"), solid(tmp_path / "dog.jpg")]
    table = tmp_path / "captions.csv"
    table.write_text("file,caption\ncat.jpg,a cat\n")
    with pytest.raises(InputError, match=r"^1 image has no caption in captions\.csv: dog\.jpg\. Add a row"):
        pairs_from_uploads(paths, caption_table_path=str(table))
    table.write_text("file,caption\ncat.jpg,a cat\ndog.jpg,a dog\nbird.jpg,a bird\nfish.jpg,a fish\n")
    with pytest.raises(InputError, match=r"captions for 2 images that were not uploaded: bird\.jpg, fish\.jpg"):
        pairs_from_uploads(paths, caption_table_path=str(table))


def test_empty_caption_in_table_names_the_image(tmp_path: Path) -> None:
    table = tmp_path / "captions.csv"
    table.write_text("file,caption\ncat.jpg,a cat\ndog.jpg,   \n")
    paths = [solid(tmp_path / "cat.jpg"), solid(tmp_path / "dog.jpg")]
    with pytest.raises(InputError, match=r"^The caption for dog\.jpg is empty in captions\.csv"):
        pairs_from_uploads(paths, caption_table_path=str(table))


def test_duplicate_names_cannot_be_matched_by_a_table(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    paths = [solid(tmp_path / "one" / "img.png"), solid(tmp_path / "two" / "img.png")]
    table = tmp_path / "captions.csv"
    table.write_text("img.png,a picture\n")
    with pytest.raises(InputError, match=r"Several images are called img\.png"):
        pairs_from_uploads(paths, caption_table_path=str(table))
    assert pairs_from_uploads(paths, "first\nsecond").captions == ["first", "second"]  # fine by order


def test_zip_with_captions_csv(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "set.zip",
        {
            "set/img10.png": png_bytes((10, 0, 0)),
            "set/img2.png": png_bytes((2, 0, 0)),
            "set/captions.csv": "file,caption\nimg2.png,second picture\nimg10.png,tenth picture\n",
            "set/readme.md": "about this set",
        },
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    pairs = pairs_from_uploads([archive], "ignored")
    assert pairs.names == ["img2.png", "img10.png"]  # natural name order inside the zip
    assert pairs.captions == ["second picture", "tenth picture"]
    assert [image.getpixel((0, 0))[0] for image in pairs.images] == [2, 10]
    assert "set.zip: skipped set/readme.md (neither an image nor a caption table)" in pairs.notices
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was extracted to disk


def test_zip_junk_is_ignored_and_images_pair_with_text(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "mac.zip",
        {
            "photos/b.png": png_bytes((0, 50, 0)),
            "photos/a.png": png_bytes((0, 0, 50)),
            "__MACOSX/photos/._a.png": b"\x00\x05\x16\x07 resource fork",
            "__MACOSX/photos/._captions.csv": b"\x00\x05\x16\x07",
            "photos/.DS_Store": b"\x00\x00\x00\x01Bud1",
        },
    )
    loose = solid(tmp_path / "z.png", (7, 7, 7))
    pairs = pairs_from_uploads([loose, archive], "loose\nfrom zip a\nfrom zip b")
    assert pairs.names == ["z.png", "a.png", "b.png"]  # zip contents take the zip's place in the order
    assert pairs.captions == ["loose", "from zip a", "from zip b"]
    assert pairs.images[1].getpixel((0, 0)) == (0, 0, 50)
    assert pairs.notices == []


def test_zip_size_guard_refuses_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"a.png": png_bytes((0, 0, 0), (64, 64)), "b.png": b"\x00" * 100_000})
    monkeypatch.setattr(inputs, "MAX_ZIP_BYTES", 50_000)

    def must_not_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was read before the size check")

    monkeypatch.setattr(zipfile.ZipFile, "read", must_not_read)
    monkeypatch.setattr(zipfile.ZipFile, "open", must_not_read)
    with pytest.raises(InputError, match=r"^bomb\.zip unpacks to more than 0 MB"):
        pairs_from_uploads([archive], "a\nb")


@pytest.mark.parametrize(
    "unsafe", ["../evil.png", "set/../../evil.png", "..\\evil.png", "/etc/x.png", "C:/x.png", "C:x.png", "\\x.png"]
)
def test_zip_with_unsafe_entry_names_is_refused(tmp_path: Path, unsafe: str) -> None:
    # Dropped silently (or read as an ordinary image) before, which gave a misleading count message.
    archive = make_zip(tmp_path / "sly.zip", {"a.png": png_bytes((0, 0, 0)), unsafe: png_bytes((1, 1, 1))})
    with pytest.raises(InputError, match=r"^sly\.zip has entries with unsafe names") as info:
        pairs_from_uploads([archive], "a\nb")
    assert unsafe in str(info.value)
    assert "outside" in str(info.value)  # says why


def test_dot_slash_entries_are_images_not_dotfiles(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "dot.zip", {"./a.png": png_bytes((0, 0, 0)), "set/./b.png": png_bytes((1, 1, 1))})
    assert pairs_from_uploads([archive], "a\nb").names == ["a.png", "b.png"]


def test_unsafe_zip_names_are_listed_briefly(tmp_path: Path) -> None:
    members: dict[str, bytes | str] = {f"../{i}.png": b"" for i in range(7)}
    archive = make_zip(tmp_path / "sly.zip", {"ok.png": png_bytes((0, 0, 0)), **members})
    with pytest.raises(InputError, match=r"\.\./0\.png, \.\./1\.png, .* and 2 more"):
        pairs_from_uploads([archive], "a")


def test_pixel_budget_is_checked_from_headers_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loose = solid(tmp_path / "big.png", size=(100, 100))
    archive = make_zip(tmp_path / "set.zip", {"a.png": png_bytes((0, 0, 0), (100, 50))})

    def must_not_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was decoded before the pixel budget was checked")

    def must_not_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a zip member was read in full for its header")

    with monkeypatch.context() as patch:
        patch.setattr(inputs, "load_image", must_not_decode)
        patch.setattr(zipfile.ZipFile, "read", must_not_read)
        with pytest.raises(
            InputError, match=r"^The 2 images uploaded hold 0\.015 megapixels .* 0\.0149 megapixels"
        ) as info:
            pairs_from_uploads([loose, archive], "a\nb", max_request_pixels=14_900)
        assert "fewer" in str(info.value) and "resize" in str(info.value).lower()
        patch.setattr(inputs, "MAX_REQUEST_PIXELS", 14_999)  # the module default applies without the keyword
        with pytest.raises(InputError, match=r"0\.015 megapixels"):
            pairs_from_uploads([loose, archive], "a\nb")
    assert inputs.MAX_REQUEST_PIXELS == 2_000_000_000
    pairs = pairs_from_uploads([loose, archive], "a\nb", max_request_pixels=15_000)  # the budget itself is allowed
    assert [image.size for image in pairs.images] == [(100, 100), (100, 50)]


def test_pixel_budget_reads_each_file_in_full_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_zip(tmp_path / "set.zip", {"a.png": png_bytes((0, 0, 0)), "b.png": png_bytes((1, 1, 1))})
    reads: list[str] = []
    original = zipfile.ZipFile.read

    def counting_read(self: zipfile.ZipFile, name: str | zipfile.ZipInfo, pwd: bytes | None = None) -> bytes:
        reads.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return original(self, name, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "read", counting_read)
    assert len(pairs_from_uploads([archive], "a\nb")) == 2
    assert sorted(reads) == ["a.png", "b.png"]


def test_zip_member_count_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.png": b"" for i in range(5)})
    monkeypatch.setattr(inputs, "MAX_ZIP_MEMBERS", 4)
    with pytest.raises(InputError, match=r"many\.zip lists 5 entries, more than the 4 allowed"):
        pairs_from_uploads([archive], "a")


def test_bad_zips(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK not really")
    with pytest.raises(InputError, match=r"^fake\.zip is not a readable zip archive"):
        pairs_from_uploads([str(fake)], "a")
    empty = make_zip(tmp_path / "empty.zip", {"notes.txt": "hello"})
    with pytest.raises(InputError, match=r"^empty\.zip contains no images"):
        pairs_from_uploads([empty], "a")
    broken = make_zip(tmp_path / "broken.zip", {"ok.png": png_bytes((0, 0, 0)), "bad.png": b"garbage"})
    with pytest.raises(InputError, match=r"^broken\.zip: bad\.png is not a readable image"):
        pairs_from_uploads([broken], "a\nb")
    two = make_zip(tmp_path / "two.zip", {"a.png": png_bytes((0, 0, 0)), "x.csv": "a.png,x", "y.csv": "a.png,y"})
    with pytest.raises(InputError, match=r"two\.zip holds several caption tables \(x\.csv, y\.csv\)"):
        pairs_from_uploads([two])


# ----------------------------------------------------------------------------- load_pairs_folder


def test_load_pairs_folder_and_its_errors(tmp_path: Path) -> None:
    solid(tmp_path / "b.png")
    solid(tmp_path / "a.png")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"needs exactly one caption table.*found none"):
        load_pairs_folder(tmp_path)
    (tmp_path / "captions.json").write_text(
        json.dumps([{"file": "a.png", "caption": "A"}, {"file": "b.png", "caption": "B"}])
    )
    pairs = load_pairs_folder(tmp_path)
    assert pairs.names == ["a.png", "b.png"] and pairs.captions == ["A", "B"]
    with pytest.raises(InputError, match=r"is not a folder"):
        load_pairs_folder(tmp_path / "missing")


@pytest.mark.parametrize(("folder", "count"), [("photos", 7), ("scenes", 24)])
def test_bundled_sample_sets_load_completely(folder: str, count: int) -> None:
    pairs = load_pairs_folder(SAMPLES / folder)
    with open(SAMPLES / folder / "captions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(pairs) == len(rows) == count
    assert sorted(pairs.names) == sorted(row["file"] for row in rows)
    expected = {row["file"]: row["caption"] for row in rows}
    for name, caption, image in zip(pairs.names, pairs.captions, pairs.images, strict=True):
        assert caption and caption == expected[name]
        assert image.mode == "RGB" and max(image.size) <= 512
    assert pairs.notices == []
