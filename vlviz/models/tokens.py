"""Readable tokens: which positions of a tokenised caption are words, and what they say.

CLIP's BPE splits words into pieces ("sky", "scrap", "ers</w>"); views show whole words, so pieces
are merged and every token position is mapped to the word it belongs to. Start, end and padding
positions are not words.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from open_clip.tokenizer import SimpleTokenizer

_PUNCTUATION = set(string.punctuation)
# Words that never make a concept or a keyword worth showing: articles, prepositions, conjunctions,
# pronouns, auxiliaries. The one stop-word list of vlviz.
# fmt: off
STOP_WORDS = frozenset({
    "a", "an", "the", "at", "on", "in", "of", "and", "or", "with", "to", "is", "are", "was", "were", "be",
    "been", "its", "it", "this", "that", "these", "those", "his", "her", "their", "there", "here", "by",
    "for", "from", "as", "into", "onto", "over", "under", "near", "next", "up", "down", "out", "off",
    "some", "many", "two", "three", "one", "has", "have", "had", "very",
})
# fmt: on
SIZE_WORDS = frozenset({"small", "large", "big", "tiny", "little"})  # they name no place of their own in an image


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of N captions with their readable form.

    `word_mask` marks real caption tokens (not start, end or padding): the mask SPARC's loss uses.
    `word_index[n, t]` is the index in `words[n]` of the word that token t belongs to, or -1 for
    start/end/padding and for punctuation.
    """

    ids: torch.Tensor  # (N, T) long
    word_mask: torch.Tensor  # (N, T) bool
    word_index: torch.Tensor  # (N, T) long
    tokens: list[list[str]]  # (N, T) readable piece per position, "" for padding
    words: list[list[str]]  # per caption, its words in order

    @property
    def used_length(self) -> int:
        """Positions up to the last real token of any caption (0 for none): what per-token work needs to cover,
        since a caption is a few tokens of a long context."""
        real = self.word_mask.any(dim=0).nonzero()
        return int(real.max()) + 1 if len(real) else 0


def _special_ids(tokenizer: Callable[..., torch.Tensor]) -> tuple[set[int], int]:
    """The start/end/special token ids and the padding id, for either tokenizer kind."""
    if isinstance(tokenizer, SimpleTokenizer):
        return {tokenizer.sot_token_id, tokenizer.eot_token_id}, 0
    inner = tokenizer.tokenizer  # open_clip's HFTokenizer wraps a transformers tokenizer
    pad = inner.pad_token_id if inner.pad_token_id is not None else 0
    return set(inner.all_special_ids), pad


def real_token_mask(tokenizer: Callable[..., torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: True at real caption tokens, False at start, end, other special and padding ids."""
    special, pad = _special_ids(tokenizer)
    return ~torch.isin(ids, torch.tensor(sorted(special | {pad}), device=ids.device))


def _pieces(tokenizer: Callable[..., torch.Tensor], ids: torch.Tensor) -> list[list[str]]:
    """Per-position token strings, for either tokenizer kind."""
    if isinstance(tokenizer, SimpleTokenizer):
        decoder = tokenizer.decoder
        return [[decoder.get(int(i), "") for i in row] for row in ids.tolist()]
    return [tokenizer.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]


def token_layout(tokenizer: Callable[..., torch.Tensor], captions: Sequence[str]) -> TokenLayout:
    """Tokenise `captions` and merge BPE / sentencepiece pieces into words."""
    ids = tokenizer(list(captions))
    pieces = _pieces(tokenizer, ids)
    word_mask = real_token_mask(tokenizer, ids)
    word_index = torch.full_like(ids, -1)
    tokens: list[list[str]] = []
    words: list[list[str]] = []
    for n, row in enumerate(pieces):  # string work on CPU for display; no tensor math here
        readable, caption_words, current = [], [], ""
        mask_row = word_mask[n].tolist()
        for t, piece in enumerate(row):
            if not mask_row[t]:
                readable.append("")
                current = ""
                continue
            starts = piece.startswith(("▁", "Ġ"))  # sentencepiece / byte-level BPE word starts
            ends = piece.endswith("</w>")
            text = piece.removesuffix("</w>").lstrip("▁Ġ")
            readable.append(text)
            if starts and current:
                current = ""
            if not current:
                caption_words.append(text)
            else:
                caption_words[-1] += text
            current = caption_words[-1]
            word_index[n, t] = len(caption_words) - 1
            if ends:
                current = ""
        tokens.append(readable)
        # Drop words made only of punctuation and renumber the rest.
        keep = [i for i, w in enumerate(caption_words) if w and not set(w) <= _PUNCTUATION]
        remap = torch.full((len(caption_words) + 1,), -1, dtype=torch.long)
        remap[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        word_index[n] = remap[word_index[n]]  # -1 indexes the trailing -1
        words.append([caption_words[i] for i in keep])
    return TokenLayout(ids=ids, word_mask=word_mask, word_index=word_index, tokens=tokens, words=words)


def first_content_word(words: Sequence[str], skip: Collection[str] = STOP_WORDS | SIZE_WORDS) -> int:
    """Index of the first word not in `skip` (compared in lower case): the word worth grounding first; 0 if none.

    By default neither a stop word nor a size: in "a small red circle" it is "red".
    """
    return next((i for i, word in enumerate(words) if word.lower() not in skip), 0)
