"""The training loop shared by pretraining, fine-tuning and encoder adaptation, on `accelerate`.

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

Batches come from a `torch.utils.data.DataLoader` (`swcm.data.batching`): which examples come
next is decided on the main process, where the data position is kept; `num_workers` worker
processes finish (DAE noise) and collate them ahead of the loop.

On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` (accelerate's
torchrun launcher) runs DDP over gloo; `--cpu` alone would start a single process.

Layout of `config.out_dir` (only the main process writes):

    log.jsonl               one JSON object per logging step: step, loss, lr, tokens_per_s, …
    checkpoints/step-N/     weights (safetensors) + tokenizer + optimizer, scheduler, RNG and
                            data-position files; the last `keep_last` are kept (`checkpoint`)
    best/                   the best model by `config.metric` (only with an evaluate hook)
    final/                  the model at the end of training; `from_pretrained` loads it
    averaged/               with `average_last`: the mean of the last checkpoints (`averaging`)
    tensorboard/            TensorBoard event files, when tensorboard is installed

The pieces: `config` (the settings), `scheduled_sampling` (the two-pass form and the training
forward), `optim` (AdamW and the schedule), `checkpoint` (atomic saves, resume), `averaging`
(the mean of checkpoints), `distributed`
(the accelerator) and `loop` (`train()` and its run state).
"""

from ..data.batching import GROUP_BATCHES, example_length
from .averaging import average_models, last_checkpoints
from .checkpoint import checkpoint_dirs, latest_checkpoint, load_model_weights, missing_state_files
from .config import SCHEDULES, TrainingConfig, TrainingResult
from .distributed import distributed_state
from .loop import train
from .optim import adamw, parameter_groups
from .scheduled_sampling import (
    FORCED_DECODER_INPUTS, TEACHER_FORCING_SCHEDULES, scheduled_sampling_inputs, teacher_forcing_ratio, training_loss,
)

__all__ = [
    "FORCED_DECODER_INPUTS", "GROUP_BATCHES", "SCHEDULES", "TEACHER_FORCING_SCHEDULES", "TrainingConfig", "TrainingResult",
    "adamw", "average_models", "checkpoint_dirs", "distributed_state", "example_length", "last_checkpoints", "latest_checkpoint", "load_model_weights",
    "missing_state_files", "parameter_groups", "scheduled_sampling_inputs", "teacher_forcing_ratio", "train",
    "training_loss",
]
