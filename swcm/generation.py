"""Batched generation over many inputs, each with its own target language."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .tokenization import generation_kwargs


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    sources: Sequence[str],
    target_langs: Sequence[str | None] | str | None = None,
    *,
    batch_size: int = 16,
    max_source_length: int = 256,
    max_new_tokens: int = 128,
    progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Generate one output per source with `model.generate()`, returned in input order.

    `target_langs` (one code for all, or one per source) selects the forced first token
    (the language tag). Inputs are grouped by target language and sorted by length so
    that batches carry little padding. Extra keyword arguments go to `generate()`
    (num_beams, do_sample, top_k, top_p, temperature, length_penalty, no_repeat_ngram_size…).
    """
    if target_langs is None or isinstance(target_langs, str):
        target_langs = [target_langs] * len(sources)
    if len(target_langs) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(target_langs)} target languages")
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in sources]
    order = sorted(range(len(sources)), key=lambda i: (target_langs[i] or "", -lengths[i]))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and target_langs[batches[-1][0]] == target_langs[i]:
            batches[-1].append(i)
        else:
            batches.append([i])

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(sources)
    bar = tqdm(total=len(sources), desc="generate", unit="seq", disable=not progress)
    try:
        for batch in batches:
            enc = tokenizer(
                [sources[i] for i in batch], return_tensors="pt", padding=True, truncation=True,
                max_length=max_source_length,
            ).to(device)
            enc.pop("token_type_ids", None)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                **generation_kwargs(tokenizer, target_langs[batch[0]]),
                **generate_kwargs,
            )
            if out.shape[0] != len(batch):  # num_return_sequences > 1: keep the best of each
                out = out.view(len(batch), -1, out.shape[-1])[:, 0]
            for i, text in zip(batch, tokenizer.batch_decode(out, skip_special_tokens=True)):
                outputs[i] = text.strip()
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return outputs
