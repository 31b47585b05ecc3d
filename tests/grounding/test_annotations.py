"""The grounding score on the user's annotations: COCO instances and mask folders read back the bundled scenes and
score them as the scenes' own path does; every bad annotation is refused with a message naming it."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from vlviz.cli.main import main
from vlviz.data import annotations as reading
from vlviz.data.annotations import load_annotated_image, read_coco_instances, read_mask_folder
from vlviz.data.inputs import InputError, load_caption_table
from vlviz.data.samples import bundled_scenes
from vlviz.data.scenes import COLOURS, SHAPES, SceneBatch
from vlviz.grounding.annotations import score_annotations
from vlviz.grounding.maps import score_scenes, select_scenes, untrained_model
from vlviz.models.encoding import VLModel
from vlviz.models.loading import load_model

KINDS = ["sparc", "no-sparsity", "softmax", "cosine", "maskclip"]
FIGURES = ("pointing_game", "mass_in_mask", "chance", "words", "object_chance", "object_accuracy", "on_object")
CLASSES = {"colour": list(COLOURS), "shape": list(SHAPES)}  # a word class's category names, by attribute index


@pytest.fixture(scope="module")
def model() -> VLModel:
    return load_model("vlviz-scenes")


@pytest.fixture(scope="module")
def scenes() -> tuple[SceneBatch, list[int]]:
    """The bundled scenes, and those whose objects differ in colour and in shape.

    A category's objects are one target, while a scene scores each object's word alone: they agree where no
    two objects of a scene share a colour or a shape.
    """
    scenes, _ = bundled_scenes()
    rows = [
        n
        for n in range(len(scenes))
        if all(
            len(set(values[n][scenes.present[n]])) == scenes.present[n].sum()
            for values in (scenes.colour, scenes.shape)
        )
    ]
    return scenes, rows


def _row_polygons(mask: np.ndarray) -> list[list[float]]:
    """A mask as polygons, one rectangle per run of pixels in a row, corners on pixel edges: rasterised back exact."""
    polygons = []
    for y, row in enumerate(mask):  # a 64-pixel scene's rows
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        for x0, x1 in edges.reshape(-1, 2):
            polygons.append([float(v) for v in (x0, y, x1, y, x1, y + 1, x0, y + 1)])
    return polygons


def _segmentation(mask: np.ndarray, k: int) -> list | dict:
    """Polygons, a compressed RLE or an uncompressed one, by turns."""
    if k % 3 == 0:
        return _row_polygons(mask)
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    if k % 3 == 1:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = mask.flatten(order="F").astype(np.int8)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]]))), prepend=0)
    return {"size": rle["size"], "counts": runs.tolist()}


def _write_scenes(scenes: SceneBatch, rows: list[int], folder: Path) -> None:
    """Images, a caption table, one COCO file and one mask folder per word class: its words are the categories."""
    (folder / "images").mkdir()
    with (folder / "captions.csv").open("w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(["file", "caption"])
        for n in rows:
            Image.fromarray(scenes.images[n]).save(folder / "images" / f"scene_{n:02d}.png")
            table.writerow([f"scene_{n:02d}.png", scenes.captions[n]])
    side = scenes.images.shape[1]
    for name, names in CLASSES.items():
        values = getattr(scenes, name)
        coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(names)]}
        (folder / f"masks_{name}").mkdir()
        labels = [["mask", "category"]]
        for n in rows:
            coco["images"].append({"id": n, "file_name": f"scene_{n:02d}.png", "width": side, "height": side})
            for k in np.flatnonzero(scenes.present[n]).tolist():
                mask = scenes.masks[n, k]
                coco["annotations"].append({
                    "id": 10 * n + k, "image_id": n, "category_id": int(values[n, k]) + 1, "iscrowd": int(k % 3 != 0),
                    "segmentation": _segmentation(mask, k),
                })  # fmt: skip
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"masks_{name}" / f"scene_{n:02d}_{k}.png")
                labels.append([f"scene_{n:02d}_{k}.png", names[values[n, k]]])
        (folder / f"coco_{name}.json").write_text(json.dumps(coco))
        with (folder / f"masks_{name}" / "labels.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(labels)


@pytest.fixture(scope="module")
def scene_files(scenes: tuple[SceneBatch, list[int]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("annotated")
    _write_scenes(*scenes, folder)
    return folder


@pytest.fixture(scope="module")
def native(model: VLModel, scenes: tuple[SceneBatch, list[int]]) -> dict:
    """The scenes' own scores, the model's and its untrained twin's, on the scenes written."""
    picked = select_scenes(scenes[0], scenes[1])
    untrained = untrained_model(model)
    return {
        "untrained_model": untrained,
        "scores": score_scenes(model, picked, KINDS),
        "untrained": score_scenes(untrained, picked, KINDS),
    }


def _assert_same(native: dict, read: reading.Annotations, model: VLModel, folder: Path, word_class: str) -> None:
    captions = load_caption_table(folder / "captions.csv", "captions.csv")
    result = score_annotations(model, read, KINDS, untrained=native["untrained_model"], captions=captions)
    assert result["not_named"] == 0 and result["outside_crop"] == 0
    for label in ("scores", "untrained"):
        for kind in KINDS:
            expected, got = native[label][kind][word_class], result[label][kind]["all"]
            for figure in FIGURES:
                assert got[figure] == pytest.approx(expected[figure], abs=1e-6, nan_ok=True), (label, kind, figure)
            per_category = result[label][kind]["categories"]
            assert sum(figures["words"] for figures in per_category.values()) == expected["words"]


@pytest.mark.parametrize("word_class", list(CLASSES))
def test_coco_instances_of_the_scenes_score_as_the_scenes_do(
    word_class: str, model: VLModel, scenes: tuple[SceneBatch, list[int]], scene_files: Path, native: dict
) -> None:
    read = read_coco_instances(scene_files / f"coco_{word_class}.json", scene_files / "images")
    assert len(read.images) == len(scenes[1]) >= 12
    for entry, n in zip(read.images, scenes[1]):  # polygons and both RLEs decode to the scene's own pixels
        _, names, masks = load_annotated_image(entry)
        present = np.flatnonzero(scenes[0].present[n])
        assert names == [CLASSES[word_class][getattr(scenes[0], word_class)[n, k]] for k in present]
        assert np.array_equal(masks > 0, scenes[0].masks[n, present])
    _assert_same(native, read, model, scene_files, word_class)


@pytest.mark.parametrize("word_class", list(CLASSES))
def test_a_mask_folder_of_the_scenes_scores_as_the_scenes_do(
    word_class: str, model: VLModel, scene_files: Path, native: dict
) -> None:
    folder = scene_files / f"masks_{word_class}"
    read = read_mask_folder(folder, folder / "labels.csv", scene_files / "images")
    _assert_same(native, read, model, scene_files, word_class)


def test_the_template_reads_each_category_alone_and_scores_it_per_category(
    model: VLModel, scenes: tuple[SceneBatch, list[int]], scene_files: Path, native: dict
) -> None:
    read = read_coco_instances(scene_files / "coco_shape.json", scene_files / "images", max_images=5)
    assert len(read.images) == 5 and read.notices == [f"scored the first 5 of {len(scenes[1])} annotated images"]
    result = score_annotations(model, read, ["sparc"], template="a {} on a dark background")
    objects = sum(len(image.objects) for image in read.images)
    assert result["objects"] == result["scores"]["sparc"]["all"]["words"] == objects and "untrained" not in result
    assert set(result["scores"]["sparc"]["categories"]) == set(read.categories)
    with pytest.raises(ValueError, match="must hold one"):
        score_annotations(model, read, ["sparc"], template="a photo")


# --------------------------------------------------------------------------------------- bad input


@pytest.fixture
def small_coco(tmp_path: Path) -> tuple[dict, Path]:
    """A valid COCO file's content (one 8 x 6 image, one polygon) and the folder its image is in."""
    Image.new("RGB", (8, 6), (40, 40, 40)).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "categories": [{"id": 3, "name": "dog"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}],
    }
    return coco, tmp_path


def _read(coco: object, folder: Path) -> reading.Annotations:
    path = folder / "instances.json"
    path.write_text(json.dumps(coco))
    return read_coco_instances(path, folder)


def _changed(coco: dict, where: str, **values: object) -> dict:
    changed = copy.deepcopy(coco)
    changed[where][0].update(values)
    return changed


def test_a_small_coco_file_reads(small_coco: tuple[dict, Path]) -> None:
    read = _read(*small_coco)
    _, names, masks = load_annotated_image(read.images[0])
    assert names == ["dog"] and masks.shape == (1, 6, 8) and int((masks > 0).sum()) == 12
    coco, folder = small_coco  # uploads: image files matched by base name
    (folder / "instances.json").write_text(json.dumps(coco))
    assert read_coco_instances(folder / "instances.json", [str(folder / "a.png")]).images[0].path == str(
        folder / "a.png"
    )
    with pytest.raises(InputError, match=r"a\.png is not among the images given"):
        read_coco_instances(folder / "instances.json", [str(folder / "b.png")])


@pytest.mark.parametrize(
    ("where", "values", "message"),
    [
        ("images", {"file_name": "missing.png"}, r"image 1 \(missing.png\): missing.png is not in"),
        ("images", {"file_name": "../a.png"}, "not a path inside"),
        ("images", {"width": 9}, "is 8x6 as shown, but the annotations say 9x6"),
        ("annotations", {"image_id": 2}, "annotation 7 is of image 2, which the file does not list"),
        ("annotations", {"category_id": 4}, "annotation 7 has category 4, which the file does not list"),
        ("annotations", {"segmentation": {"size": [6, 8], "counts": [48]}}, "annotation 7 has an empty mask"),
        ("annotations", {"segmentation": [[1, 1, 5, 1, 3, 1]]}, "annotation 7 has an empty mask"),
        ("annotations", {"segmentation": [[0, 0] * 10_001]}, "more than 10,000 vertices"),
        ("annotations", {"segmentation": [[1, 1, 5, 1, 5, 400]]}, "point outside its 8x6 image"),
        ("annotations", {"segmentation": [[1, 1, 5, 1]]}, "at least 3 points"),
        ("annotations", {"segmentation": [["a", "b", "c", "d", "e", "f"]]}, "not a list of numbers"),
        ("annotations", {"segmentation": {"size": [6, 8], "counts": [40, 9]}}, "cover 49 pixels, not its image's 48"),
        ("annotations", {"segmentation": {"size": [6, 8], "counts": [50, -2]}}, "a negative run"),
        ("annotations", {"segmentation": {"size": [8, 6], "counts": [48]}}, r"size \[8, 6\]"),
        ("annotations", {"segmentation": {"size": [6, 8], "counts": "zzzz"}}, "cover|compressed format"),
        ("annotations", {"segmentation": []}, "no segmentation"),
        ("categories", {"name": " "}, "category 3 has no name"),
    ],
)
def test_bad_annotations_are_refused_by_name(
    small_coco: tuple[dict, Path], where: str, values: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        _read(_changed(small_coco[0], where, **values), small_coco[1])


def test_repeated_ids_huge_files_and_other_files_are_refused(
    small_coco: tuple[dict, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coco, folder = small_coco
    with pytest.raises(InputError, match="image id 1 appears twice"):
        _read({**coco, "images": coco["images"] * 2}, folder)
    with pytest.raises(InputError, match="category id 3 appears twice"):
        _read({**coco, "categories": coco["categories"] * 2}, folder)
    with pytest.raises(InputError, match="not a COCO instances file"):
        _read({"images": coco["images"], "annotations": [{"image_id": 1, "caption": "a dog"}]}, folder)
    with pytest.raises(InputError, match="holds a JSON list"):
        _read([coco], folder)
    with pytest.raises(InputError, match="not a JSON file"):
        read_coco_instances(folder / "a.png", folder)
    with pytest.raises(InputError, match="does not exist"):
        read_coco_instances(folder / "none.json", folder)
    monkeypatch.setattr(reading, "MAX_ANNOTATION_BYTES", 100)
    with pytest.raises(InputError, match=r"bytes, more than the 100 bytes a COCO instances file may take"):
        _read(coco, folder)
    monkeypatch.setattr(reading, "MAX_ANNOTATION_BYTES", 2**20)
    monkeypatch.setattr(reading, "MAX_ANNOTATIONS", 0)
    with pytest.raises(InputError, match="lists 1 annotations, more than 0"):
        _read(coco, folder)
    monkeypatch.setattr(reading, "MAX_ANNOTATIONS", 10)
    monkeypatch.setattr(reading, "MAX_PERIMETER_SIDES", 0)
    with pytest.raises(InputError, match="outline 14 pixels long"):
        _read(coco, folder)


def test_bad_mask_folders_are_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (8, 6)).save(images / "dog.png")
    Image.new("L", (8, 6)).save(masks / "dog_0.png")
    Image.new("L", (4, 4), 255).save(masks / "dog_1.png")
    labels = masks / "labels.csv"
    for rows, message in (
        ("mask,category\ndog_0.png,dog\n", "mask dog_0.png has an empty mask"),
        ("mask,category\ndog_1.png,dog\n", "mask dog_1.png is 4x4, but the image dog.png is 8x6"),
        ("mask,category\ndog_2.png,dog\n", "mask dog_2.png does not exist"),
        ("mask,category\ncat_0.png,cat\n", "no image of that name"),
        ("mask,category\nsomething.png,dog\n", "is not named <image stem>_<k>.png"),
        ("mask,category,image\ndog_1.png,dog,cat.png\n", "cat.png is not in"),
        ("file,caption\ndog.png,a dog\n", "no header row naming a mask and a category"),
        ("mask,category\ndog_1.png,\n", "row 1 has no name"),
    ):
        labels.write_text(rows)
        with pytest.raises(InputError, match=message):
            read_mask_folder(masks, labels, images)
    with pytest.raises(InputError, match="not UTF-8"):
        read_mask_folder(masks, images / "dog.png", images)
    labels.write_text("mask,category,image\ndog_1.png,dog,dog.png\n")
    monkeypatch.setattr(reading, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(InputError, match=r"the image dog\.png is 8x6 pixels, more than"):
        read_mask_folder(masks, labels, images)
    monkeypatch.setattr(reading, "MAX_IMAGE_PIXELS", 10)
    monkeypatch.setattr(reading, "_oriented_size", lambda path, label: (4, 4))  # the image passes, its mask not
    with pytest.raises(InputError, match=r"mask dog_1\.png is 4x4 pixels, more than"):
        read_mask_folder(masks, labels, images)


# --------------------------------------------------------------------------------------- command line


def test_the_command_line_scores_coco_per_kind_and_category(
    scene_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "eval-grounding", "--coco", str(scene_files / "coco_colour.json"), "--images", str(scene_files / "images"),
        "--kind", "sparc", "--max-images", "4",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    result = json.loads(out)
    assert result["format"] == "coco" and result["images"] == 4 and result["query"] == "a photo of a {}."
    for label in ("scores", "untrained"):
        assert set(result[label]) == {"sparc"} and set(result[label]["sparc"]) == {"all", "categories"}
        assert set(result[label]["sparc"]["all"]) == set(FIGURES)
    assert "(all)" in err and "untrained" in err and "notice: scored the first 4" in err

    bad = scene_files / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}], "categories": []}))
    assert main(["eval-grounding", "--coco", str(bad), "--images", str(scene_files / "images")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: bad.json: annotation number 1") and "Traceback" not in err
    assert main(["eval-grounding", "--coco", str(bad)]) == 2
    assert "--images DIR is needed" in capsys.readouterr().err


def test_masks_follow_the_models_crop_and_large_images_downscale(model: VLModel, tmp_path: Path) -> None:
    Image.new("RGB", (96, 64), (40, 40, 40)).save(tmp_path / "wide.png")  # the model's centre crop drops 16 px a side
    Image.new("RGB", (2000, 1000), (40, 40, 40)).save(tmp_path / "large.png")  # loaded at 1024 x 512
    box = [[0, 0, 12, 0, 12, 64, 0, 64]], [[40, 20, 56, 20, 56, 44, 40, 44]], [[0, 0, 1001, 0, 1001, 1000, 0, 1000]]
    coco = {
        "images": [
            {"id": 1, "file_name": "wide.png", "width": 96, "height": 64},
            {"id": 2, "file_name": "large.png", "width": 2000, "height": 1000},
        ],
        "categories": [{"id": 1, "name": "edge"}, {"id": 2, "name": "middle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": box[0]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": box[1]},
            {"id": 3, "image_id": 2, "category_id": 2, "segmentation": box[2]},
        ],
    }
    read = _read(coco, tmp_path)
    _, _, masks = load_annotated_image(read.images[1])
    assert masks.shape == (1, 512, 1024) and masks[0, 0, 511] == 255 and 0 < masks[0, 0, 512] < 255
    result = score_annotations(model, read, ["sparc"])
    assert (result["objects"], result["outside_crop"], result["not_named"]) == (3, 1, 0)
    categories = result["scores"]["sparc"]["categories"]
    assert categories["edge"]["words"] == 0 and np.isnan(categories["edge"]["pointing_game"])
    assert categories["middle"]["words"] == 2
