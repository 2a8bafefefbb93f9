"""The flags made from the settings dataclasses give the library's settings back: unset, its
defaults (but for a subcommand's own); set, the value given under the flag's old name."""

import argparse

import pytest

from swcm import cli
from swcm.cli.flags import UsageError, check_at_least, training_config
from swcm.data.noise import NoiseConfig
from swcm.encoders.tiny_encoder import TinyEncoderSettings
from swcm.finetuning import FinetuneSettings
from swcm.pretraining import PretrainSettings
from swcm.settings import settings_for
from swcm.training import TrainingConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for add in cli._SUBCOMMANDS:
        add(sub)
    return parser.parse_args(argv)


def test_unset_training_flags_are_the_loops_defaults_but_for_the_subcommands_own():
    args = parse("finetune", "--task", "mt", "--model", "m", "--train", "t.jsonl", "--out", "o")
    assert training_config(args) == TrainingConfig(out_dir="o", max_steps=2000, lr=5e-4, batch_size=16,
                                                   eval_every=200, metric="rougeL_f")
    args = parse("adapt", "--encoder", "e", "--mono", "bo=bo.txt", "--out", "o")
    assert training_config(args) == TrainingConfig(out_dir="o", max_steps=1000, batch_size=16)


def test_training_flags_set_reach_the_config_under_their_names():
    args = parse("pretrain", "--model", "m", "--mono", "bo=bo.txt", "--out", "o", "--max-steps", "40",
                 "--grad-accum", "2", "--max-tokens", "512", "--no-group-by-length", "--no-progress", "--resume",
                 "--gradient-checkpointing", "--max-grad-norm", "0", "--scheduled-sampling", "none",
                 "--warmup-steps", "3", "--schedule", "cosine", "--mixed-precision", "no", "--seed", "7")
    config = training_config(args, warmup_steps=99, scheduled_sampling="linear")
    assert (config.max_steps, config.grad_accum, config.max_tokens, config.seed) == (40, 2, 512, 7)
    assert not config.group_by_length and not config.progress and config.resume and config.gradient_checkpointing
    assert config.max_grad_norm is None and config.scheduled_sampling is None and config.warmup_steps == 3
    assert (config.schedule, config.mixed_precision) == ("cosine", "no")
    # unset, --warmup-steps and --scheduled-sampling are the subcommand's defaults
    args = parse("pretrain", "--model", "m", "--mono", "bo=bo.txt", "--out", "o")
    config = training_config(args, warmup_steps=99, scheduled_sampling="linear")
    assert (config.warmup_steps, config.scheduled_sampling, config.max_steps, config.batch_size) == (99, "linear", 10000, 8)


def test_pretraining_and_noise_flags_are_their_dataclasses_fields():
    args = parse("pretrain", "--model", "m", "--mono", "bo=bo.txt", "--out", "o")
    assert NoiseConfig(**settings_for(NoiseConfig, vars(args))) == NoiseConfig()
    defaults = {k: v for k, v in settings_for(PretrainSettings, vars(args)).items() if k not in ("mono", "parallel", "langs")}
    assert defaults == {k: getattr(PretrainSettings(), k) for k in defaults}
    args = parse("pretrain", "--model", "m", "--mono", "bo=bo.txt", "--out", "o", "--no-sentence-permutation",
                 "--mask-ratio", "0.2", "--alpha", "0.5", "--on-bad-record", "skip")
    assert NoiseConfig(**settings_for(NoiseConfig, vars(args))) == NoiseConfig(mask_ratio=0.2, permute_sentences=False)
    assert (args.alpha, args.on_bad_record) == (0.5, "skip")


def test_finetune_and_tiny_encoder_flags_are_their_dataclasses_fields():
    args = parse("finetune", "--task", "sum", "--model", "m", "--train", "t.jsonl", "--out", "o", "--max-valid", "0")
    settings = settings_for(FinetuneSettings, vars(args))
    assert settings == {"task": "sum", "max_source_length": 256, "max_target_length": 128, "on_bad_record": "error",
                        "alpha": 1.0, "max_valid_examples": 0}
    with pytest.raises(UsageError, match="--max-valid must be at least 1, got 0"):
        check_at_least(args, {"max_valid_examples": "--max-valid"}, max_valid_examples=1)
    args = parse("tiny-encoder", "--out", "o", "--hidden", "64")
    assert TinyEncoderSettings(**settings_for(TinyEncoderSettings, vars(args))) == TinyEncoderSettings(hidden=64)
