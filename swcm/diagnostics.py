"""Representation collapse: how alike a model's hidden states are, layer by layer.

An encoder trained for mean-pooled sentence embeddings (e.g. contrastively) may map every
token of its top layers to nearly one vector; a decoder copied from it starts out the same,
and cannot tell its positions apart. The statistic is the mean pairwise cosine similarity of
the hidden states over the real (non-padding) tokens of a few sentences, after each layer:
near 0 for spread-out states, near 1 for collapsed ones.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from .modeling import SWCMForConditionalGeneration
from .resources import udhr


def mean_pairwise_cosine(states: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs i ≠ j of the rows of `states` (N × H, N ≥ 2)."""
    if states.shape[0] < 2:
        raise ValueError(f"need at least 2 hidden states, got {states.shape[0]}")
    unit = torch.nn.functional.normalize(states.float(), dim=-1)
    n = unit.shape[0]
    total = unit.sum(dim=0)
    # Σ_i Σ_j cos(i, j) = |Σ_i u_i|²; remove the n diagonal terms (each 1).
    return float((total @ total - n) / (n * (n - 1)))


def sample_pairs(count: int = 8, split: str = "valid") -> list[tuple[str, str]]:
    """(source, target) texts from the vendored UDHR: Chinese sources, targets cycling through
    the other languages, from units long enough to be sentences."""
    pairs = []
    for unit in udhr(split):
        texts = unit["text"]
        if "zh" not in texts or len(texts["zh"]) < 10:
            continue
        others = sorted(lang for lang in texts if lang != "zh")
        if others:
            pairs.append((texts["zh"], texts[others[len(pairs) % len(others)]]))
        if len(pairs) == count:
            break
    return pairs


@torch.no_grad()
def hidden_state_similarity(
    model: SWCMForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    max_length: int = 64,
) -> dict[str, list[float]]:
    """Mean pairwise cosine of the hidden states after each layer, teacher-forced on `pairs`.

    Encoder layers are measured over the source tokens, decoder layers over the target
    tokens (the decoder inputs: the target shifted right behind the start token).
    Returns {"encoder": [one value per encoder layer], "decoder": [one per decoder layer]}.
    """
    sources, targets = zip(*pairs)
    device = next(model.parameters()).device
    batch = tokenizer(list(sources), text_target=list(targets), max_length=max_length, truncation=True,
                      padding=True, return_tensors="pt").to(device)
    labels = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    target_tokens = (labels != -100).roll(1, dims=1)
    target_tokens[:, 0] = True  # the start token stands where the last label moved out

    decoder_states: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: decoder_states.append(out))
             for layer in model.decoder.layers]
    was_training = model.training
    model.eval()
    try:
        encoder_out = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    output_hidden_states=True, return_dict=True)
        model(attention_mask=batch["attention_mask"], encoder_outputs=encoder_out,
              decoder_input_ids=decoder_input_ids, decoder_attention_mask=target_tokens.long(), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    source_tokens = batch["attention_mask"].bool()
    return {
        "encoder": [mean_pairwise_cosine(h[source_tokens]) for h in encoder_out.hidden_states[1:]],
        "decoder": [mean_pairwise_cosine(h[target_tokens]) for h in decoder_states],
    }


# Above this mean pairwise cosine a layer's token states count as collapsed. multilingual-e5-small
# on the UDHR sample: layers 1-11 at 0.12-0.39, its top layer at 0.77; a decoder copied from its
# first 3 layers learnt faster than one copied from all 12 (docs/ws-on-e5.md).
COLLAPSED = 0.7


def collapsed_top(values: list[float], threshold: float = COLLAPSED) -> int | None:
    """The 0-based index of the lowest layer of the run of top layers whose mean cosine is above
    `threshold`; None when the top layer is not above it."""
    first = len(values)
    while first > 0 and values[first - 1] > threshold:
        first -= 1
    return first if first < len(values) else None


def cut_advice(encoder_values: list[float], threshold: float = COLLAPSED) -> str | None:
    """One line suggesting `--encoder-layers` when the encoder's top layers are collapsed
    (`collapsed_top`), e.g. "encoder layers 10–12 are collapsed (mean cosine 0.91–0.98 > 0.7):
    a decoder copied from them starts collapsed; consider --encoder-layers 9 (or fewer)";
    None when they are not."""
    first = collapsed_top(encoder_values, threshold)
    if first is None:
        return None
    n = len(encoder_values)
    top = encoder_values[first:]
    layers = f"encoder layer {n} is" if first == n - 1 else f"encoder layers {first + 1}–{n} are"
    cosine = f"{top[0]:.2f}" if len(top) == 1 else f"{min(top):.2f}–{max(top):.2f}"
    head = f"{layers} collapsed (mean cosine {cosine} > {threshold}): a decoder copied from {'it' if len(top) == 1 else 'them'} starts collapsed; "
    if first == 0:
        return head + "continued masked-LM training (swcm adapt) may spread them"
    return head + f"consider --encoder-layers {first} (or fewer; on multilingual-e5-small 3 of 12 measured best)"


def similarity_summary(similarity: dict[str, list[float]], shown: int = 6) -> list[str]:
    """One short line per stack: "decoder: L1 0.20 · L6 0.45 · … · L15 0.97", at most `shown`
    layers evenly spaced, the first and the last always among them."""
    lines = []
    for stack, values in similarity.items():
        if not values:
            continue
        count = min(shown, len(values))
        picks = sorted({round(i * (len(values) - 1) / max(count - 1, 1)) for i in range(count)})
        cells = " · ".join(f"L{i + 1} {values[i]:.2f}" for i in picks)
        lines.append(f"{stack}: {cells}")
    return lines
