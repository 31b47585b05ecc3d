"""BPE pieces merged into words, and the mask of real caption tokens."""

import open_clip

from vlviz.models.tokens import token_layout


def test_pieces_merge_into_words_and_specials_are_masked() -> None:
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    layout = token_layout(tokenizer, ["Tokyo skyscrapers, unbelievable!", "red"])
    assert layout.words == [["tokyo", "skyscrapers", "unbelievable"], ["red"]]
    # <start> tokyo sky scrap ers , unbelievable ! <end>
    assert layout.tokens[0][:9] == ["", "tokyo", "sky", "scrap", "ers", ",", "unbelievable", "!", ""]
    assert layout.word_index[0, :9].tolist() == [-1, 0, 1, 1, 1, -1, 2, -1, -1]
    assert layout.word_mask[0, :9].tolist() == [False, True, True, True, True, True, True, True, False]
    assert layout.word_mask[1].sum() == 1 and layout.word_index[1, 1] == 0
    assert layout.ids.shape == layout.word_mask.shape == layout.word_index.shape == (2, 77)
