"""Token-level training examples, the one format pretraining and fine-tuning both produce.

    {"input_ids": <s> source </s>                    (the tokenizer's own format)
     "labels":    [tag(target_lang)] target </s>}    (the tag is the forced first decoder token)

Both are truncated to their maximum length. A cut source keeps its closing </s> (the encoder
reads the tokenizer's own format); a cut target gets no </s>, which would teach the model to
end a text where the length limit happened to fall. The encoder counts, per target language,
the examples it built and those it cut (`truncation`). The model shifts the labels right
behind `decoder_start_token_id` to get the decoder inputs, as BART / mBART do.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ..tokenization import language_tag_id


class ExampleEncoder:
    """Builds `{"input_ids", "labels"}` examples with one tokenizer and fixed maximum lengths.

    `encode(source_text, target_text, target_lang)` tokenises texts; `example(source_ids,
    target_ids, target_lang)` takes token ids without special tokens (the DAE path, whose
    source is noised ids). Language tag ids are looked up once (ValueError for a missing tag).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_source_length: int = 512, max_target_length: int = 512):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no </s> (eos) token")
        # The tokenizer's own single-text format, e.g. <s> … </s>, found once (a placeholder id
        # marks where the text goes): asking the tokenizer per example costs more than the noise.
        self._prefix, self._suffix = special_tokens_around(tokenizer)
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.max_source_ids = max_source_length - len(self._prefix) - len(self._suffix)  # room for the text
        self.max_target_ids = max_target_length - 2  # the tag and </s>
        if self.max_source_ids < 1 or self.max_target_ids < 1:
            raise ValueError(f"max lengths {max_source_length}/{max_target_length} leave no room for text")
        self._tags: dict[str, int] = {}
        # target language -> [examples, sources cut, targets cut, examples cut (either)]
        self.truncation: dict[str, list[int]] = {}

    def tag_id(self, lang: str) -> int:
        """The id of `lang`'s language tag (cached)."""
        if lang not in self._tags:
            self._tags[lang] = language_tag_id(self.tokenizer, lang)
        return self._tags[lang]

    def token_ids(self, text: str | list[str]) -> list[int] | list[list[int]]:
        """`text` (or each of a list of texts, in one batched call) as token ids, without
        special tokens and untruncated."""
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def example(self, source_ids: Sequence[int], target_ids: Sequence[int], target_lang: str) -> dict[str, list[int]]:
        """The example for content ids `source_ids` → `target_ids` in `target_lang`."""
        source_cut, target_cut = len(source_ids) > self.max_source_ids, len(target_ids) > self.max_target_ids
        counts = self.truncation.setdefault(target_lang, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += source_cut
        counts[2] += target_cut
        counts[3] += source_cut or target_cut
        return {
            "input_ids": [*self._prefix, *source_ids[: self.max_source_ids], *self._suffix],
            # a cut target: the limit, then no </s> (the tag and the room </s> would take are text)
            "labels": [self.tag_id(target_lang), *target_ids[: self.max_target_ids + target_cut],
                       *([] if target_cut else [self.eos_id])],
        }

    def encode(self, source_text: str, target_text: str, target_lang: str) -> dict[str, list[int]]:
        """The example for a text pair (translation, summarisation, reading comprehension)."""
        return self.example(self.token_ids(source_text), self.token_ids(target_text), target_lang)


def _template(tokenizer: PreTrainedTokenizerBase, *texts: str) -> tuple[list[int], list[int | None]]:
    """The ids of the tokenizer's own encoding of `texts` (one text or a pair) and, per id, which
    text it belongs to (0, 1, or None for a special token)."""
    if tokenizer.is_fast:
        # From the backend's template: build_inputs_with_special_tokens is gone from fast
        # tokenizers in transformers 5, and generic fast tokenizers never had it in 4.
        encoding = tokenizer(*texts)
        return encoding["input_ids"], encoding.sequence_ids()
    placeholders = [[-1 - i] for i in range(len(texts))]
    ids = tokenizer.build_inputs_with_special_tokens(*placeholders)
    return ids, [-1 - i if i < 0 else None for i in ids]


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text: ([<s>], [</s>])
    for XLM-R, ([[CLS]], [[SEP]]) for BERT."""
    ids, sequence = _template(tokenizer, "a")
    first, last = sequence.index(0), len(sequence) - 1 - sequence[::-1].index(0)
    return ids[:first], ids[last + 1 :]


def pair_separator(tokenizer: PreTrainedTokenizerBase) -> str:
    """The special tokens the tokenizer puts between the two texts of a pair, as text.

    "</s></s>" for XLM-R / RoBERTa, "[SEP]" for BERT: joining question and context with it
    makes the single-text encoding equal the tokenizer's own pair encoding.
    """
    ids, sequence = _template(tokenizer, "a", "b")
    end_of_first = len(sequence) - 1 - sequence[::-1].index(0)
    return "".join(tokenizer.convert_ids_to_tokens(ids[end_of_first + 1 : sequence.index(1)]))


TRUNCATION_WARNING = 0.01  # warn when more than 1 % of a language's examples were cut


def truncation_report(truncation: dict[str, list[int]], what: str) -> list[str]:
    """Lines reporting `ExampleEncoder.truncation` counts: one per language with cut examples,
    "warning: " first where more than 1 % of that language's examples were cut. `what` names
    the data and the length settings, e.g. "training data (--max-source-length 256, ...)"."""
    lines = []
    for lang, (total, sources, targets, cut) in sorted(truncation.items()):
        if not cut:
            continue
        share = cut / total
        prefix = "warning: " if share > TRUNCATION_WARNING else ""
        lines.append(f"{prefix}{what}: {lang}: {sources} of {total} sources and {targets} targets cut to the "
                     f"length limits ({100 * share:.1f}%)")
    return lines
