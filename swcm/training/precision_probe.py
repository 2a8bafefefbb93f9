"""`--mixed-precision auto` on a CPU: the run's own training step, timed in bf16 and in fp32.

The step probe is `swcm.precision.choose_by_step_probe`; this module gives it the run's step:
forward and backward of the run's loss on the run's first batches, read from a throwaway
cursor over the same data (a stream is put back where it was; a one-shot iterator, which cannot
be, is not probed), collated by the run's collator.
The optimizer step is left out (its fp32 master weights cost the same in either precision),
so is scheduled sampling's first pass. Nothing of the run changes: no weight is updated, the
gradients are cleared, and torch's random state is restored (dropout draws from it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from itertools import islice

import torch
from torch import nn

from ..data.batching import DataCursor
from ..precision import PrecisionChoice, choose_by_step_probe, training_attention
from .config import TrainingConfig
from .scheduled_sampling import training_loss

PROBE_BATCHES = 2  # with length grouping the first batch holds the longest example, the next a random length


def probe_batches(examples: Iterable[dict], config: TrainingConfig, collator: Callable[[list[dict]], dict],
                  count: int = PROBE_BATCHES) -> list[dict]:
    """The first `count` batches the run will read (one process's view), collated; a stream with
    a position (`state_dict`/`load_state_dict`) is put back where it was, so that the run reads
    the same examples."""
    cursor = DataCursor(examples, config.seed, config.shuffle, config.group_by_length, config.max_tokens)
    saved = examples.state_dict() if cursor.stateful else None
    try:
        return [collator(examples) for examples in islice(cursor.batches(config.batch_size), count)]
    finally:
        if saved is not None:
            examples.load_state_dict(saved)


def step_probe(model: nn.Module, examples: Iterable[dict], config: TrainingConfig,
               collator: Callable[[list[dict]], dict],
               loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None) -> Callable[[], PrecisionChoice]:
    """A `step_probe` for `swcm.precision.resolve_mixed_precision`: times forward and backward of
    `model` (fp32 weights, on the CPU) on the run's first batches (`probe_batches`) with the
    run's loss (`loss_fn`, or the seq2seq `training_loss`) and returns the faster precision,
    cached per machine and per the model's and the run's batch shape. Nothing is read or run
    until it is called."""
    batches: list[dict] = []

    def time_step(dtype: torch.dtype) -> float:
        if not batches:  # read on the first call: a cached verdict reads nothing
            batches.extend(probe_batches(examples, config, collator))
        autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        start = time.perf_counter()
        for batch in batches:
            with autocast, training_attention("cpu", dtype):
                loss = loss_fn(model, batch) if loss_fn is not None else training_loss(
                    model, batch, label_smoothing=config.label_smoothing)[0]
            loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def probe() -> PrecisionChoice:
        parameters = sum(p.numel() for p in model.parameters())
        budget = f"{config.max_tokens} tokens" if config.max_tokens else f"{config.batch_size} examples"
        shape = (f"{type(model).__name__} of {parameters:,} parameters, {'its own loss' if loss_fn else 'seq2seq'}, "
                 f"batches of {budget}")
        rng, was_training = torch.get_rng_state(), model.training
        model.train()
        try:
            return choose_by_step_probe(time_step, shape)
        finally:
            torch.set_rng_state(rng)
            model.train(was_training)

    return probe
