"""SIMLA's keywords and concepts (Khan et al., ECCV 2022), adapted to a CLIP dual encoder.

Keywords: SIMLA picks a caption's keywords with the text encoder's last-layer [CLS] attention: the
top 4 positions of each head vote, and the 5 positions with the most votes are kept. A CLIP text
tower has no [CLS]; its global embedding is pooled at the end-of-text token (argmax pooling), so
the attention row of that token plays the part (`pooled_attention`). Two deviations from SIMLA:
- SIMLA reads the [CLS] attention of its multimodal pass, whose text tokens have attended to the
  image; a dual encoder's text tower never sees the image, so these keywords are what the caption
  alone makes salient.
- vlviz's candidate filter (`all_positions=False`, the default): only real word tokens vote (not
  start, end, padding or punctuation), so a head's votes are not spent on positions that name
  nothing. `all_positions=True` is SIMLA's vote: every position the pooled token attends to votes
  (kept positions that are not words then give no keyword).
Kept positions are merged into words.

Concepts: the words of a vocabulary (the captions' own words plus `assets/concepts.txt`) that the
model predicts for an image, ranked, each marked as in the caption or missing from it: SIMLA's
pseudo-label idea, where the momentum model recommends keywords the caption left out.

Letters in shape comments: B captions, H heads, T tokens, W words, N images, V vocabulary words.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from open_clip.transformer import ResidualAttentionBlock
from PIL import Image

from vlviz.data.samples import ASSETS_DIR
from vlviz.models.encoding import VLModel, this_thread_only
from vlviz.models.tokens import STOP_WORDS, TokenLayout, token_layout
from vlviz.models.towers import text_tower

PER_HEAD = 4  # SIMLA: the top 4 positions of each head vote
KEEP = 5  # SIMLA: the 5 positions with the most votes are the keywords
CONCEPTS_PATH = ASSETS_DIR / "concepts.txt"
DEFAULT_TEMPLATE = "a photo of {}"
MAX_TEMPLATE_CHARS = 200  # a prompt is a short sentence; CLIP reads at most 77 tokens of it


# --- keyword selection ---------------------------------------------------------------------------
def keyword_votes(attention: torch.Tensor, candidates: torch.Tensor, per_head: int = PER_HEAD) -> torch.Tensor:
    """Votes per position of SIMLA's keyword vote: (B, H, T) attention, (B, T) bool candidates -> (B, T) votes.

    Each head's `per_head` most-attended candidate positions get one vote.
    """
    length = attention.shape[-1]
    scores = attention.float().masked_fill(~candidates[:, None, :], float("-inf"))  # (B, H, T)
    top = scores.topk(min(per_head, length), dim=-1).indices.flatten(1)  # (B, H * per_head)
    # A caption with fewer candidates than `per_head` fills its top-k with non-candidates: they do not vote.
    return scores.new_zeros(scores.shape[0], length).scatter_add_(1, top, candidates.gather(1, top).float())


def most_voted(attention: torch.Tensor, votes: torch.Tensor, keep: int = KEEP) -> torch.Tensor:
    """The `keep` positions with the most votes: (B, H, T) attention, (B, T) votes -> (B, T) bool kept positions.

    Ties in votes go to the position with more attention summed over the heads; a position no head
    voted for is never kept, so short captions keep fewer.
    """
    heads, length = attention.shape[1:]
    # Summed attention is at most H (each row sums to 1), so / (H + 1) orders positions within one vote count.
    rank = (votes + attention.float().sum(1) / (heads + 1)).masked_fill(votes == 0, float("-inf"))  # (B, T)
    chosen = rank.topk(min(keep, length), dim=-1).indices  # (B, keep)
    return torch.zeros_like(votes, dtype=torch.bool).scatter_(1, chosen, True) & (votes > 0)


def select_keywords(
    attention: torch.Tensor, candidates: torch.Tensor, per_head: int = PER_HEAD, keep: int = KEEP
) -> torch.Tensor:
    """SIMLA's keyword vote on an attention row per head: (B, H, T), (B, T) bool -> (B, T) bool kept positions.

    Each head's `per_head` most-attended candidate positions get one vote (`keyword_votes`); the
    `keep` positions with the most votes are kept (`most_voted`).

    Args:
        attention: attention weights from the pooled token to every position, per head.
        candidates: positions that may vote (`keyword_candidates`).
        per_head: votes per head (SIMLA: 4).
        keep: positions kept (SIMLA: 5).
    """
    return most_voted(attention, keyword_votes(attention, candidates, per_head), keep)


def keyword_word_mask(kept: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """Kept token positions (B, T) -> kept words (B, W): a word is a keyword when any of its BPE pieces is kept.

    `word_index` is `TokenLayout.word_index` (-1 outside words); W is one more than its largest entry.
    """
    n_words = int(word_index.max().clamp_min(0)) + 1
    slots = word_index + 1  # slot 0 collects the positions outside words
    merged = kept.new_zeros(kept.shape[0], n_words + 1, dtype=torch.float)
    merged.scatter_reduce_(1, slots, kept.float(), reduce="amax")
    return merged[:, 1:] > 0


def pooled_positions(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B,) the position whose output becomes the global text embedding: end-of-text for CLIP's argmax pooling."""
    _, pool_type, eos_id, has_cls = text_tower(model)
    length = ids.shape[1]
    if has_cls:  # CoCa-style towers append a [CLS] token after the caption
        return torch.full((ids.shape[0],), length, dtype=torch.long, device=ids.device)
    if pool_type == "argmax":
        return ids.argmax(dim=-1)
    if pool_type == "eos" and eos_id is not None:
        return (ids == eos_id).int().argmax(dim=-1)
    if pool_type in ("first", "last"):
        return torch.full((ids.shape[0],), 0 if pool_type == "first" else length - 1, device=ids.device)
    raise ValueError(
        f"The text tower pools with {pool_type!r}: there is no single pooled token to read attention from."
    )


@torch.no_grad()
def pooled_attention(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Last-layer attention per head from the pooled token to every caption position: (B, T) ids -> (B, H, T).

    A forward pre-hook catches the input of the text tower's last block; its attention is then
    re-run with `need_weights=True, average_attn_weights=False` (open_clip runs it without weights)
    under the same mask (causal for CLIP), and the pooled token's row is read.
    """
    transformer, _, _, has_cls = text_tower(model)
    block = transformer.resblocks[-1]
    if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, torch.nn.MultiheadAttention):
        raise ValueError(f"Keyword selection needs torch attention in the last text block, not {type(block).__name__}.")
    caught: dict[str, torch.Tensor | None] = {}

    def catch(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        caught["x"] = args[0]  # grad checkpointing passes (x, None, None, attn_mask) positionally
        caught["mask"] = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)

    handle = block.register_forward_pre_hook(this_thread_only(catch), with_kwargs=True)
    try:
        model.encode_text(ids)
    finally:
        handle.remove()
    x, mask = caught["x"], caught["mask"]
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # (T, B, W) -> (B, T, W)
    y = block.ln_1(x)
    mask = None if mask is None else mask.to(y.dtype)
    _, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False, attn_mask=mask)  # (B, H, L, L)
    row = pooled_positions(model, ids)  # (B,)
    attention = weights[torch.arange(ids.shape[0], device=ids.device), :, row]  # (B, H, L)
    return attention[..., : ids.shape[1]] if has_cls else attention  # the appended [CLS] key is not a caption position


@dataclass(frozen=True)
class CaptionKeywords:
    """Keywords of N captions: the token layout, the vote (candidates, votes, kept positions and words) and
    the attention it read."""

    layout: TokenLayout
    candidates: torch.Tensor  # (N, T) bool, positions that could vote (`keyword_candidates`)
    votes: torch.Tensor  # (N, T) votes per position (`keyword_votes`)
    positions: torch.Tensor  # (N, T) bool, kept token positions
    word_mask: torch.Tensor  # (N, W) bool, kept words (W: the most words of any caption)
    attention: torch.Tensor  # (N, H, T) attention from the pooled token

    @property
    def keywords(self) -> list[list[str]]:
        """Each caption's keywords in caption order."""
        rows = self.word_mask.tolist()
        return [[w for w, kept in zip(words, row) if kept] for words, row in zip(self.layout.words, rows)]

    def voted(self, n: int) -> list[tuple[str, int]]:
        """Caption `n`'s positions that got votes, most votes first (ties in caption order): (token, votes).

        A token is its BPE piece; positions outside the caption's tokens read ⟨start⟩, ⟨end⟩ (the first
        after them) or ⟨padding⟩.
        """
        real = self.layout.word_mask[n].tolist()
        end = max((t for t, is_real in enumerate(real) if is_real), default=0) + 1
        votes = self.votes[n].tolist()

        def token(t: int) -> str:
            if real[t]:
                return self.layout.tokens[n][t]
            return "⟨start⟩" if t == 0 else "⟨end⟩" if t == end else "⟨padding⟩"

        return [(token(t), int(votes[t])) for t in sorted(range(len(votes)), key=lambda t: -votes[t]) if votes[t] > 0]


def keyword_candidates(
    layout: TokenLayout, content_words_only: bool = False, attended: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, T) bool: the positions that may vote for keywords.

    vlviz's candidate filter (`attended=None`): real word tokens, not start, end, padding or
    punctuation. SIMLA's vote (`attended`: (N, T) bool, the positions the pooled token attends to):
    every one of them, start, end and punctuation included (padding the attention mask hides is not).
    `content_words_only` then also leaves stop words out.
    """
    candidates = layout.word_index >= 0 if attended is None else attended.clone()
    if content_words_only:
        longest = max((len(words) for words in layout.words), default=0)
        content = torch.ones(len(layout.words), longest + 1, dtype=torch.bool)  # slot 0: outside words, no stop word
        for n, words in enumerate(layout.words):  # string tests per word; the gather below is batched
            content[n, 1 : len(words) + 1] = torch.tensor([is_concept_word(w) for w in words], dtype=torch.bool)
        candidates &= content.gather(1, layout.word_index + 1)
    return candidates


def candidate_rule(content_words_only: bool = False, all_positions: bool = False) -> str:
    """In words, which positions `keyword_candidates` lets vote."""
    rule = (
        "every position the pooled token attends to (SIMLA's vote: start, end and punctuation too)"
        if all_positions
        else "real word tokens only (vlviz's filter: no start, end or punctuation)"
    )
    return rule + (", stop words left out" if content_words_only else "")


def keywords_from_attention(
    attention: torch.Tensor, layout: TokenLayout, per_head: int = PER_HEAD, keep: int = KEEP,
    content_words_only: bool = False, all_positions: bool = False,
) -> CaptionKeywords:  # fmt: skip
    """SIMLA keywords of the captions in `layout` from their pooled-token attention (N, H, T), on the CPU.

    `all_positions`: every position the pooled token attends to votes (SIMLA), not only real word
    tokens (vlviz's candidate filter, the default); `content_words_only` leaves stop words out too.
    """
    attention = attention.float().cpu()
    attended = attention.amax(1) > 0 if all_positions else None  # (N, T)
    candidates = keyword_candidates(layout, content_words_only, attended)
    votes = keyword_votes(attention, candidates, per_head)  # (N, T)
    positions = most_voted(attention, votes, keep)
    word_mask = keyword_word_mask(positions, layout.word_index)
    return CaptionKeywords(layout, candidates, votes, positions, word_mask, attention)


def caption_keywords(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    captions: Sequence[str],
    per_head: int = PER_HEAD,
    keep: int = KEEP,
    content_words_only: bool = False,
    all_positions: bool = False,
) -> CaptionKeywords:
    """Select SIMLA keywords for `captions` with `model`'s text tower, batched.

    `content_words_only` leaves stop words out of the candidates; `all_positions` lets every
    position the pooled token attends to vote (SIMLA), not only real word tokens (vlviz's default).
    """
    layout = token_layout(tokenizer, list(captions))
    attention = pooled_attention(model, layout.ids.to(next(model.parameters()).device))
    return keywords_from_attention(attention, layout, per_head, keep, content_words_only, all_positions)


# --- concepts ------------------------------------------------------------------------------------
@functools.cache
def default_concepts() -> tuple[str, ...]:
    """The concept list shipped in `assets/concepts.txt` (comments and blank lines skipped)."""
    lines = CONCEPTS_PATH.read_text(encoding="utf-8").splitlines()
    return tuple(dict.fromkeys(line.strip().lower() for line in lines if line.strip() and not line.startswith("#")))


def is_concept_word(word: str) -> bool:
    """Whether a caption word can be a concept: alphabetic, two letters or more, not a stop word."""
    return word.isalpha() and len(word) > 1 and word.lower() not in STOP_WORDS


def concept_vocabulary(caption_words: Sequence[Sequence[str]], defaults: Sequence[str] | None = None) -> list[str]:
    """The captions' concept words (lowercase, first-seen order), then the default concepts not among them."""
    words = (w.lower() for caption in caption_words for w in caption if is_concept_word(w))
    return list(dict.fromkeys([*words, *(default_concepts() if defaults is None else defaults)]))


def mention_matrix(caption_words: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> torch.Tensor:
    """(N, V) bool: which vocabulary words each caption contains (case-insensitive)."""
    index = {word: v for v, word in enumerate(vocabulary)}
    mentioned = torch.zeros(len(caption_words), len(vocabulary), dtype=torch.bool)
    for n, words in enumerate(caption_words):  # string lookups; the tensor work is batched
        columns = [index[w.lower()] for w in words if w.lower() in index]
        mentioned[n, columns] = True
    return mentioned


def check_concept_template(template: str) -> str:
    """Return `template` if it is a prompt with exactly one empty {} for the concept; else raise ValueError.

    `str.format` would otherwise fail mid-run (IndexError, KeyError) or read attributes ({.x}, {[0]}).
    Cheap: the UI calls it before any encoding.
    """
    shown = repr(template if len(template) <= 60 else template[:57] + "...")
    example = f"e.g. {DEFAULT_TEMPLATE!r}"
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(
            f"The concept prompt {shown} is {len(template)} characters long; write at most {MAX_TEMPLATE_CHARS}, "
            f"{example}."
        )
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as exc:  # a lone { or }
        raise ValueError(
            f"The concept prompt {shown} has unbalanced braces ({exc}); write {{{{ or }}}} for a literal brace, "
            f"{example}."
        ) from None
    fields = [field for field in fields if field[0] is not None]
    if not fields:
        raise ValueError(f"The concept prompt {shown} needs a {{}} where the concept goes, {example}.")
    if len(fields) > 1:
        raise ValueError(
            f"The concept prompt {shown} has {len(fields)} replacement fields; it needs exactly one {{}} where the "
            f"concept goes, {example}."
        )
    name, spec, conversion = fields[0]
    if name or spec or conversion:
        written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        raise ValueError(
            f"The concept prompt {shown} has {written}; write an empty {{}} where the concept goes, {example}."
        )
    return template


def zero_shot_concept_scores(
    image_features: torch.Tensor, encode_texts: Callable[[list[str]], torch.Tensor], vocabulary: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
) -> torch.Tensor:  # fmt: skip
    """Cosine of each L2-normalised image embedding (N, D) with each concept's prompt embedding: (N, V).

    `encode_texts` returns L2-normalised text embeddings (e.g. `VLModel.encode_texts`, which caches them).
    """
    check_concept_template(template)
    prompts = encode_texts([template.format(word) for word in vocabulary])  # (V, D)
    return image_features.float() @ prompts.float().to(image_features.device).T


@dataclass(frozen=True)
class ConceptScores:
    """How strongly each image shows each concept word, and where the scores come from."""

    scores: torch.Tensor  # (N, V) on the CPU
    vocabulary: list[str]
    trained_head: bool  # True: the model's trained PSL head (probabilities); False: zero-shot prompts (cosines)


def image_concepts(
    model: VLModel,
    images: Sequence[Image.Image],
    caption_words: Sequence[Sequence[str]],
    template: str = DEFAULT_TEMPLATE,
    defaults: Sequence[str] | None = None,
) -> ConceptScores:
    """The concepts of each image: the trained PSL head's momentum probabilities over its vocabulary when the
    model has one (SIMLA's pseudo-labels, `VLModel.loss_heads`), else zero-shot prompt cosines over
    `concept_vocabulary(caption_words, defaults)`."""
    image_features = model.encode_images(images)
    psl = model.loss_heads.get("psl")
    if psl is not None:
        return ConceptScores(psl.concept_probabilities(image_features).float().cpu(), list(psl.vocabulary), True)
    vocabulary = concept_vocabulary(caption_words, defaults)
    scores = zero_shot_concept_scores(image_features, model.encode_texts, vocabulary, template)
    return ConceptScores(scores.cpu(), vocabulary, False)


@dataclass(frozen=True)
class Concept:
    word: str
    score: float
    in_caption: bool


def rank_concepts(
    scores: torch.Tensor, vocabulary: Sequence[str], caption_words: Sequence[Sequence[str]], top_k: int = 10
) -> list[list[Concept]]:
    """Each image's `top_k` concepts by score (N, V), each marked in the caption or missing from it."""
    mentioned = mention_matrix(caption_words, vocabulary)
    values, order = scores.float().cpu().topk(min(top_k, len(vocabulary)), dim=-1)  # (N, k)
    inside = mentioned.gather(1, order)
    return [
        [Concept(vocabulary[v], s, m) for v, s, m in zip(row, row_scores, row_in)]
        for row, row_scores, row_in in zip(order.tolist(), values.tolist(), inside.tolist())
    ]
