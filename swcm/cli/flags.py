"""Flags made from the settings dataclasses, and the checks the subcommands share.

A setting is declared once, as a dataclass field: its name, type and default. `add_settings`
turns chosen fields into flags (`max_steps` → `--max-steps MAX_STEPS`, of the field's type and
default; a bool that defaults to False → `--name`, to True → `--no-name`), and the parsed
namespace holds them under the field names, so that `settings_for(cls, vars(args))` gives them
back to the dataclass. Only the help text, and a subcommand's own default where it differs
from the library's, are written here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence

from ..settings import settings_for


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def add_settings(group, cls, flags: Mapping[str, str], *, defaults: Mapping[str, object] = {},
                 choices: Mapping[str, Sequence] = {}, names: Mapping[str, str] = {}) -> None:
    """Add a flag to `group` (a parser or argument group) for each field of the dataclass `cls`
    named in `flags`, in that order, with `flags[name]` as its help (`%(default)s` names the default).

    `defaults` replaces a field's default for this subcommand (None: the handler decides, and
    the help says what); `choices` restricts values; `names` gives a flag another name than the
    field's (the namespace still holds the field's name).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, help in flags.items():
        field = fields[name]
        kind = _flag_type(hints[name])
        if kind is bool:
            flag = names.get(name) or ("--no-" if field.default else "--") + name.replace("_", "-")
            group.add_argument(flag, dest=name, action="store_false" if field.default else "store_true", help=help)
            continue
        flag = names.get(name) or "--" + name.replace("_", "-")
        default = defaults.get(name, field.default)
        if default is dataclasses.MISSING:
            default = None
        group.add_argument(flag, dest=name, type=None if kind is str else kind, default=default,
                           choices=choices.get(name), help=help,
                           metavar=flag.lstrip("-").replace("-", "_").upper() if name in names else None)


def _flag_type(annotation) -> type:
    """The type a flag parses to: int, float, str or bool, from a field's annotation (`X | None` → X)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if annotation not in (int, float, str, bool):
        raise TypeError(f"no flag for a setting of type {annotation!r}")
    return annotation


# The training loop's settings (swcm.training.TrainingConfig) that every training subcommand
# takes, in --help order. {warmup} and {scheduled_sampling} name the subcommand's defaults.
TRAINING_FLAGS = {
    "max_steps": "optimizer steps (default %(default)s)",
    "batch_size": "examples per process per micro-batch (default %(default)s)",
    "max_tokens": "batch by padded tokens instead: as many examples per process per micro-batch as fit in N "
    "positions (longest source or target × examples), so steps of short and of long examples weigh alike; "
    "replaces --batch-size",
    "grad_accum": "micro-batches per optimizer step (default %(default)s)",
    "lr": "peak learning rate (AdamW; default %(default)s)",
    "weight_decay": "AdamW weight decay (default %(default)s)",
    "warmup_steps": "linear learning-rate warm-up (default {warmup})",
    "schedule": "learning-rate decay after warm-up: linear (default) | cosine | constant",
    "max_grad_norm": "gradient clipping (default %(default)s; 0: off)",
    "label_smoothing": "label smoothing of the cross-entropy (default %(default)s)",
    "mixed_precision": "auto (default): accelerate's configuration when set, else bf16 where the hardware runs it "
    "fast (bf16 GPUs, CPUs with AMX/AVX512-BF16) and fp32 elsewhere | no | bf16 | fp16 (GPU only)",
    "gradient_checkpointing": "recompute activations in the backward pass instead of keeping them (less memory)",
    "group_by_length": "batch examples in plain random order (default: batches of similar lengths, little padding)",
    "scheduled_sampling": "teacher-forcing schedule: constant | linear | inverse_sigmoid | none "
    "(default {scheduled_sampling})",
    "ss_floor": "lowest teacher-forcing ratio (default %(default)s)",
    "ss_k": "inverse_sigmoid steepness (default %(default)s)",
    "num_workers": "DataLoader worker processes that apply the DAE noise and collate batches ahead of the "
    "loop (default %(default)s: in the training process; the data position resumes exactly either way)",
    "seed": "random seed (default %(default)s)",
    "report_to": "experiment trackers, comma-separated: tensorboard, wandb, mlflow, trackio; all (those installed); "
    "none; auto (default: tensorboard when installed). Each writes under --out, offline (docs/tracking.md)",
    "log_every": "write log.jsonl every N steps (default %(default)s)",
    "save_every": "checkpoint every N steps and at the end (default %(default)s)",
    "keep_last": "checkpoints kept (default %(default)s)",
    "average_last": "at the end also write OUT/averaged, the mean of the weights of the last N checkpoints "
    "(needs --keep-last N or more), scored on the validation data where there is some",
    "resume": "continue from the latest checkpoint in --out",
    "progress": "no progress bar",
}


def add_training_args(p, *, max_steps: int, lr: float, batch_size: int, warmup: str = "0",
                      scheduled_sampling: str = "none") -> None:
    """The training loop's flags, for adapt, pretrain and finetune, with the subcommand's
    `max_steps`, `lr` and `batch_size`. `warmup` and `scheduled_sampling` name its defaults in
    the help; `training_config` applies them."""
    from ..precision import MIXED_PRECISION_CHOICES
    from ..training import TrainingConfig

    helps = {name: help.format(warmup=warmup, scheduled_sampling=scheduled_sampling)
             for name, help in TRAINING_FLAGS.items()}
    add_settings(p.add_argument_group("training"), TrainingConfig, helps,
                 defaults={"max_steps": max_steps, "lr": lr, "batch_size": batch_size, "warmup_steps": None,
                           "scheduled_sampling": None},
                 choices={"mixed_precision": MIXED_PRECISION_CHOICES})


def training_config(args, warmup_steps: int = 0, scheduled_sampling: str | None = None, **extra):
    """The `TrainingConfig` of the parsed flags: --out, the loop's flags (--warmup-steps and
    --scheduled-sampling, when not given, the subcommand's `warmup_steps` and
    `scheduled_sampling`; "none" and a --max-grad-norm of 0 turn them off), and `extra` over all."""
    from ..training import TrainingConfig

    settings = settings_for(TrainingConfig, vars(args))
    if settings["warmup_steps"] is None:
        settings["warmup_steps"] = warmup_steps
    if settings["scheduled_sampling"] is None:
        settings["scheduled_sampling"] = scheduled_sampling
    if settings["scheduled_sampling"] == "none":
        settings["scheduled_sampling"] = None
    settings["max_grad_norm"] = settings["max_grad_norm"] or None
    return TrainingConfig(out_dir=args.out, **{**settings, **extra})


def add_overwrite(p, *, replaces: bool = False) -> None:
    """--overwrite, for a command that writes an output directory (`replaces`: as a whole, atomically)."""
    what = "it is replaced" if replaces else "files are written into it"
    p.add_argument("--overwrite", action="store_true",
                   help="write the output even where a file, or a non-empty directory that this command did not "
                   f"write, is in the way (a file is deleted; a directory is taken over and {what})")


def check_resume(args) -> None:
    """--resume needs a checkpoint in --out (as transformers' Trainer insists), with whole weights."""
    from ..io import check_safetensors, weight_files
    from ..training import latest_checkpoint, missing_state_files

    if not args.resume:
        return
    checkpoint = latest_checkpoint(args.out)
    if checkpoint is None:
        raise UsageError(f"{args.out}: no checkpoint to resume from (--resume); drop --resume to start a new run")
    missing = missing_state_files(checkpoint)
    if missing:
        raise FileNotFoundError(f"{missing[0]}: missing; the checkpoint is incomplete and cannot be resumed")
    for file in weight_files(checkpoint):
        check_safetensors(file)


def language_list(text: str | None, flag: str = "--langs") -> list[str]:
    """Comma-separated language codes of a flag, each checked (UsageError naming the flag)."""
    from ..data.readers import check_language

    try:
        return [check_language(code) for code in (text or "").split(",") if code]
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None


def key_values(items: list[str], flag: str, example: str) -> dict[str, str]:
    """Repeated `flag` KEY=VALUE arguments as a dict; UsageError naming a malformed one."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} {item!r}: expected {example}")
        pairs[key] = value
    return pairs


def field_map(items: list[str]) -> dict[str, str]:
    """--field NAME=FIELD flags as {task field: JSON key}."""
    return key_values(items, "--field", "NAME=FIELD, e.g. document=article")


# What a malformed record does, for every subcommand that reads data files.
ON_BAD_RECORD_HELP = ("a malformed record: error (default) stops with its file and line; skip leaves it out, "
                      "counted on stderr")


def add_field_flag(p) -> None:
    """--field NAME=FIELD: task files whose fields have other names."""
    p.add_argument("--field", action="append", default=[], metavar="NAME=FIELD",
                   help="read a task field from another JSON key, e.g. --field document=article")


def check_at_least(args, names: Mapping[str, str] = {}, **minimums: int) -> None:
    """UsageError naming the flag when an integer flag given is below its minimum (`minimums`:
    {setting: lowest value}; `names`: flags named otherwise than their setting, as for `add_settings`)."""
    for dest, low in minimums.items():
        value = getattr(args, dest)
        if value is not None and value < low:
            flag = names.get(dest) or "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} must be at least {low}, got {value}")

