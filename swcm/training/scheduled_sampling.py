"""Scheduled sampling in its two-pass form, and the training forward that uses it."""

from __future__ import annotations

import math

import torch
from torch import nn

TEACHER_FORCING_SCHEDULES = ("constant", "linear", "inverse_sigmoid")
# Decoder inputs that generation forces: the start token and the target-language tag (the first
# label). Scheduled sampling never replaces them.
FORCED_DECODER_INPUTS = 2


def teacher_forcing_ratio(
    step: int, total: int, schedule: str = "constant", floor: float = 1.0, k: float = 10.0
) -> float:
    """Probability of feeding the gold token at `step` of `total`, decaying from 1.0 to `floor`.

    - "constant": `floor` throughout (floor 1.0 is plain teacher forcing).
    - "linear": 1.0 at step 0, straight down to `floor` at `total`.
    - "inverse_sigmoid": Bengio et al.'s k/(k + exp(i/k)) is a logistic decay in i; here its
      midpoint is half of training and `k` its steepness, rescaled to be exactly 1.0 at step 0
      and `floor` at `total`, so the curve does not depend on the run length.
    """
    if schedule not in TEACHER_FORCING_SCHEDULES:
        raise ValueError(f"scheduled sampling must be one of {', '.join(TEACHER_FORCING_SCHEDULES)}, got {schedule!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"the teacher-forcing floor must be in [0, 1], got {floor}")
    if k <= 0:
        raise ValueError(f"the inverse-sigmoid steepness k must be positive, got {k}")
    x = min(max(step / max(total, 1), 0.0), 1.0)
    if schedule == "constant":
        return floor
    if schedule == "linear":
        return 1.0 - (1.0 - floor) * x

    def logistic(t: float) -> float:
        return 1.0 / (1.0 + math.exp(k * (t - 0.5)))

    decay = (logistic(x) - logistic(1.0)) / (logistic(0.0) - logistic(1.0))
    return floor + (1.0 - floor) * decay


def scheduled_sampling_inputs(model: nn.Module, batch: dict, ratio: float, unwrapped: nn.Module | None = None) -> torch.Tensor:
    """Decoder inputs for the second pass of two-pass scheduled sampling.

    The gold decoder inputs are the labels shifted right behind the start token. When
    `ratio` < 1 a first, teacher-forced pass without gradient (eval mode, so no dropout) gives
    the model's argmax predictions; each gold input is then replaced, with probability
    1 − ratio, by the prediction made at the previous position (the model's guess for that
    very token). Never replaced: the first `FORCED_DECODER_INPUTS` inputs — the start token
    and the first label, the target-language tag, both forced at inference — and positions
    past the end of a target (labels −100, pad inputs). Returns a LongTensor shaped like
    `batch["labels"]`. `model` may be wrapped (DDP): both passes go through
    it, since a sharded model's bare module cannot run alone; `unwrapped` is the bare model,
    for the label shift.
    """
    labels = batch["labels"]
    gold = (unwrapped or model).prepare_decoder_input_ids_from_labels(labels)
    if ratio >= 1.0:
        return gold
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                decoder_input_ids=gold, use_cache=False,
            ).logits
    finally:
        model.train(was_training)
    predicted = gold.clone()
    predicted[:, 1:] = logits[:, :-1].argmax(-1)
    # Input t carries label t-1: replace it only where that label is a real target token.
    replace = torch.rand(gold.shape, device=gold.device) < (1.0 - ratio)
    # A swapped tag would teach the model to ignore the tag, i.e. to answer in the wrong language.
    replace[:, :FORCED_DECODER_INPUTS] = False
    replace[:, 1:] &= labels[:, :-1] != -100
    return torch.where(replace, predicted, gold)


def training_loss(
    model: nn.Module, batch: dict, ratio: float = 1.0, label_smoothing: float = 0.0, unwrapped: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward: (loss against the gold labels, decoder inputs actually fed).

    `model` may be wrapped (DDP); `unwrapped` is the bare model, used for
    the label shift.
    """
    decoder_input_ids = scheduled_sampling_inputs(model, batch, ratio, unwrapped)
    loss = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids,
        labels=batch["labels"], label_smoothing=label_smoothing, skip_logits=True, use_cache=False,
    ).loss  # the head on the labelled positions only, no B×T×V logits
    return loss, decoder_input_ids

