"""Padding token-level examples into a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def _pad(rows: Sequence[Sequence[int]], value: int, multiple: int | None) -> torch.Tensor:
    length = max(len(r) for r in rows)
    if multiple:
        length = -(-length // multiple) * multiple
    return torch.tensor([[*r, *[value] * (length - len(r))] for r in rows], dtype=torch.long)


class Seq2SeqCollator:
    """Pads `{"input_ids", "labels"}` examples on the right into a batch of LongTensors.

    Returns {"input_ids" (pad id), "attention_mask" (1 on tokens, 0 on padding), "labels"
    (-100 on padding, which the loss ignores)}. With `pad_to_multiple_of`, both lengths are
    rounded up to a multiple of it (tensor-core friendly shapes).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None, label_pad_token_id: int = -100):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        self.pad_token_id = tokenizer.pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        inputs = [e["input_ids"] for e in examples]
        return {
            "input_ids": _pad(inputs, self.pad_token_id, self.pad_to_multiple_of),
            "attention_mask": _pad([[1] * len(i) for i in inputs], 0, self.pad_to_multiple_of),
            "labels": _pad([e["labels"] for e in examples], self.label_pad_token_id, self.pad_to_multiple_of),
        }
