"""The `keywords` API and the Grounding tab's XMM map through gradio_client, against the app on the offline model."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from open_clip.model import CLIP

from tests.conftest import SCENE_CAPTIONS, TINY_VIT_CFG, analyzed_client
from vlviz.data.samples import SAMPLE_SETS
from vlviz.data.sources import SceneSource
from vlviz.losses.heads import save_loss_heads
from vlviz.models.checkpoints import save_checkpoint
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.training.config import TrainConfig
from vlviz.training.loop import build_losses, train

SCENES = SAMPLE_SETS["scenes"]
FILES = [SCENES / f"scene_{i:02d}.png" for i in range(4)]
ZERO_SHOT, CAPTIONS_ONLY = "the captions' words and the default concepts", "the captions' words only"
VOCABULARY = ["red", "green", "blue", "yellow", "purple", "white", "circle", "square", "triangle", "cross"]


def simla_checkpoint(folder: Path) -> Path:
    """A tiny ViT trained a few steps with CLIP, PSL and XMM: its checkpoint with the loss heads beside it."""
    torch.manual_seed(0)
    model = CLIP(**TINY_VIT_CFG, output_dict=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=TINY_VIT_CFG["text_cfg"]["context_length"])
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=8)
    config = TrainConfig(
        steps=3, batch_size=8, eval_every=100, losses={"clip": 1.0, "psl": 1.0, "xmm": 1.0},
        loss_options={"psl": {"vocabulary_source": "fixed", "vocabulary": VOCABULARY}, "xmm": {"heads": 2}},
    )  # fmt: skip
    heads = build_losses(config, model, tokenizer, torch.device("cpu"))
    list(train(model, tokenizer, source, config, loss_modules=heads))
    save_checkpoint(model, TINY_VIT_CFG, folder)
    save_loss_heads(heads, folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simla_checkpoint(tmp_path_factory.mktemp("simla"))


@pytest.fixture(scope="module")
def trained(app_url: str, checkpoint: Path) -> Client:
    """A session that has analyzed the same scenes with the checkpoint trained with PSL and XMM."""
    return analyzed_client(app_url, FILES, str(checkpoint))


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    """A session that has analyzed four bundled scenes with their own captions."""
    return analyzed_client(app_url, FILES)


def _keywords(client: Client, pair: int | None = 1, template: str = "a photo of {}", vocabulary: str = ZERO_SHOT,
              top_k: int = 10, content_only: bool = False, all_positions: bool | None = None) -> tuple:  # fmt: skip
    """The `keywords` API; without `all_positions` as a client written before it (the argument's default applies)."""
    last = () if all_positions is None else (all_positions,)
    return client.predict(pair, template, vocabulary, top_k, content_only, *last, api_name="/keywords")


def test_keywords_returns_every_pair_with_keywords_and_concepts(client: Client) -> None:
    caption, _image, concepts, _pair, _table, notice, data = _keywords(client, pair=2)
    assert data["model"] == OFFLINE_SPEC and data["pair"] == 2 and len(data["pairs"]) == 4
    for entry, file in zip(data["pairs"], FILES):
        assert entry["caption"] == SCENE_CAPTIONS[file.name] and entry["image"] == file.name
        assert entry["words"] == entry["caption"].replace(",", "").split()
        assert 1 <= len(entry["keywords"]) <= 5 and set(entry["keywords"]) <= set(entry["words"])
        scores = [c["score"] for c in entry["concepts"]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True)
        assert all(c["in_caption"] == (c["word"] in entry["words"]) for c in entry["concepts"])
    assert "zero-shot" in notice and "'a photo of …'" in data["concepts_from"]
    shown = data["pairs"][1]
    marked = [text.strip() for text, label in ((s["token"], s["class_or_confidence"]) for s in caption) if label]
    assert marked == shown["keywords"]  # the highlighted words of the chosen pair
    labels = {s["class_or_confidence"] for s in concepts if s["class_or_confidence"]}
    assert labels <= {"in the caption", "missing from the caption"} and labels


def test_the_captions_only_vocabulary_and_the_prompt(client: Client) -> None:
    data = _keywords(client, template="a {}", vocabulary=CAPTIONS_ONLY, top_k=30, content_only=True)[-1]
    every_word = {w for entry in data["pairs"] for w in entry["words"]}
    assert all(c["word"] in every_word for entry in data["pairs"] for c in entry["concepts"])
    assert data["template"] == "a {}" and all(
        len(e["concepts"]) == len(data["pairs"][0]["concepts"]) for e in data["pairs"]
    )
    assert not {"a", "at", "the", "on", "and"} & {w for e in data["pairs"] for w in e["keywords"]}


def test_all_positions_vote_as_in_simla(client: Client) -> None:
    """SIMLA's vote: start, end and punctuation vote too; each of the offline tower's 4 heads still gives 4 votes."""
    words_only = _keywords(client, pair=2)[-1]
    *_, notice, data = _keywords(client, pair=2, all_positions=True)
    assert "vlviz's filter" in words_only["candidates"] and "SIMLA's vote" in data["candidates"]
    for plain, simla in zip(words_only["pairs"], data["pairs"]):
        assert sum(v["votes"] for v in plain["votes"]) == sum(v["votes"] for v in simla["votes"]) == 16
        assert {v["token"] for v in plain["votes"]} <= set(plain["words"])
        assert {v["token"] for v in simla["votes"]} <= {*simla["words"], ",", "⟨start⟩", "⟨end⟩"}
        assert set(simla["keywords"]) <= set(simla["words"]) and len(simla["keywords"]) <= 5
    shown = data["pairs"][1]["votes"]
    assert notice.startswith(
        f"**Voted** (candidates: {data['candidates']}): '{shown[0]['token']}' ×{shown[0]['votes']}"
    )


def test_a_trained_concept_head_gives_the_concepts(trained: Client) -> None:
    data = _keywords(trained, top_k=4)[-1]
    assert "trained PSL concept head" in data["concepts_from"] and "10-word vocabulary" in data["concepts_from"]
    for entry in data["pairs"]:
        assert {c["word"] for c in entry["concepts"]} <= set(VOCABULARY) and len(entry["concepts"]) == 4
        assert all(0 < c["score"] < 1 for c in entry["concepts"])  # probabilities of the momentum head


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"pair": 9}, "Pair 9 does not exist: choose 1 to 4"), ({"template": "a photo"}, "needs a \\{\\}"),
     ({"vocabulary": "nope"}, "'nope'.*not in the list of choices")],
)  # fmt: skip
def test_bad_requests_are_named(client: Client, kwargs: dict, message: str) -> None:
    with pytest.raises(AppError, match=message):
        _keywords(client, **kwargs)


def test_keywords_need_analyzed_pairs(app_url: str) -> None:
    with pytest.raises(AppError, match="Analyze a set of pairs first"):
        _keywords(Client(app_url, verbose=False))


def test_grounding_shows_the_trained_xmm_map(trained: Client) -> None:
    result = trained.predict(2, 3, "sparc", 0.6, "", api_name="/grounding")
    xmm_notice, data = result[7], result[-1]
    xmm = data["xmm"]
    assert xmm["available"] and len(xmm["word_maps"]) == len(data["words"]) == len(xmm["global_share"])
    for row, share in zip(xmm["word_maps"], xmm["global_share"]):
        assert len(row) == 16 and min(row) >= 0 and abs(sum(row) + share - 1) < 1e-4  # 4 x 4 patches of the tiny ViT
    assert f"'{data['words'][3]}' when it is masked" in xmm_notice
    assert len(data["word_maps"]) == len(data["words"])  # SPARC's maps are still there


def test_grounding_says_why_there_is_no_xmm_map(client: Client) -> None:
    result = client.predict(1, None, "sparc", 0.6, "", api_name="/grounding")
    assert result[6]["visible"] is False and "has no trained XMM head" in result[7]  # the empty plot is hidden
    assert result[-1]["xmm"] == {"available": False, "reason": result[7]}
