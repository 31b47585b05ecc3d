"""The Keywords and Grounding views from data: what they mark, say and hand to the API, without a UI."""

from __future__ import annotations

import pytest

from vlviz.data.inputs import PairSet, pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.grounding.maps import model_caption_maps
from vlviz.keywords import caption_keywords, image_concepts
from vlviz.models.encoding import VLModel
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.viz.keywords_view import IN_CAPTION, KEYWORD, MISSING, keywords_view
from vlviz.viz.pair_grounding import Compared, grounding_of, pair_grounding


@pytest.fixture(scope="module")
def model() -> VLModel:
    return load_model(OFFLINE_SPEC)


@pytest.fixture(scope="module")
def pairs() -> PairSet:
    files, captions = sample_files("scenes")
    return pairs_from_uploads(files[:4], "\n".join(captions.splitlines()[:4]))


def test_the_keywords_view_marks_the_vote_and_the_concepts(model: VLModel, pairs: PairSet) -> None:
    found = caption_keywords(model.model, model.tokenizer, pairs.captions)
    concepts = image_concepts(model, pairs.images, found.layout.words, "a photo of {}", ())
    view = keywords_view(pairs, 1, found, concepts, model.name, "a photo of {}", top_k=3)
    marked = [word.strip() for word, kind in view.caption if kind == KEYWORD]
    assert marked == found.keywords[1] and "".join(word for word, _ in view.caption).split() == found.layout.words[1]
    assert {kind for _, kind in view.concepts if kind} <= {IN_CAPTION, MISSING}
    assert len(view.table) == len(pairs) and view.data["pair"] == 2 and len(view.data["pairs"]) == len(pairs)
    assert all(len(entry["concepts"]) == 3 for entry in view.data["pairs"])
    assert "**Concepts from** zero-shot" in view.notice and view.image.size[0] >= 4 * pairs.images[1].size[0]


def test_the_grounding_view_of_a_typed_text_beside_a_model_that_reads_other_words(
    model: VLModel, pairs: PairSet
) -> None:
    maps = model_caption_maps(model, pairs.images[0], "a red circle", "sparc")
    other = model_caption_maps(model, pairs.images[0], "a blue square", "sparc")
    head = grounding_of(model.name, 1, pairs.names[0], "a red circle")
    image = model.input_image(pairs.images[0])
    compared = Compared("the other", other, image)
    view = pair_grounding(head, maps, image, None, 0.7, True, None, model.grid_size, None, compared)
    assert view.word == maps.first_word and view.words == maps.words and view.comparison is None
    assert view.notice.startswith("Grounding the typed text") and "reads no word" in view.notice
    assert view.xmm is None and "has no trained XMM head" in view.xmm_notice and view.score == ""
    assert (
        view.data["model"] == OFFLINE_SPEC and view.data["text"] == "a red circle" and view.data["scene_score"] is None
    )
    assert view.data["compare"] == {"model": "the other", "reason": view.notice.split("\n\n")[1]}
    same = pair_grounding(head, maps, image, 1, 0.7, False, None, model.grid_size, None, Compared("twin", maps, image))
    assert same.word == 1 and same.comparison is not None and same.data["compare"]["word"] == 1 and same.notice == ""
