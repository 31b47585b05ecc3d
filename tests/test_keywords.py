"""SIMLA keywords and concepts: the vote on hand-made attention, the attention of a real text tower, concepts."""

from __future__ import annotations

import threading

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.conftest import TINY_VIT_CFG
from vlviz import keywords
from vlviz.keywords import (
    MAX_TEMPLATE_CHARS,
    candidate_rule,
    caption_keywords,
    check_concept_template,
    concept_vocabulary,
    default_concepts,
    keyword_candidates,
    keyword_votes,
    keyword_word_mask,
    keywords_from_attention,
    mention_matrix,
    pooled_attention,
    rank_concepts,
    select_keywords,
    zero_shot_concept_scores,
)
from vlviz.models.tokens import token_layout

# One caption of 10 positions: start (0), eight word tokens (1-8), end (9); three heads. Each row sums to 1.
#   head a: top 4 words 2 (.15), 4 (.12), 6 (.10), 8 (.08); the start token (.30) is no candidate
#   head b: top 4 words 2 (.20), 4 (.18), 5 (.16), 7 (.14); the end token (.20) is no candidate
#   head c: top 4 words 2 (.22), 4 (.20), 8 (.16), 3 (.12)
# Votes: 2 and 4 three each, 8 two, 3, 5, 6 and 7 one each. Ties go to the larger summed attention:
# 5 (.21) > 7 (.19) > 6 (.17) > 3 (.15), so the five keywords are positions 2, 4, 8, 5 and 7.
ATTENTION = torch.tensor(
    [
        [
            [0.30, 0.01, 0.15, 0.02, 0.12, 0.03, 0.10, 0.04, 0.08, 0.15],
            [0.05, 0.02, 0.20, 0.01, 0.18, 0.16, 0.03, 0.14, 0.01, 0.20],
            [0.10, 0.03, 0.22, 0.12, 0.20, 0.02, 0.04, 0.01, 0.16, 0.10],
        ]
    ]
)
CANDIDATES = torch.tensor([[False, *[True] * 8, False]])


def test_the_vote_keeps_the_expected_positions() -> None:
    kept = select_keywords(ATTENTION, CANDIDATES)
    assert kept[0].nonzero().flatten().tolist() == [2, 4, 5, 7, 8]


def test_every_position_votes_in_simlas_vote() -> None:
    # The same attention, every position a candidate: head a votes for 0 (.30), 2 (.15), 9 (.15), 4 (.12);
    # head b for 2 (.20), 9 (.20), 4 (.18), 5 (.16); head c for 2, 4, 8 and 3 as before. Votes: 2 and 4
    # three, the end token 9 two, 0, 3, 5 and 8 one each, ordered by summed attention: the start token
    # 0 (.45) > 8 (.25) > 5 (.21) > 3 (.15). Start and end take two of the five places; 5 and 7 drop out.
    every = torch.ones_like(CANDIDATES)
    assert keyword_votes(ATTENTION, CANDIDATES).tolist() == [[0, 0, 3, 1, 3, 1, 1, 1, 2, 0]]
    assert keyword_votes(ATTENTION, every).tolist() == [[1, 0, 3, 1, 3, 1, 0, 0, 1, 2]]
    assert select_keywords(ATTENTION, every)[0].nonzero().flatten().tolist() == [0, 2, 4, 8, 9]


def test_votes_beat_attention_and_unvoted_positions_are_never_kept() -> None:
    # One vote per head: position 0 gets one, position 3 two; position 1 has the most attention in
    # total (.95) but no head ranks it first, so it is not a keyword, even with room for three.
    attention = torch.tensor([[[0.4, 0.3, 0.2, 0.1], [0.1, 0.3, 0.2, 0.4], [0.1, 0.35, 0.15, 0.4]]])
    kept = select_keywords(attention, torch.ones(1, 4, dtype=torch.bool), per_head=1, keep=3)
    assert kept[0].tolist() == [True, False, False, True]


def test_a_caption_shorter_than_the_vote_keeps_only_its_words() -> None:
    candidates = torch.tensor([[False, True, True, False, False]])  # two words, then end and padding
    attention = torch.full((2, 4, 5), 0.2)  # a batch of two: the second caption has no words at all
    kept = select_keywords(attention, torch.cat([candidates, torch.zeros_like(candidates)]))
    assert kept.tolist() == [[False, True, True, False, False], [False] * 5]


def test_kept_pieces_become_kept_words() -> None:
    word_index = torch.tensor([[-1, 0, 1, 1, 2, -1], [-1, 0, -1, -1, -1, -1]])  # "sky scrap|ers now", "hi"
    kept = torch.tensor([[False, False, False, True, False, False], [False, True, False, False, False, False]])
    assert keyword_word_mask(kept, word_index).tolist() == [[False, True, False], [True, False, False]]


@pytest.fixture(scope="module")
def tiny() -> tuple[CLIP, object]:
    torch.manual_seed(0)
    return CLIP(**TINY_VIT_CFG, output_dict=True).eval(), open_clip.get_tokenizer("ViT-B-32", context_length=16)


def test_pooled_attention_reads_the_end_of_text_row_of_the_last_block(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    ids = tokenizer(["a red circle", "a small blue square at the top left"])
    attention = pooled_attention(model, ids)
    heads = TINY_VIT_CFG["text_cfg"]["heads"]
    assert attention.shape == (2, heads, ids.shape[1])
    assert torch.allclose(attention.sum(-1), torch.ones(2, heads), atol=1e-5)
    end = ids.argmax(-1)
    after_end = torch.arange(ids.shape[1])[None, None, :] > end[:, None, None]
    assert (attention[after_end.expand_as(attention)] == 0).all()  # the causal mask: nothing after end-of-text

    # The same row by hand: the last block's input, its attention per head, the end-of-text query.
    block = model.transformer.resblocks[-1]
    x = model.token_embedding(ids) + model.positional_embedding
    for earlier in model.transformer.resblocks[:-1]:
        x = earlier(x, attn_mask=model.attn_mask)
    y = block.ln_1(x)
    _, weights = block.attn(y, y, y, attn_mask=model.attn_mask, need_weights=True, average_attn_weights=False)
    assert torch.allclose(attention, weights[torch.arange(2), :, end], atol=1e-6)


def test_pooled_attention_ignores_other_threads_passes(tiny: tuple[CLIP, object], monkeypatch) -> None:
    """The model is shared by every session: another request's pass while the hook is on must not be caught."""
    model, tokenizer = tiny
    ids = tokenizer(["a red circle", "a small blue square at the top left"])
    alone = pooled_attention(model, ids)
    encode_text = model.encode_text

    def with_another_session(text: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = encode_text(text, *args, **kwargs)
        other = threading.Thread(target=encode_text, args=(tokenizer(["another session's caption"]),))
        other.start()
        other.join()
        return out

    monkeypatch.setattr(model, "encode_text", with_another_session)
    assert torch.equal(pooled_attention(model, ids), alone)


def test_caption_keywords_are_words_of_the_caption(tiny: tuple[CLIP, object]) -> None:
    model, tokenizer = tiny
    captions = ["a large white triangle on the left, a small blue triangle at the bottom", "red"]
    found = caption_keywords(model, tokenizer, captions)
    long, short = found.keywords
    assert 1 <= len(long) <= 5 and set(long) <= set(found.layout.words[0])
    assert short == ["red"]
    content = caption_keywords(model, tokenizer, captions, content_words_only=True).keywords[0]
    assert content and not {"a", "on", "the", "at"} & set(content)


def test_content_candidates_leave_stop_words_out(tiny: tuple[CLIP, object]) -> None:
    _, tokenizer = tiny
    layout = token_layout(tokenizer, ["a red circle on the left"])
    every = keyword_candidates(layout)
    content = keyword_candidates(layout, content_words_only=True)
    words = layout.words[0]
    kept = {words[i] for i, ok in zip(layout.word_index[0].tolist(), content[0].tolist()) if ok}
    assert kept == {"red", "circle", "left"} and int(every.sum()) == len(words)


def test_all_positions_vote_where_the_pooled_token_attends(tiny: tuple[CLIP, object]) -> None:
    _, tokenizer = tiny
    layout = token_layout(tokenizer, ["a red circle"])  # start 0, a 1, red 2, circle 3, end 4, padding 5-15
    attention = torch.zeros(1, 2, 16)
    attention[0, :, :5] = torch.tensor([[0.40, 0.10, 0.20, 0.25, 0.05], [0.10, 0.10, 0.35, 0.20, 0.25]])
    # vlviz's filter, two votes per head: a votes circle (.25), red (.20); b red (.35), circle (.20).
    words = keywords_from_attention(attention, layout, per_head=2, keep=2)
    assert words.keywords == [["red", "circle"]] and words.voted(0) == [("red", 2), ("circle", 2)]
    # SIMLA's: a votes start (.40), circle (.25); b red (.35), end (.25). One vote each; summed attention
    # keeps red (.55) and start (.50), and the start token gives no keyword. Padding has no attention: no vote.
    every = keywords_from_attention(attention, layout, per_head=2, keep=2, all_positions=True)
    assert every.candidates[0].tolist() == [True] * 5 + [False] * 11
    assert every.positions[0].nonzero().flatten().tolist() == [0, 2] and every.keywords == [["red"]]
    assert every.voted(0) == [("⟨start⟩", 1), ("red", 1), ("circle", 1), ("⟨end⟩", 1)]
    content = keyword_candidates(layout, content_words_only=True, attended=every.candidates)
    assert content[0, :5].tolist() == [True, False, True, True, True]  # the stop word "a" out; start and end in
    assert "SIMLA" in candidate_rule(all_positions=True) and "vlviz" in candidate_rule()
    assert candidate_rule(True).endswith("stop words left out")


def test_the_vocabulary_puts_caption_words_first_and_ships_concepts() -> None:
    shipped = default_concepts()
    assert len(shipped) >= 200 and {"red", "circle", "cat", "coffee"} <= set(shipped)
    assert all(w == w.strip().lower() and " " not in w for w in shipped)
    vocabulary = concept_vocabulary([["A", "zebu", "on", "the", "grass"], ["zebu", "3"]], defaults=["grass", "tree"])
    assert vocabulary == ["zebu", "grass", "tree"]


def test_concepts_are_ranked_and_marked_in_or_missing() -> None:
    vocabulary = ["cat", "dog", "sofa", "red"]
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.1, 0.7]])
    ranked = rank_concepts(scores, vocabulary, [["a", "Cat"], ["a", "red", "ball"]], top_k=2)
    assert [[(c.word, c.in_caption) for c in row] for row in ranked] == [
        [("cat", True), ("sofa", False)],
        [("dog", False), ("red", True)],
    ]
    assert ranked[0][0].score == pytest.approx(0.9)
    assert mention_matrix([["Dog", "dog"]], vocabulary).tolist() == [[False, True, False, False]]


def test_zero_shot_scores_are_cosines_with_prompts() -> None:
    images = torch.eye(3)[:2]  # two L2-normalised image embeddings
    prompts = {"a photo of cat": torch.tensor([1.0, 0.0, 0.0]), "a photo of dog": torch.tensor([0.6, 0.8, 0.0])}

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.stack([prompts[t] for t in texts])

    scores = zero_shot_concept_scores(images, encode, ["cat", "dog"])
    assert torch.allclose(scores, torch.tensor([[1.0, 0.6], [0.0, 0.8]]))
    with pytest.raises(ValueError, match="needs a \\{\\}"):
        zero_shot_concept_scores(images, encode, ["cat"], template="a photo")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{0} {1}", "2 replacement fields"),  # IndexError before
        ("{} of {x}", "2 replacement fields"),  # KeyError before
        ("{} and {}", "2 replacement fields"),  # IndexError before
        ("a photo of {{}}", r"needs a \{\}"),  # no field at all: every prompt was the same text
        ("{x}", r"has \{x\}; write an empty \{\}"),
        ("a photo of {0}", r"has \{0\}; write an empty \{\}"),
        ("a photo of {!r}", r"has \{!r\}; write an empty \{\}"),
        ("a photo of {:>20}", r"has \{:>20\}; write an empty \{\}"),
        ("a photo of {.__class__}", r"has \{\.__class__\}; write an empty \{\}"),
        ("a photo of {[0]}", r"has \{\[0\]\}; write an empty \{\}"),
        ("a {} photo {", "unbalanced"),
        ("a {} photo }", "unbalanced"),
    ],
)
def test_concept_templates_need_exactly_one_empty_field(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        check_concept_template(template)
    message = str(info.value)
    assert repr(template) in message and repr(keywords.DEFAULT_TEMPLATE) in message  # names it, gives an example
    with pytest.raises(ValueError, match=reason):
        zero_shot_concept_scores(torch.eye(2), lambda texts: torch.eye(2)[: len(texts)], ["cat"], template=template)


def test_concept_template_length_is_bounded() -> None:
    assert MAX_TEMPLATE_CHARS == 200
    fits = "{}" + "x" * (MAX_TEMPLATE_CHARS - 2)
    assert check_concept_template(fits) == fits
    with pytest.raises(ValueError, match=rf"is {MAX_TEMPLATE_CHARS + 1} characters long.*at most {MAX_TEMPLATE_CHARS}"):
        check_concept_template(fits + "x")


def test_good_concept_templates_pass_unchanged() -> None:
    for template in ("a photo of {}", "{}", "{{literal}} braces around a {}", "a {:} photo"):
        assert check_concept_template(template) == template
