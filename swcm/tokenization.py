"""Language tags on top of the encoder's tokenizer.

One added special token per language, `__zh__`, `__bo__`, … (the M2M-100 convention). The
target language's tag is the forced first decoder token, as in mBART-50: training labels
start with it, and generation forces it with `forced_bos_token_id`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from transformers import PreTrainedModel, PreTrainedTokenizerBase


def language_tag(lang: str) -> str:
    """The tag token of a language code: "bo" → "__bo__"."""
    return f"__{lang}__"


def language_tag_id(tokenizer: PreTrainedTokenizerBase, lang: str) -> int:
    """The id of `lang`'s tag; ValueError when the tokenizer has no such tag."""
    tag = language_tag(lang)
    tag_id = tokenizer.convert_tokens_to_ids(tag)
    if tag_id is None or tag_id == tokenizer.unk_token_id or tag not in tokenizer.get_vocab():
        raise ValueError(f"no language tag {tag} for {lang!r} in the tokenizer; add it with add_language_tags")
    return tag_id


def add_language_tags(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, langs: Iterable[str]
) -> dict[str, int]:
    """Add a tag token for every language in `langs` that lacks one, and grow the model.

    The shared embeddings and the LM head are resized; new rows are drawn from a normal
    distribution with the mean and covariance of the existing rows (transformers'
    `mean_resizing`), so the tags start inside the embedding cloud rather than far from it.
    Records the tags in `model.config.language_tags` and returns {lang: id} for `langs`.
    """
    langs = list(dict.fromkeys(langs))
    vocab = tokenizer.get_vocab()
    new = [language_tag(lang) for lang in langs if language_tag(lang) not in vocab]
    if new:
        add_extra_special_tokens(tokenizer, new)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    ids = {lang: language_tag_id(tokenizer, lang) for lang in langs}
    model.config.language_tags = {**getattr(model.config, "language_tags", {}), **ids}
    return ids


def add_extra_special_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> None:
    """Add `tokens` as special tokens, keeping the ones already there (transformers 5 renamed
    "additional" special tokens to "extra" ones)."""
    if "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters:
        tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_additional_special_tokens=False)
