"""The `grounding`, `every_method` and `grounding_annotations` APIs through gradio_client, against the app launched on
the offline model."""

from __future__ import annotations

import copy
import json
import math
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.conftest import SCENE_CAPTIONS, analyzed_client
from tests.grounding.test_annotations import _write_scenes
from vlviz.data import annotations as reading
from vlviz.data import inputs
from vlviz.data.samples import SAMPLE_SETS, bundled_scenes
from vlviz.grounding.annotations import annotation_grounding
from vlviz.models.loading import GROUNDED_SPEC, OFFLINE_SPEC, load_model
from vlviz.ui import grounding_tab
from vlviz.ui.grounding_tab import EVERY_METHOD_KINDS

SCENES = SAMPLE_SETS["scenes"]
FILES = [SCENES / f"scene_{i:02d}.png" for i in range(4)]


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    """A session that has analyzed four bundled scenes with their own captions."""
    return analyzed_client(app_url, FILES)


def _ground(client: Client, pair: int | None = 2, word: int | None = None, kind: str = "sparc", text: str = "",
            compare: str = "") -> dict:  # fmt: skip
    return client.predict(pair, word, kind, 0.6, text, compare, api_name="/grounding")[-1]


def test_grounding_returns_the_words_and_their_weights(client: Client) -> None:
    data = _ground(client, pair=2, word=3)
    caption = SCENE_CAPTIONS["scene_01.png"]
    assert data["pair"] == 2 and data["image"] == "scene_01.png" and data["text"] == caption
    assert data["words"] == caption.replace(",", "").split() and data["word"] == 3
    assert data["grid_size"] == [8, 8] and len(data["word_maps"]) == len(data["words"])
    assert all(len(row) == 64 and abs(sum(row) - 1) < 1e-4 for row in data["word_maps"])  # SPARC rows sum to 1
    assert len(data["token_maps"]) == len(data["tokens"]) and all(min(row) >= 0 for row in data["token_maps"])


def test_the_default_word_is_the_first_content_word(client: Client) -> None:
    """Neither a stop word nor a size: the same word the trainer's probe and the model comparison show first."""
    data = _ground(client, pair=1)
    assert data["words"][:2] == ["a", "small"] and data["word"] == 2


def test_bundled_scenes_get_a_grounding_score(client: Client) -> None:
    result = client.predict(1, None, "sparc", 0.6, "", api_name="/grounding")
    score, data = result[8], result[-1]
    assert "pointing game" in score and "4 loaded bundled scenes" in score
    for name in ("colour", "shape"):
        entry = data["scene_score"][name]
        assert 0 <= entry["pointing_game"] <= 1 and 0 <= entry["mass_in_mask"] <= 1 and entry["words"] > 0


def test_the_dense_cosine_map_lies_in_the_unit_interval(client: Client) -> None:
    data = _ground(client, kind="cosine")
    values = [v for row in data["word_maps"] for v in row]
    assert all(-1 <= v <= 1 for v in values) and min(values) < 0.999


def test_the_occlusion_map_shows_where_evidence_comes_from_with_its_score(client: Client) -> None:
    result = client.predict(2, 3, "occlusion", 0.6, "", "untrained", api_name="/grounding")
    score, data = result[8], result[-1]
    assert data["kind"] == "occlusion" and len(data["word_maps"]) == len(data["words"])
    assert all(len(row) == 64 for row in data["word_maps"]) and any(v < 0 for row in data["token_maps"] for v in row)
    assert "occlusion" in score and data["scene_score"]["colour"]["words"] > 0
    assert data["compare"]["word_maps"] != data["word_maps"]  # the untrained twin's own occlusion map


def test_any_typed_text_is_grounded(client: Client) -> None:
    data = _ground(client, text="blue square")
    assert data["words"] == ["blue", "square"] and data["text"] == "blue square" and data["word"] == 0


def test_a_resnet_says_why_there_are_no_maps(app_url: str, tiny_resnet_dir: Path) -> None:
    resnet = analyzed_client(app_url, FILES[:2], str(tiny_resnet_dir))
    result = resnet.predict(1, None, "sparc", 0.6, "", api_name="/grounding")
    notice, data = result[5], result[-1]
    assert "no projectable patch tokens" in notice and "ModifiedResNet" in data["unavailable"]


@pytest.mark.parametrize(
    ("pair", "kind", "message"),
    [(9, "sparc", "Pair 9 does not exist: choose 1 to 4"), (1, "nope", "'nope'.*not in the list of choices")],
)
def test_bad_requests_are_named(client: Client, pair: int, kind: str, message: str) -> None:
    with pytest.raises(AppError, match=message):
        _ground(client, pair=pair, kind=kind)


def test_grounding_needs_analyzed_pairs(app_url: str) -> None:
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        _ground(Client(app_url, verbose=False))


def test_the_untrained_model_is_drawn_beside_on_the_same_word(client: Client) -> None:
    data = _ground(client, pair=2, word=3, compare="untrained")
    other = data["compare"]
    assert "untrained" in other["model"] and other["words"] == data["words"] and other["word"] == 3
    assert len(other["word_maps"]) == len(data["words"]) and other["word_maps"] != data["word_maps"]
    assert all(abs(sum(row) - 1) < 1e-4 for row in other["word_maps"])


def test_a_model_compared_with_itself_draws_the_same_maps(client: Client) -> None:
    data = _ground(client, pair=1, compare=OFFLINE_SPEC)
    assert data["compare"]["word_maps"] == data["word_maps"] and data["compare"]["word"] == data["word"]


def test_no_comparison_by_default_and_a_resnet_comparison_says_why(client: Client, tiny_resnet_dir: Path) -> None:
    assert _ground(client, pair=1)["compare"] is None
    result = client.predict(1, None, "sparc", 0.6, "", str(tiny_resnet_dir), api_name="/grounding")
    assert "No map to compare" in result[5] and "ModifiedResNet" in result[-1]["compare"]["reason"]


def test_the_views_read_the_model_that_analyzed_the_pairs_whatever_the_model_box_says(
    app_url: str, tiny_vit_dir: Path
) -> None:
    """The model box changed after Analyze must not mix two models: the maps, keywords and rankings are the
    analyzed model's (issue 22); another model is drawn only when asked for, beside it (`compare`)."""
    tiny = analyzed_client(app_url, FILES[:2], str(tiny_vit_dir))
    data = _ground(tiny, pair=1)
    assert data["model"] == str(tiny_vit_dir) and data["grid_size"] == [4, 4]  # the tiny ViT's grid, not 8 x 8
    keywords = tiny.predict(1, "a photo of {}", "the captions' words only", 3, True, api_name="/keywords")[-1]
    assert keywords["model"] == str(tiny_vit_dir)
    offline = _ground(tiny, pair=1, compare=OFFLINE_SPEC)["compare"]
    assert offline["model"] == OFFLINE_SPEC and len(offline["word_maps"][0]) == 64


@pytest.mark.parametrize("kind", ["maskclip", "sclip", "clearclip", "naclip", "legrad", "gradeclip"])
def test_the_training_free_and_gradient_methods_are_map_kinds_with_their_score(client: Client, kind: str) -> None:
    result = client.predict(1, None, kind, 0.6, "", api_name="/grounding")
    score, data = result[8], result[-1]
    assert data["kind"] == kind and len(data["word_maps"]) == len(data["words"])
    low = 0 if kind in ("legrad", "gradeclip") else -1  # gradient maps are relevance in [0, 1], the others cosines
    assert all(len(row) == 64 and all(low - 1e-5 <= v <= 1 + 1e-5 for v in row) for row in data["word_maps"])
    assert data["scene_score"]["colour"]["words"] > 0 and "pointing game" in score


# ------------------------------------------------------------------------------------------ every method


def _every(client: Client, pair: int | None = 1, word: int | None = None, text: str = "") -> tuple[dict, str, dict]:
    figure, notice, data = client.predict(pair, word, text, api_name="/every_method")
    return json.loads(figure["plot"]), notice, data


def test_every_method_draws_the_word_by_each_method_titled_with_its_pointing_game(client: Client) -> None:
    figure, notice, data = _every(client, pair=2, word=3)
    assert data["pair"] == 2 and data["word"] == 3 and data["scenes"] == 4 and list(data["kinds"]) == EVERY_METHOD_KINDS
    for kind, entry in data["kinds"].items():  # the offline model draws every method, occlusion included
        assert len(entry["word_map"]) == 64 and 0 <= entry["pointing"] <= 1, kind
    titles = [note["text"] for note in figure["layout"]["annotations"]]
    assert titles == [f"{e['label']}<br>pointing {e['pointing']:.2f}" for e in data["kinds"].values()]
    assert "4 loaded bundled scenes" in notice and "Not drawn" not in notice
    scene_score = client.predict(2, 3, "sparc", 0.6, "", api_name="/grounding")[-1]["scene_score"]
    assert data["kinds"]["sparc"]["pointing"] == pytest.approx(scene_score["colour"]["pointing_game"])
    word_maps = client.predict(2, 3, "legrad", 0.6, "", api_name="/grounding")[-1]["word_maps"]
    assert data["kinds"]["legrad"]["word_map"] == pytest.approx(word_maps[3], abs=1e-6)


def test_every_method_follows_the_typed_text_and_its_first_content_word(client: Client) -> None:
    _, _, data = _every(client, pair=1, text="a small blue square")
    assert data["words"] == ["a", "small", "blue", "square"] and data["word"] == 2
    assert data["text"] == "a small blue square"


def test_methods_a_model_refuses_say_why_in_their_panel(app_url: str) -> None:
    """The grounded model reads its maps before any block: the dense methods have no block to re-read."""
    grounded = analyzed_client(app_url, FILES[:2], GROUNDED_SPEC)
    figure, notice, data = _every(grounded)
    for kind in ("maskclip", "sclip", "clearclip", "naclip"):
        assert "before any image block" in data["kinds"][kind]["reason"] and "word_map" not in data["kinds"][kind]
        assert f"Not drawn: {data['kinds'][kind]['label']}" in notice
    assert {"sparc", "cosine", "legrad"} <= {k for k, e in data["kinds"].items() if "word_map" in e}
    texts = [note["text"] for note in figure["layout"]["annotations"]]
    assert "MaskCLIP (value path)<br>not drawn" in texts and any("before any image" in t for t in texts)


def test_annotations_leave_out_the_methods_a_model_refuses_and_say_why(app_url: str, scene_files: Path) -> None:
    grounded = analyzed_client(app_url, FILES[:1], GROUNDED_SPEC)
    summary, _, _, data = _score(
        grounded, scene_files / "coco_colour.json", [scene_files / "images.zip"], kinds=["sparc", "maskclip"]
    )
    assert data["model"] == GROUNDED_SPEC and data["kinds"] == ["sparc"] and set(data["scores"]) == {"sparc"}
    assert "before any image block" in data["not_scored"]["maskclip"] and "Not scored: MaskCLIP" in summary
    with pytest.raises(AppError, match="draws none of these methods"):
        _score(grounded, scene_files / "coco_colour.json", [scene_files / "images.zip"], kinds=["maskclip"])


def test_every_method_needs_analyzed_pairs_and_an_existing_pair(app_url: str, client: Client) -> None:
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        _every(Client(app_url, verbose=False))
    with pytest.raises(AppError, match="Pair 9 does not exist"):
        _every(client, pair=9)


# ------------------------------------------------------------------------------------------- annotations

ANNOTATED = [0, 1, 2]  # the bundled scenes written as COCO and as masks: a few, for speed


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled scenes written as COCO instances and mask folders (colour words), their images and masks zipped."""
    folder = tmp_path_factory.mktemp("annotated")
    _write_scenes(bundled_scenes()[0], ANNOTATED, folder)
    for name, files in (
        ("images", (folder / "images").glob("*.png")),
        ("masks", (folder / "masks_colour").glob("*.png")),
    ):
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as archive:
            for path in sorted(files):
                archive.write(path, f"{name}/{path.name}")
    return folder


def _score(
    client: Client,
    annotations: Path,
    images: list[Path],
    masks: list[Path] = (),
    kinds: list[str] = ("sparc", "legrad"),
) -> tuple:
    return client.predict(
        handle_file(str(annotations)), [handle_file(str(p)) for p in images], [handle_file(str(m)) for m in masks],
        list(kinds), api_name="/grounding_annotations",
    )  # fmt: skip


def _same(got: dict, expected: dict) -> bool:
    """Figures alike to 1e-6, NaN (a JSON null) where there is none."""
    return all(
        (expected[key] is None or math.isnan(expected[key]))
        if got[key] is None
        else got[key] == pytest.approx(expected[key], abs=1e-6)
        for key in expected
    )


def test_coco_annotations_uploaded_as_a_zip_score_as_the_library_does(client: Client, scene_files: Path) -> None:
    summary, table, csv_file, data = _score(client, scene_files / "coco_colour.json", [scene_files / "images.zip"])
    expected = annotation_grounding(
        load_model(OFFLINE_SPEC), scene_files / "coco_colour.json", scene_files / "images", ["sparc", "legrad"]
    )
    assert data["model"] == OFFLINE_SPEC and data["images"] == len(ANNOTATED) and data["format"] == "coco"
    for label in ("scores", "untrained"):
        for kind in ("sparc", "legrad"):
            assert _same(data[label][kind]["all"], expected[label][kind]["all"]), (label, kind)
            for name, figures in expected[label][kind]["categories"].items():
                assert _same(data[label][kind]["categories"][name], figures), (label, kind, name)
    rows = table["data"]
    header = table["headers"]
    assert header[:3] == ["method", "category", "words"] and "pointing game (untrained)" in header
    assert [row[:2] for row in rows if row[1] == "all objects"] == [
        ["SPARC weights", "all objects"],
        ["LeGrad (attention-map gradients)", "all objects"],
    ]
    pointing = header.index("pointing game")
    assert rows[0][pointing] == pytest.approx(expected["scores"]["sparc"]["all"]["pointing_game"], abs=1e-4)
    assert Path(csv_file).read_text().splitlines()[0].startswith("method,category,words,pointing game")
    assert f"{len(ANNOTATED)} images" in summary and "coco\\_colour.json" in summary  # escaped Markdown


def test_a_mask_zip_with_its_labels_scores_as_its_coco_file(client: Client, scene_files: Path) -> None:
    coco = _score(client, scene_files / "coco_colour.json", [scene_files / "images.zip"], kinds=["sparc"])[-1]
    masks = _score(
        client, scene_files / "masks_colour" / "labels.csv", list((scene_files / "images").glob("*.png")),
        [scene_files / "masks.zip"], kinds=["sparc"],
    )[-1]  # fmt: skip
    assert masks["format"] == "masks" and masks["objects"] == coco["objects"]
    assert _same(masks["scores"]["sparc"]["all"], coco["scores"]["sparc"]["all"])


def _bad_coco(folder: Path, change: str) -> Path:
    """The first scene's COCO file, changed one way."""
    coco = json.loads((folder / "coco_colour.json").read_text())
    coco["images"], coco["annotations"] = coco["images"][:1], [a for a in coco["annotations"] if a["image_id"] == 0]
    bad = copy.deepcopy(coco)
    first = bad["annotations"][0]
    if change == "unknown category":
        first["category_id"] = 99
    elif change == "unknown image":
        first["image_id"] = 42
    elif change == "empty mask":
        first["segmentation"] = [[1, 1, 5, 1, 3, 1]]
    elif change == "huge polygon":
        first["segmentation"] = [[0, 0] * 10_001]
    elif change == "missing image":
        bad["images"][0]["file_name"] = "not_uploaded.png"
    path = folder / f"{change.replace(' ', '_')}.json"
    path.write_text(json.dumps(bad))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("unknown category", r"annotation \d+ has category 99, which the file does not list"),
        ("unknown image", r"annotation \d+ is of image 42, which the file does not list"),
        ("empty mask", r"annotation \d+ has an empty mask"),
        ("huge polygon", "more than 10,000 vertices"),
        ("missing image", r"not_uploaded.png is not among the images given"),
    ],
)
def test_bad_annotations_are_named_without_a_server_path(
    client: Client, scene_files: Path, change: str, message: str
) -> None:
    with pytest.raises(AppError, match=message) as refused:
        _score(client, _bad_coco(scene_files, change), [scene_files / "images.zip"])
    assert "/tmp" not in str(refused.value) and "Traceback" not in str(refused.value)


def test_wrong_files_are_refused_with_what_to_upload(client: Client, scene_files: Path, tmp_path: Path) -> None:
    image = scene_files / "images" / "scene_00.png"
    not_json = tmp_path / "instances.json"
    not_json.write_bytes(image.read_bytes())
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "caption": "a dog"}]}))
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as archive:
        archive.write(image, "../scene_00.png")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not a zip")
    for upload, images, masks, message in (
        (not_json, [image], [], "instances.json is not a JSON file"),
        (captions, [image], [], "not a COCO instances file"),
        (scene_files / "masks_colour" / "labels.csv", [image], [], "labels.csv is a labels table: upload its masks"),
        (scene_files / "coco_colour.json", [unsafe], [], "unsafe.zip has entries with unsafe names"),
        (scene_files / "coco_colour.json", [broken], [], "broken.zip could not be unpacked"),
    ):
        with pytest.raises(AppError, match=message) as refused:
            _score(client, upload, images, masks)
        assert "/tmp" not in str(refused.value)


def test_every_bound_is_checked_before_unpacking_or_decoding(
    client: Client, scene_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app runs in this process: its bounds are lowered here to see each refused by name."""
    coco, images = scene_files / "coco_colour.json", [scene_files / "images.zip"]
    monkeypatch.setattr(grounding_tab, "MAX_ANNOTATED_IMAGES", 1)
    data = _score(client, coco, images, kinds=["sparc"])[-1]
    assert data["images"] == 1 and data["notices"] == [f"scored the first 1 of {len(ANNOTATED)} annotated images"]
    for module, bound, value, message in (
        (inputs, "MAX_ZIP_MEMBERS", 2, f"images.zip lists {len(ANNOTATED)} entries, more than the 2 allowed"),
        (reading, "MAX_ZIP_BYTES", 100, "images.zip unpacks to more than 0 MB"),
        (grounding_tab, "MAX_REQUEST_PIXELS", 100, r"images \(1\) hold 0 megapixels together, more than the 0"),
    ):
        with monkeypatch.context() as lowered:
            lowered.setattr(module, bound, value)
            with pytest.raises(AppError, match=message):
                _score(client, coco, images, kinds=["sparc"])
