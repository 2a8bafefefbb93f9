"""Language tags on top of the encoder's tokenizer.

One added special token per language, `__zh__`, `__bo__`, … (the M2M-100 convention). The
target language's tag is the forced first decoder token, as in mBART-50: training labels
start with it, and generation forces it with `forced_bos_token_id`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
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

    The shared embeddings and the LM head are resized. Each new tag's embedding row, and its
    LM-head row (weight and bias) when the head is not tied, is a draw from a normal
    distribution with the mean and the full covariance of the existing rows
    (`sample_like_rows`): the tags start inside the embedding cloud and as far from one another
    as ordinary tokens are, so that the target-language signal exists from the first step.
    (transformers' `mean_resizing` scales the covariance by 1e-9, which makes all tags one
    point.) Draws come from torch's global generator: seed it for a reproducible model.
    Records the tags in `model.config.language_tags` and returns {lang: id} for `langs`.
    """
    langs = list(dict.fromkeys(langs))
    vocab = tokenizer.get_vocab()
    new = [language_tag(lang) for lang in langs if language_tag(lang) not in vocab]
    if new:
        add_extra_special_tokens(tokenizer, new)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below
    if new:
        new_ids = tokenizer.convert_tokens_to_ids(new)
        embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
        _init_rows(embeddings.weight, None, new_ids)
        if head is not None and head.weight is not embeddings.weight:
            _init_rows(head.weight, getattr(head, "bias", None), new_ids)
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


def sample_like_rows(rows: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` draws from N(mean, covariance) of the rows of `rows` (m × d), as an n × d tensor.

    Drawn as mean + zᵀ(rows − mean)/√(m − 1) with z ~ N(0, I_m), which has exactly that
    covariance without forming the d × d matrix (cheap for a 250k-row vocabulary).
    """
    rows = rows.detach().double()
    centered = rows - rows.mean(0)
    z = torch.randn(n, rows.shape[0], dtype=torch.float64, generator=generator, device=rows.device)
    return rows.mean(0) + z @ centered / max(rows.shape[0] - 1, 1) ** 0.5


@torch.no_grad()
def _init_rows(weight: torch.Tensor, bias: torch.Tensor | None, new_ids: list[int]) -> None:
    """Set rows `new_ids` of a (V × d) weight and its bias from the other rows' distribution."""
    old = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    old[new_ids] = False
    rows = weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)
    drawn = sample_like_rows(rows[old], len(new_ids)).to(weight.dtype)
    weight[new_ids] = drawn[:, : weight.shape[1]]
    if bias is not None:
        bias[new_ids] = drawn[:, -1]
