"""The training loop shared by pretraining and fine-tuning, built on `accelerate`.

`train()` takes any seq2seq model with the Hugging Face forward signature, an iterable of
token-level examples `{"input_ids", "labels"}` and a collator that pads a list of them into
a batch. Pretraining passes the DAE + MT example stream; fine-tuning passes task examples
and an `evaluate(model) -> dict` hook, which enables best-checkpoint selection and early
stopping. The same code runs in one process and under `accelerate launch` (DDP; FSDP and
DeepSpeed are refused, `swcm.distributed`). Data reach the ranks in one of two ways:

- shared (the default; fine-tuning lists): every rank reads the same example sequence and
  keeps its own slice of each global batch, so a run on W processes with batch size B sees
  the examples one process with batch size W·B would;
- sharded (`sharded=True`; the pretraining stream): each rank reads its own share of the
  data, and each rank's data position is checkpointed.

On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` (accelerate's
torchrun launcher) runs DDP over gloo; `--cpu` alone would start a single process.

Layout of `config.out_dir` (only the main process writes):

    log.jsonl               one JSON object per logging step: step, loss, lr, tokens_per_s, …
    checkpoints/step-N/     weights (safetensors) + tokenizer + optimizer, scheduler, RNG and
                            data-position files; the last `keep_last` are kept
    best/                   the best model by `config.metric` (only with an evaluate hook)
    final/                  the model at the end of training; `from_pretrained` loads it
    tensorboard/            TensorBoard event files, when tensorboard is installed

Every checkpoint and model directory is written into a temporary directory beside its
final place, flushed, and renamed, so a kill at any moment leaves the previous checkpoint
complete. Training state is restored with `torch.load(weights_only=True)` only; nothing
is unpickled (accelerate's own `load_state` would unpickle registered objects).
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, is_tensorboard_available, set_seed
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from tqdm.auto import tqdm
from transformers import get_scheduler

from .distributed import process_group_kwargs, refuse_unsupported_parallelism
from .io import atomic_directory, save_tokenizer
from .precision import MIXED_PRECISION_CHOICES, PrecisionChoice, resolve_mixed_precision

SCHEDULES = ("linear", "cosine", "constant")
TEACHER_FORCING_SCHEDULES = ("constant", "linear", "inverse_sigmoid")
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
# Decoder inputs that generation forces: the start token and the target-language tag (the first
# label). Scheduled sampling never replaces them.
FORCED_DECODER_INPUTS = 2
GROUP_BATCHES = 50  # length grouping sorts this many batches' examples at a time
BUFFER_TOKENS_PER_EXAMPLE = 8  # a stream's token-budget buffer is sized for examples this long


@dataclass
class TrainingConfig:
    """Settings of one training run (pretraining or fine-tuning).

    `mixed_precision` "auto" (the default) lets accelerate's configuration decide when it is
    set, else the hardware (`swcm.precision`: bf16 where it is fast, fp32 elsewhere); "no",
    "bf16" and "fp16" are taken as given. The choice is printed and logged with every step.
    `batch_size` is per process and per micro-batch: one optimizer step sees
    batch_size × grad_accum × processes examples, and its loss is the mean over all their
    target tokens (every token weighs alike, however the step is split). With `max_tokens`,
    a micro-batch instead holds as many examples as fit in that many padded positions (its
    longest source or target × its examples), as fairseq's --max-tokens: with
    `group_by_length`, short examples then come many to a batch and long ones few, so every
    step sees about the same number of tokens (with a fixed count, steps of short strings
    would weigh as much as steps of long ones). `schedule` is the learning-rate decay after
    `warmup_steps` of linear warm-up (transformers' schedulers). Scheduled sampling is off
    when `scheduled_sampling` is None; otherwise it names the teacher-forcing schedule
    (see `teacher_forcing_ratio`), which decays from 1.0 to `ss_floor`. With an evaluate hook,
    `eval_every` steps the hook runs, the best model by `metric` is kept in OUT/best, and
    training stops after `patience` evaluations without improvement (None: never).
    """

    out_dir: str | Path
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    label_smoothing: float = 0.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    shuffle: bool = True  # reshuffle random-access data (lists, datasets.Dataset) every epoch
    group_by_length: bool = True  # batches of similar lengths: little padding (see _DataCursor)
    max_tokens: int | None = None  # batches by padded tokens per process, not by batch_size examples
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    resume: bool = False
    scheduled_sampling: str | None = None
    ss_floor: float = 0.75
    ss_k: float = 10.0
    eval_every: int | None = None
    metric: str = "loss"
    greater_is_better: bool | None = None  # None: False for metrics named *loss*, else True
    patience: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "patience", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {self.mixed_precision!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.scheduled_sampling is not None:
            teacher_forcing_ratio(0, 1, self.scheduled_sampling, self.ss_floor, self.ss_k)  # validates
        if self.greater_is_better is None:
            self.greater_is_better = "loss" not in self.metric.lower()


@dataclass
class TrainingResult:
    """What `train()` returns. `history` holds the records written to log.jsonl by this call."""

    step: int
    final_dir: Path
    best_dir: Path | None = None
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    data_exhausted: bool = False
    history: list[dict] = field(default_factory=list)


# --- scheduled sampling (two-pass form) ---------------------------------------------------


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
    `batch["labels"]`. `model` may be wrapped (DDP, FSDP, DeepSpeed): both passes go through
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

    `model` may be wrapped (DDP, FSDP, DeepSpeed); `unwrapped` is the bare model, used for
    the label shift.
    """
    decoder_input_ids = scheduled_sampling_inputs(model, batch, ratio, unwrapped)
    loss = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids,
        labels=batch["labels"], label_smoothing=label_smoothing, skip_logits=True, use_cache=False,
    ).loss  # the head on the labelled positions only, no B×T×V logits
    return loss, decoder_input_ids


# --- optimiser ---------------------------------------------------------------------------


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as transformers' Trainer makes them: weight decay on weight matrices and
    embeddings, none on biases and LayerNorms (`Trainer.get_decay_parameter_names`)."""
    from transformers import Trainer  # a heavy import, needed here only

    # An unbound call: the method reads only the model (building a Trainer for it would not).
    decay = set(Trainer.get_decay_parameter_names(None, model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over `groups`, fused (one kernel for all parameters instead of a loop over
    tensors) where this torch has the kernel for the parameters' device — CUDA, and the CPU
    from torch 2.4 — else torch's default implementation."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except RuntimeError:  # "`fused=True` requires all the params to be … of supported devices"
        return torch.optim.AdamW(groups, lr=lr)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    name = "constant_with_warmup" if config.schedule == "constant" else config.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)


# --- data position -----------------------------------------------------------------------


def example_length(example: dict) -> int:
    """The length batches are grouped by: the longer of source and target (on the demo's
    zh → x data this leaves less padding than their sum)."""
    return max(len(example["input_ids"]), len(example.get("labels", ())))


class _DataCursor:
    """Reads `examples` in global batches, epoch after epoch, and resumes at an exact position.

    Random-access data (lists, `datasets.Dataset`) is read in a seeded order per epoch and
    positioned by (epoch, examples consumed). A stream with `state_dict`/`load_state_dict`
    (the pretraining stream, `datasets.IterableDataset`) is positioned by its own state,
    captured after each batch. Any other iterable is re-read and the consumed examples skipped.
    A one-shot iterator ends training when it is exhausted; re-iterable data starts a new
    epoch (calling `set_epoch` when the data has it).

    With `group_by_length`, batches hold examples of similar length, so little of a batch is
    padding: random-access data in the order of `_length_grouped_order` (mega-batches of
    `GROUP_BATCHES` batches sorted by length, the epoch's batches shuffled), streams through a
    buffer of `_buffer_size` examples cut by length and yielded in a seeded random order; the
    buffered batches not yet yielded are part of the position. With `max_tokens`, batches are
    cut by padded tokens rather than by count (`_cut_batches`); `size` then only sizes the
    mega-batches and buffers.
    """

    def __init__(self, examples: Iterable[dict], seed: int, shuffle: bool, group_by_length: bool = False,
                 max_tokens: int | None = None):
        self.examples = examples
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.max_tokens = max_tokens
        self.lengths: list[int] | None = None
        self.pending: list[list[dict]] = []
        self.random_access = (
            hasattr(examples, "__len__") and hasattr(examples, "__getitem__")
            and not isinstance(examples, torch.utils.data.IterableDataset)
        )
        self.stateful = hasattr(examples, "state_dict") and hasattr(examples, "load_state_dict")
        self.epoch = 0
        self.consumed = 0
        self.stream_state = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "stream": self.stream_state, "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self.stream_state = state["epoch"], state["consumed"], state["stream"]
        self.pending = state.get("pending", [])

    def _epoch_batches(self, size: int) -> list[list[int]]:
        """Random-access data: this epoch's batches, as lists of indices, in reading order."""
        n = len(self.examples)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if (self.group_by_length or self.max_tokens) and self.lengths is None:
            self.lengths = [example_length(self.examples[i]) for i in range(n)]
        if self.shuffle and self.group_by_length:
            return _length_grouped_order(self.lengths, size, generator, self.max_tokens)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        return _cut_batches(order, self.lengths, size, self.max_tokens)

    def _buffer_size(self, size: int) -> int:
        """Examples a stream's length-grouping buffer reads: `GROUP_BATCHES` batches of `size`,
        or of a token budget filled by examples of `BUFFER_TOKENS_PER_EXAMPLE` tokens, if more."""
        return GROUP_BATCHES * max(size, (self.max_tokens or 0) // BUFFER_TOKENS_PER_EXAMPLE)

    def _stream(self) -> Iterator[dict]:
        if self.stateful and self.stream_state is not None:
            self.examples.load_state_dict(copy.deepcopy(self.stream_state))
            return iter(self.examples)
        return islice(iter(self.examples), self.consumed, None)

    def batches(self, size: int) -> Iterator[list[dict]]:
        """Yield lists of up to `size` examples (with `max_tokens`: of up to that many padded
        positions); the last batch of an epoch may be shorter."""
        one_shot = iter(self.examples) is self.examples
        buffered = bool(self.group_by_length or self.max_tokens) and not self.random_access
        while True:
            produced = False
            if hasattr(self.examples, "set_epoch"):
                self.examples.set_epoch(self.epoch)
            if self.random_access:
                seen = 0
                for indices in self._epoch_batches(size):
                    seen += len(indices)
                    if seen <= self.consumed:  # read before a resume
                        continue
                    produced = True
                    self.consumed = seen
                    yield [self.examples[i] for i in indices]
            else:
                stream = self._stream()
                while True:
                    while self.pending:  # the rest of a length-grouped buffer (also after a resume)
                        produced = True
                        yield self.pending.pop(0)
                    if not (batch := list(islice(stream, self._buffer_size(size) if buffered else size))):
                        break
                    produced = True
                    self.consumed += len(batch)
                    if self.stateful:
                        self.stream_state = copy.deepcopy(self.examples.state_dict())
                    if buffered:
                        self.pending = _buffered_batches(batch, size, self.seed + self.epoch + self.consumed,
                                                         self.group_by_length, self.max_tokens)
                    else:
                        yield batch
            if one_shot or (not produced and self.consumed == 0):  # empty data: no endless loop
                return
            self.epoch, self.consumed, self.stream_state = self.epoch + 1, 0, None


def _cut_batches(indices: list[int], lengths: list[int] | None, size: int, max_tokens: int | None) -> list[list[int]]:
    """`indices` cut, in order, into runs of `size`, or with `max_tokens` into the longest runs
    whose padded size (longest member × members) fits in `max_tokens` (one example at least)."""
    if not max_tokens:
        return [indices[i : i + size] for i in range(0, len(indices), size)]
    batches, current, longest = [], [], 0
    for i in indices:
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    return batches + [current] if current else batches


def _length_grouped_order(lengths: list[int], size: int, generator: torch.Generator,
                          max_tokens: int | None = None) -> list[list[int]]:
    """A seeded epoch of batches (lists of indices) of similar length: the indices are
    shuffled, cut into mega-batches of `GROUP_BATCHES` batches (of `size` examples, or of the
    examples that `max_tokens` holds at the mean length, if more), each sorted by length and cut
    into batches (`_cut_batches`), and the batches of the whole epoch shuffled (as in
    fairseq), so that consecutive steps do not walk from long to short examples, as reading
    sorted mega-batches in order (transformers' grouping) does. The batch holding the longest
    example comes first (a batch too large for memory fails at once); a short last batch of a
    count-cut epoch stays last, so every other batch is full."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    mega = size * GROUP_BATCHES
    if max_tokens and lengths:  # GROUP_BATCHES batches of the budget's size, whatever batch_size says
        mega = max(mega, GROUP_BATCHES * max_tokens * len(lengths) // sum(lengths))
    batches = []
    for start in range(0, len(perm), mega):
        batches += _cut_batches(sorted(perm[start : start + mega], key=lengths.__getitem__), lengths, size, max_tokens)
    last = [batches.pop()] if not max_tokens and batches and len(batches[-1]) < size else []
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches + last


def _buffered_batches(examples: list[dict], size: int, seed: int, group_by_length: bool,
                      max_tokens: int | None) -> list[list[dict]]:
    """A stream's buffer of `examples` (sorted by length when grouping) cut into batches
    (`_cut_batches`), in a random order (for `seed`)."""
    lengths = [example_length(e) for e in examples]
    order = sorted(range(len(examples)), key=lengths.__getitem__) if group_by_length else list(range(len(examples)))
    batches = _cut_batches(order, lengths, size, max_tokens)
    shuffled = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
    return [[examples[i] for i in batches[b]] for b in shuffled]


def _padding(batch: dict, seq2seq: bool) -> torch.Tensor:
    """(padded positions, all positions) of a batch: source positions the attention mask rules
    out, and for seq2seq batches target positions labelled −100."""
    padded, total = (batch["attention_mask"] == 0).sum(), batch["attention_mask"].numel()
    if seq2seq:
        padded, total = padded + (batch["labels"] == -100).sum(), total + batch["labels"].numel()
    return torch.stack([padded, torch.as_tensor(total, device=padded.device)])


def _local_batches(
    cursor: _DataCursor, collator: Callable, batch_size: int, accelerator: Accelerator, sharded: bool
) -> Iterator[dict]:
    """Collated batches for this rank, on device.

    Shared data (every rank reads the same examples): this rank's strided slice of each global
    batch; a short global batch at the end of an epoch is used when every rank gets at least
    one example, and skipped otherwise (all ranks see the same global batch, so they agree).
    Sharded data (each rank reads its own share): whole batches of this rank's examples.
    """
    world, rank = (1, 0) if sharded else (accelerator.num_processes, accelerator.process_index)
    for examples in cursor.batches(batch_size * world):  # with max_tokens: max_tokens × world positions
        if len(examples) < world:
            continue
        batch = collator(examples[rank::world])
        yield {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


# --- checkpoints -------------------------------------------------------------------------


def missing_state_files(checkpoint: str | Path) -> list[Path]:
    """The training-state files a checkpoint directory lacks (empty: it can be resumed)."""
    return [Path(checkpoint) / name for name in _Run.STATE_FILES if not (Path(checkpoint) / name).is_file()]


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first (temporary dirs are ignored)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under OUT/checkpoints, or None."""
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def load_model_weights(model: nn.Module, directory: str | Path) -> None:
    """Load safetensors weights written by `save_pretrained` (one file or shards) into `model`.

    Keys that `save_pretrained` leaves out because they share storage with a saved tensor
    (tied embeddings) may be missing; anything else missing or unexpected is an error.
    """
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(directory / name))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    current = model.state_dict()
    missing = [k for k in missing if current[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class _TrainerState:
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


class _Run:
    """The pieces of one training run that checkpoints capture and restore."""

    def __init__(self, accelerator, model, tokenizer, optimizer, scheduler, cursor, config):
        self.accelerator, self.model, self.tokenizer = accelerator, model, tokenizer
        self.optimizer, self.scheduler, self.cursor, self.config = optimizer, scheduler, cursor, config
        self.state = _TrainerState()
        self.out = Path(config.out_dir)

    def save_model(self, directory: Path, extra: Callable[[Path], None] | None = None) -> None:
        """Write model (+ tokenizer, + `extra` files) atomically; collective, main process writes."""
        weights = self.accelerator.get_state_dict(self.model)  # gathers sharded weights on every rank
        if self.accelerator.is_main_process:
            with atomic_directory(directory) as tmp:
                self.accelerator.unwrap_model(self.model).save_pretrained(tmp, state_dict=weights, safe_serialization=True)
                if self.tokenizer is not None:
                    save_tokenizer(self.tokenizer, tmp)
                if extra is not None:
                    extra(tmp)
        self.accelerator.wait_for_everyone()

    def _state_dict_options(self) -> StateDictOptions:
        # FSDP shards the optimizer state: gather it whole (onto the main process, on the CPU)
        # to save it, and hand it out from there to load it. DDP and one process hold it whole.
        if self.accelerator.distributed_type == DistributedType.FSDP:
            return StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=True)
        return StateDictOptions()

    def optimizer_state(self) -> dict:
        """The optimizer state keyed by parameter name (torch's distributed state-dict API:
        one format for one process, DDP and FSDP); collective, complete on the main process."""
        return get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=self._state_dict_options())

    def load_optimizer_state(self, path: Path) -> None:
        options = self._state_dict_options()
        state = _load(path) if self.accelerator.is_main_process or not options.broadcast_from_rank0 else {}
        set_optimizer_state_dict(self.model, self.optimizer.optimizer, state, options=options)

    def save_checkpoint(self) -> Path:
        # One entry per rank, in rank order: RNG streams differ, and so does the data position
        # when each rank reads its own shard.
        rng = gather_object([_rng_state()])
        data = gather_object([self.cursor.state_dict()])
        optimizer_state = self.optimizer_state()

        def training_files(tmp: Path) -> None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.accelerator.scaler is not None:
                torch.save(self.accelerator.scaler.state_dict(), tmp / "scaler.pt")
            torch.save(rng, tmp / "rng.pt")
            torch.save(data, tmp / "data.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(asdict(self.state)), encoding="utf-8")

        directory = self.out / "checkpoints" / f"step-{self.state.step}"
        self.save_model(directory, training_files)
        if self.accelerator.is_main_process:
            for old in checkpoint_dirs(self.out)[: -self.config.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return directory

    # What `restore` reads besides the weights (scaler.pt, for fp16 only, is optional).
    STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng.pt", "data.pt")

    def restore(self, directory: Path) -> None:
        """Restore everything but the weights (loaded before `prepare`) from a checkpoint."""
        # Our own loading, not accelerate's load_state: that restores RNG states (and registered
        # objects) with a full unpickle; every file here loads with torch.load(weights_only=True).
        self.load_optimizer_state(directory / "optimizer.pt")
        self.scheduler.load_state_dict(_load(directory / "scheduler.pt"))
        if self.accelerator.scaler is not None and (directory / "scaler.pt").exists():
            self.accelerator.scaler.load_state_dict(_load(directory / "scaler.pt"))
        self.state = _TrainerState(**json.loads((directory / "trainer_state.json").read_text(encoding="utf-8")))
        rng, data = _load(directory / "rng.pt"), _load(directory / "data.pt")
        if len(rng) != self.accelerator.num_processes:
            raise ValueError(f"{directory}: saved by {len(rng)} processes, resumed on {self.accelerator.num_processes}")
        _set_rng_state(rng[self.accelerator.process_index])
        self.cursor.load_state_dict(data[self.accelerator.process_index])


# --- the loop ----------------------------------------------------------------------------


def _accelerator(config: TrainingConfig) -> tuple[Accelerator, PrecisionChoice]:
    precision = resolve_mixed_precision(config.mixed_precision)
    if precision.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("fp16 mixed precision needs a GPU; use bf16 on CPU")
    state = AcceleratorState._shared_state
    # Several runs in one process (tests, experiment grids) may differ in precision; accelerate
    # keeps its state per process, so a single-process run starts from a clean one.
    if state and state.get("_mixed_precision") != precision.mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    log_with = "tensorboard" if is_tensorboard_available() else None
    # Without an accelerator device, accelerate treats a torchrun-style launch (what
    # `accelerate launch --multi_gpu` does) as distributed only when told to use the CPU:
    # then it is DDP over gloo, and a single process is unaffected.
    on_cpu = not _has_accelerator_device()
    distributed_state()  # the process group, with its timeout, unless something asked for the rank before
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision.mixed_precision, log_with=log_with,
                              project_dir=str(config.out_dir))
    return accelerator, precision


def distributed_state() -> PartialState:
    """This process's place in the launch (`.process_index`, `.num_processes`), set up as
    `train()` sets it up. Call this, not a bare `PartialState()`, before `train()` when you
    need the rank (e.g. to build a sharded stream): accelerate fixes its state on first use."""
    return PartialState(cpu=not _has_accelerator_device(), **process_group_kwargs())


def _has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _rewrite_log(path: Path, upto_step: int) -> None:
    """Drop log records after `upto_step`: a resumed run re-does those steps."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= upto_step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def train(
    model: nn.Module,
    tokenizer,
    examples: Iterable[dict],
    config: TrainingConfig,
    collator: Callable[[list[dict]], dict],
    evaluate: Callable[[nn.Module], dict] | None = None,
    *,
    sharded: bool = False,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
) -> TrainingResult:
    """Train `model` in place on `examples` for `config.max_steps` optimizer steps; its weights
    are made fp32 first (master weights, whatever they were stored in).

    `examples` yields token-level examples; `collator` pads a list of them into a batch with
    `input_ids`, `attention_mask` and `labels` (−100 padding). `evaluate(model) -> dict`, when
    given, runs on the main process every `eval_every` steps and at the end (model in eval
    mode, no gradient); its `config.metric` entry selects OUT/best and drives early stopping.
    With `config.resume` the run continues from the latest complete checkpoint in OUT (or
    starts fresh when there is none); without it, an OUT that already holds checkpoints is an
    error. Training also ends early when one-shot data runs out. Returns a `TrainingResult`;
    the final weights are in OUT/final (model + tokenizer).

    Under several processes, by default every rank reads the same `examples` and keeps its
    slice of each global batch. `sharded=True` says that `examples` is already this process's
    own share (e.g. a `PretrainingStream` built with this rank and world size): each rank then
    uses all of its examples, and its own data position is checkpointed.

    `loss_fn(model, batch) -> loss` replaces the seq2seq loss for models of another kind (e.g.
    a masked LM, whose batches carry their own `labels`); scheduled sampling does not apply.
    """
    out = Path(config.out_dir)
    resume_from = latest_checkpoint(out) if config.resume else None
    if not config.resume and checkpoint_dirs(out):
        raise ValueError(f"{out} already holds checkpoints; resume them or choose another output directory")
    if evaluate is not None and config.eval_every is None and config.patience is not None:
        raise ValueError("patience needs eval_every")
    refuse_unsupported_parallelism()
    accelerator, precision = _accelerator(config)
    refuse_unsupported_parallelism(accelerator.distributed_type)
    accelerator.print(f"mixed precision: {precision.mixed_precision} ({precision.reason})", file=sys.stderr)
    accelerator.gradient_accumulation_steps = config.grad_accum  # for accumulate() and DeepSpeed's engine
    set_seed(config.seed, device_specific=True)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "checkpoints").glob(".step-*"):  # a save interrupted by a kill
            shutil.rmtree(stale, ignore_errors=True)

    model.float()  # fp32 master weights, whatever dtype they were stored in; autocast computes in `precision`
    if resume_from is not None:
        load_model_weights(model, resume_from)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # The optimizer is built on the prepared model: its parameters on their device (fused AdamW
    # wants them there), wrapped or sharded as they will train.
    model = accelerator.prepare(model)
    unwrapped = accelerator.unwrap_model(model)
    optimizer = accelerator.prepare(adamw(parameter_groups(unwrapped, config.weight_decay), config.lr))
    scheduler = _scheduler(optimizer, config)  # stepped once per optimizer step, on every rank
    if accelerator.gradient_accumulation_steps != config.grad_accum:  # a DeepSpeed config set its own
        raise ValueError(f"the DeepSpeed configuration accumulates {accelerator.gradient_accumulation_steps} micro-batches "
                         f"but grad_accum is {config.grad_accum}; set one value in both")
    world = 1 if sharded else accelerator.num_processes
    cursor = _DataCursor(examples, config.seed, config.shuffle, config.group_by_length,
                         config.max_tokens and config.max_tokens * world)
    run = _Run(accelerator, model, tokenizer, optimizer, scheduler, cursor, config)
    if resume_from is not None:
        run.restore(resume_from)
    state = run.state

    log_path = out / "log.jsonl"
    if accelerator.is_main_process:
        if resume_from is None:
            log_path.write_text("", encoding="utf-8")
        else:
            _rewrite_log(log_path, state.step)
    if accelerator.log_with:
        accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in asdict(config).items()})

    result = TrainingResult(step=state.step, final_dir=out / "final")
    if state.best_step is not None:
        result.best_dir, result.best_metric, result.best_step = out / "best", state.best_metric, state.best_step

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            result.history.append(record)
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def run_evaluation() -> bool:
        """Evaluate, keep the best model; True when early stopping says stop."""
        metrics = [None]
        if accelerator.is_main_process:  # the others wait for its metrics, as long as SWCM_DIST_TIMEOUT allows
            unwrapped.eval()
            with torch.no_grad():
                metrics = [dict(evaluate(unwrapped))]
            unwrapped.train()
        broadcast_object_list(metrics)
        metrics = metrics[0]
        if config.metric not in metrics:
            raise ValueError(f"the evaluate hook returned {sorted(metrics)}, without the metric {config.metric!r}")
        log({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}})
        value = float(metrics[config.metric])
        better = state.best_metric is None or (value > state.best_metric if config.greater_is_better else value < state.best_metric)
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            run.save_model(out / "best")
            result.best_dir, result.best_metric, result.best_step = out / "best", value, state.step
        else:
            state.evals_without_improvement += 1
        return config.patience is not None and state.evals_without_improvement >= config.patience

    batches = _local_batches(cursor, collator, config.batch_size, accelerator, sharded)
    bar = tqdm(total=config.max_steps, initial=state.step, desc="train", unit="step",
               disable=not (config.progress and accelerator.is_main_process))
    loss_sum = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    target_tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # summed over ranks
    padding = torch.zeros(2, dtype=torch.long, device=accelerator.device)  # padded positions, all positions
    window_steps, window_time = 0, 0.0
    last_evaluated = last_saved = None
    model.train()
    while state.step < config.max_steps:
        started = time.perf_counter()
        ratio = 1.0
        if config.scheduled_sampling is not None:
            ratio = teacher_forcing_ratio(state.step, config.max_steps, config.scheduled_sampling, config.ss_floor, config.ss_k)
        micro_batches = list(islice(batches, config.grad_accum))
        have_data = len(micro_batches) == config.grad_accum
        if sharded and accelerator.num_processes > 1:
            # Ranks reading their own shards may run out at different steps: stop together.
            have_data = accelerator.reduce(torch.tensor(int(have_data), device=accelerator.device), "sum").item() == accelerator.num_processes
        if not have_data:
            result.data_exhausted = True
            break
        # The step's loss is the mean over every target token of all its micro-batches on all
        # ranks, so that W processes × `grad_accum` micro-batches of B train as one batch of
        # W·`grad_accum`·B would. Each micro-batch's summed loss is divided by the step's token
        # count, times what the averaging undoes: DDP/FSDP average gradients over the W ranks,
        # and accelerator.backward (DeepSpeed's engine likewise) divides by `grad_accum`.
        counts = [(batch["labels"] != -100).sum() for batch in micro_batches]
        step_tokens = torch.stack(counts).sum()
        if accelerator.num_processes > 1:
            step_tokens = accelerator.reduce(step_tokens, "sum")
        scale = accelerator.num_processes * config.grad_accum / step_tokens.clamp(min=1)
        for batch, count in zip(micro_batches, counts):
            # accelerate's accumulate() skips the gradient all-reduce on all but the last
            # micro-batch (DDP), or leaves accumulation to DeepSpeed's engine.
            with accelerator.accumulate(model):
                if loss_fn is None:
                    loss, _ = training_loss(model, batch, ratio, config.label_smoothing, unwrapped)
                else:
                    loss = loss_fn(model, batch)
                # the mean over the micro-batch's target tokens, as a sum; a micro-batch without
                # any (possible in adapt's MLM windows) has a NaN mean and adds nothing: zero loss,
                # zero gradient (it still runs, so that DDP's ranks stay in step)
                loss = torch.where(count > 0, loss * count, 0.0)
                accelerator.backward(loss * scale)
            loss_sum += loss.detach()
            tokens += batch["attention_mask"].sum() + count
            padding += _padding(batch, seq2seq=loss_fn is None)
        target_tokens += step_tokens
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with the optimizer steps")
        grad_norm = None
        if config.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the schedule waits too
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window_steps += 1
        window_time += time.perf_counter() - started
        bar.update(1)
        at_end = state.step == config.max_steps

        if state.step % config.log_every == 0 or at_end:
            # token-weighted over the window and every rank
            mean_loss = (accelerator.reduce(loss_sum, "sum") / target_tokens.clamp(min=1)).item()
            seconds = accelerator.reduce(torch.tensor(window_time, device=accelerator.device), "mean").item()
            padded, positions = accelerator.reduce(padding, "sum").tolist()
            record = {"step": state.step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": accelerator.reduce(tokens, "sum").item() / max(seconds, 1e-9),
                      "padding_share": padded / max(positions, 1),
                      "epoch": cursor.epoch, "mixed_precision": precision.mixed_precision}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if config.scheduled_sampling is not None:
                record["teacher_forcing_ratio"] = ratio
            log(record)
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
            loss_sum.zero_()
            tokens.zero_()
            target_tokens.zero_()
            padding.zero_()
            window_steps, window_time = 0, 0.0

        stop = False
        if evaluate is not None and (at_end or (config.eval_every is not None and state.step % config.eval_every == 0)):
            stop = run_evaluation()
            last_evaluated = state.step
        if state.step % config.save_every == 0 or at_end or stop:
            run.save_checkpoint()
            last_saved = state.step
        if stop:
            result.stopped_early = True
            break
    bar.close()

    if result.data_exhausted and state.step > 0:
        # One-shot data ran out before max_steps: finish as at the last step.
        if evaluate is not None and last_evaluated != state.step:
            run_evaluation()
        if last_saved != state.step:
            run.save_checkpoint()
    run.save_model(result.final_dir)
    result.step = state.step
    for tracker in accelerator.trackers:
        # Not accelerator.end_training(): it also destroys the process group, and a launched
        # process may train again (pretrain, then fine-tune).
        tracker.finish()
    # Hand the caller its model as it came: no mixed-precision forward wrapper, no checkpointing.
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if config.gradient_checkpointing:
        unwrapped.gradient_checkpointing_disable()
    return result
