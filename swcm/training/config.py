"""The settings of a training run and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..precision import MIXED_PRECISION_CHOICES
from .scheduled_sampling import teacher_forcing_ratio
from .tracking import parse_report_to

SCHEDULES = ("linear", "cosine", "constant")


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
    training stops after `patience` evaluations without improvement (None: never). With
    `average_last` K, the end of training writes OUT/averaged, the mean of the last K checkpoints
    (`swcm.training.averaging`; `keep_last` must keep them and `save_every` write them), scored by
    the evaluate hook when there is one.
    `num_workers` processes look up, finish (the pretraining stream's DAE noise) and collate
    the batches ahead of the loop; 0 does it on the training thread. Which batches come next is
    decided on the main process either way: the batches, and a resumed run, are the same (for a
    collator that draws no random numbers; `DataCollatorForLanguageModeling` masks with each
    worker's own generator).
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
    group_by_length: bool = True  # batches of similar lengths: little padding (see swcm.data.batching.DataCursor)
    max_tokens: int | None = None  # batches by padded tokens per process, not by batch_size examples
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    average_last: int | None = None  # OUT/averaged: the mean of the last N checkpoints (at least 2)
    resume: bool = False
    scheduled_sampling: str | None = None
    ss_floor: float = 0.75
    ss_k: float = 10.0
    eval_every: int | None = None
    metric: str = "loss"
    greater_is_better: bool | None = None  # None: False for metrics named *loss*, else True
    patience: int | None = None
    progress: bool = True
    num_workers: int = 0  # DataLoader worker processes that finish (DAE noise) and collate batches
    # trackers the run reports to (swcm.training.tracking): auto (TensorBoard where installed), all,
    # none, or names among tensorboard, wandb, mlflow, trackio, comma-separated
    report_to: str = "auto"

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "patience", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {getattr(self, name)}")
        if self.average_last is not None:
            self._check_average_last()
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
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
        parse_report_to(self.report_to)  # validates
        if self.greater_is_better is None:
            self.greater_is_better = "loss" not in self.metric.lower()

    def _check_average_last(self) -> None:
        """A one-line ValueError unless the run keeps and writes the `average_last` checkpoints."""
        k = self.average_last
        if k < 2:
            raise ValueError(f"average_last must be at least 2 (checkpoints averaged), got {k}")
        if self.keep_last < k:
            raise ValueError(f"average_last {k} needs keep_last of at least {k} (the checkpoints averaged are "
                             f"those kept), got {self.keep_last}")
        written = -(-self.max_steps // self.save_every)  # every save_every steps, and at the end
        if written < k:
            raise ValueError(f"average_last {k}: {self.max_steps} steps saving every {self.save_every} write only "
                             f"{written} checkpoint(s); lower save_every")


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
    averaged_dir: Path | None = None  # OUT/averaged, with `average_last`
    averaged_steps: list[int] = field(default_factory=list)  # the checkpoints it averages
    averaged_metrics: dict | None = None  # the evaluate hook's scores of OUT/averaged
    history: list[dict] = field(default_factory=list)

