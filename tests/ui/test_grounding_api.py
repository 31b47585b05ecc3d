"""The `grounding` API through gradio_client, against the app launched on the offline model."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import SCENE_CAPTIONS, analyzed_client
from vlviz.data.samples import SAMPLE_SETS
from vlviz.models.loading import OFFLINE_SPEC

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


@pytest.mark.parametrize("kind", ["maskclip", "sclip", "clearclip", "naclip"])
def test_the_training_free_methods_are_map_kinds_with_their_score(client: Client, kind: str) -> None:
    result = client.predict(1, None, kind, 0.6, "", api_name="/grounding")
    score, data = result[8], result[-1]
    assert data["kind"] == kind and len(data["word_maps"]) == len(data["words"])
    assert all(len(row) == 64 and all(-1 - 1e-5 <= v <= 1 + 1e-5 for v in row) for row in data["word_maps"])
    assert data["scene_score"]["colour"]["words"] > 0 and "pointing game" in score
