"""mBART-style denoising noise on token ids: sentence permutation, text infilling, token deletion.

Pure functions on lists of token ids. Each draws only from the `numpy.random.Generator` it is
given (an int seed is accepted too), so the same generator state gives the same output. The
behaviour follows fairseq's `DenoisingDataset` as mBART configures it (Liu et al., 2020):
sentences are shuffled, then spans with Poisson(λ = 3.5) lengths are replaced by one mask
token each until 35 % of the tokens are covered; a zero-length span inserts a mask.

The special tokens that frame a sequence (<s>, </s>, <pad>, language tags: `protected_ids`)
are never masked, deleted or moved. <unk> is not one of them: it stands for text the tokenizer
could not spell and is noised like any other token, so that a document full of <unk> still has
35 % of its tokens masked.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

# Sentence-final punctuation by language. Kazakh and Mongolian are written in more than one
# script (Arabic and Cyrillic in Kazakhstan and China; Cyrillic and traditional Mongolian), so
# they get the marks of each. Any other language gets every mark: a language the tool has
# never heard of still has its sentences found.
_LATIN_LIKE = ".?!"
SENTENCE_ENDS = {
    "zh": "。！？",
    "bo": "།༎༑",  # shad, double shad (after a section), rin chen spungs shad
    "ug": _LATIN_LIKE + "؟",
    "kk": _LATIN_LIKE + "؟",
    "mn": _LATIN_LIKE + "᠃",
    "en": _LATIN_LIKE,
}
ALL_SENTENCE_ENDS = "".join(dict.fromkeys("".join(SENTENCE_ENDS.values())))


def sentence_end_chars(lang: str | None = None) -> str:
    """The characters that end a sentence in `lang` ("zh-Hans" and "kk_Arab" count as zh, kk).

    Languages without an entry in `SENTENCE_ENDS` (and `lang=None`) get every known mark.
    """
    if lang is None:
        return ALL_SENTENCE_ENDS
    primary = lang.replace("_", "-").split("-")[0].lower()
    return SENTENCE_ENDS.get(primary, ALL_SENTENCE_ENDS)


def sentence_end_ids(tokenizer: PreTrainedTokenizerBase, lang: str | None = None) -> frozenset[int]:
    """Ids of the tokenizer's pieces that END with a sentence-final mark of `lang`.

    SentencePiece merges punctuation into pieces such as "。", "▁." or "་།"; any piece whose
    last character is one of `sentence_end_chars(lang)` ends a sentence. Special tokens never do.
    """
    chars = set(sentence_end_chars(lang))
    special = set(tokenizer.all_special_tokens)
    return frozenset(
        i for piece, i in tokenizer.get_vocab().items() if piece and piece[-1] in chars and piece not in special
    )


def protected_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The ids noise never touches: the special tokens that frame a sequence (<s>, </s>, <pad>,
    [CLS], [SEP], language tags). <unk> and <mask> stand for text when they occur in a document
    and are noised like it."""
    return frozenset(tokenizer.all_special_ids) - {tokenizer.unk_token_id, tokenizer.mask_token_id}


@dataclass(frozen=True)
class NoiseConfig:
    """The DAE noise; defaults are mBART's.

    mask_ratio: share of (non-special) tokens covered by text-infilling spans.
    poisson_lambda: mean span length.
    permute_sentences: shuffle the sentences first.
    deletion_ratio: share of tokens deleted after infilling (BART's token deletion; off by default).
    """

    mask_ratio: float = 0.35
    poisson_lambda: float = 3.5
    permute_sentences: bool = True
    deletion_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if not self.poisson_lambda > 0:
            raise ValueError(f"poisson_lambda must be > 0, got {self.poisson_lambda}")
        if not 0.0 <= self.deletion_ratio < 1.0:
            raise ValueError(f"deletion_ratio must be in [0, 1), got {self.deletion_ratio}")


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sentence_permutation(
    ids: Sequence[int],
    sentence_end_ids: Collection[int],
    rng: np.random.Generator | int | None = None,
    special_ids: Collection[int] = (),
) -> list[int]:
    """Split `ids` after each run of sentence-end tokens and shuffle the sentences.

    Text after the last sentence end is a sentence of its own. Special tokens at the very
    start and end (e.g. <s> … </s>) stay where they are. Returns a new list with the same
    multiset of ids; fewer than two sentences come back unchanged (and draw nothing from rng).
    """
    ids = list(ids)
    start, end = 0, len(ids)
    while start < end and ids[start] in special_ids:
        start += 1
    while end > start and ids[end - 1] in special_ids:
        end -= 1
    sentences, begin = [], start
    for i in range(start, end):
        if ids[i] in sentence_end_ids and (i + 1 == end or ids[i + 1] not in sentence_end_ids):
            sentences.append(ids[begin : i + 1])
            begin = i + 1
    if begin < end:
        sentences.append(ids[begin:end])
    if len(sentences) < 2:
        return ids
    order = _rng(rng).permutation(len(sentences))
    return ids[:start] + [t for j in order for t in sentences[j]] + ids[end:]


def _span_lengths(total: int, poisson_lambda: float, rng: np.random.Generator) -> list[int]:
    """Poisson span lengths drawn until they cover `total` tokens; the last one is cut to fit."""
    lengths: list[int] = []
    covered = 0
    while covered < total:
        batch = rng.poisson(poisson_lambda, size=max(8, int(2 * (total - covered) / poisson_lambda) + 1))
        for length in batch.tolist():
            lengths.append(min(length, total - covered))
            covered += lengths[-1]
            if covered == total:
                break
    return lengths


def text_infilling(
    ids: Sequence[int],
    mask_id: int,
    ratio: float = 0.35,
    poisson_lambda: float = 3.5,
    rng: np.random.Generator | int | None = None,
    special_ids: Collection[int] = (),
) -> list[int]:
    """Replace random spans covering round(ratio · n) of the n non-special tokens by one mask each.

    Span lengths are Poisson(`poisson_lambda`), drawn until they cover the target; a span of
    length 0 inserts a mask without removing anything. The spans and the kept tokens are
    interleaved in a uniformly random order, so spans never overlap and the coverage is exact.
    Special tokens are never masked: a span that would cross one is split around it (one mask
    on each side). Kept tokens keep their order. Returns a new list.
    """
    ids = list(ids)
    maskable = [i for i, t in enumerate(ids) if t not in special_ids]
    n_masked = int(round(len(maskable) * ratio))
    if n_masked == 0:
        return ids
    rng = _rng(rng)
    lengths = _span_lengths(n_masked, poisson_lambda, rng)
    n_kept = len(maskable) - n_masked
    is_span = np.zeros(n_kept + len(lengths), dtype=bool)
    is_span[rng.choice(len(is_span), size=len(lengths), replace=False)] = True

    span_of = [-1] * len(ids)  # which span masks each position (-1: kept)
    inserts: dict[int, int] = {}  # position → zero-length spans inserted before it
    p, spans = 0, iter(enumerate(lengths))  # p walks over the maskable positions
    for slot_is_span in is_span.tolist():
        if not slot_is_span:
            p += 1
            continue
        span, length = next(spans)
        if length == 0:
            at = maskable[p] if p < len(maskable) else maskable[-1] + 1
            inserts[at] = inserts.get(at, 0) + 1
        for q in range(p, p + length):
            span_of[maskable[q]] = span
        p += length

    out: list[int] = []
    previous = -1
    for i, (token, span) in enumerate(zip(ids, span_of)):
        if i in inserts:
            out.extend([mask_id] * inserts[i])
        if span < 0:
            out.append(token)
        elif span != previous:  # one mask for each span (or each part of a span split by a special)
            out.append(mask_id)
        previous = span
    out.extend([mask_id] * inserts.get(len(ids), 0))
    return out


def token_deletion(
    ids: Sequence[int],
    ratio: float,
    rng: np.random.Generator | int | None = None,
    special_ids: Collection[int] = (),
) -> list[int]:
    """Delete round(ratio · n) random non-special tokens; the rest keep their order."""
    ids = list(ids)
    deletable = [i for i, t in enumerate(ids) if t not in special_ids]
    n_deleted = int(round(len(deletable) * ratio))
    if n_deleted == 0:
        return ids
    gone = {deletable[j] for j in _rng(rng).choice(len(deletable), size=n_deleted, replace=False).tolist()}
    return [t for i, t in enumerate(ids) if i not in gone]


def truncate(ids: Sequence[int], max_length: int, special_ids: Collection[int] = ()) -> list[int]:
    """Cut `ids` to `max_length`, keeping its trailing special tokens (e.g. </s>) at the end."""
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    tail = 0
    while tail < min(len(ids), max_length) and ids[len(ids) - 1 - tail] in special_ids:
        tail += 1
    return ids[: max_length - tail] + ids[len(ids) - tail :]


def add_noise(
    ids: Sequence[int],
    config: NoiseConfig,
    rng: np.random.Generator | int | None = None,
    *,
    mask_id: int,
    sentence_end_ids: Collection[int] = (),
    special_ids: Collection[int] = (),
    max_length: int | None = None,
) -> list[int]:
    """The DAE input for `ids`: sentence permutation, then text infilling, then token deletion.

    Each step runs only when enabled in `config`. Inserted masks are never deleted. The result
    is cut to `max_length` tokens (trailing special tokens kept) when that is given.
    """
    rng = _rng(rng)
    special_ids = frozenset(special_ids)
    ids = list(ids)
    if config.permute_sentences and sentence_end_ids:
        ids = sentence_permutation(ids, sentence_end_ids, rng, special_ids)
    if config.mask_ratio > 0:
        ids = text_infilling(ids, mask_id, config.mask_ratio, config.poisson_lambda, rng, special_ids)
    if config.deletion_ratio > 0:
        ids = token_deletion(ids, config.deletion_ratio, rng, special_ids | {mask_id})
    if max_length is not None:
        ids = truncate(ids, max_length, special_ids)
    return ids
