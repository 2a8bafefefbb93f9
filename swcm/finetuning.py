"""Fine-tuning for summarisation, reading comprehension and translation — the shared loop.

Task files are read and validated by `swcm.data.readers`; each record becomes one
token-level example (source → target, the target language's tag first). Training is
`swcm.training.train`; every `eval_every` steps the validation hook generates for the
validation set and scores it (ROUGE-L F and sacrebleu's chrF++, each averaged over languages, and
the validation loss); the chosen one selects the best checkpoint (OUT/best) and drives early stopping.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from .data.examples import ExampleEncoder, pair_separator, truncation_report
from .data.readers import TASK_FIELDS, Problems, TextPair, read_task
from .data.sampling import LanguageBalanced, stratified_sample
from .distributed import split_across_processes
from .metrics import evaluate_predictions
from .generation import generate_texts
from .io import write_json
from .lora import LoraSettings, apply_lora, parameter_counts
from .model_card import FINETUNE_RECORD, write_model_card
from .modeling import SWCMForConditionalGeneration
from .tokenization import add_language_tags, language_tag
from .training import TrainingConfig, TrainingResult, distributed_state, train

EVAL_METRICS = ("rougeL_f", "chrf", "loss")  # what the validation hook returns; `metric` picks one
DEFAULT_METRIC = "rougeL_f"  # the paper's metric for every task selects the best checkpoint


@dataclass
class FinetuneSettings:
    """What fine-tuning adds to the training loop's settings."""

    task: str = "mt"
    max_source_length: int = 256
    max_target_length: int = 128
    field_map: dict[str, str] = field(default_factory=dict)
    on_bad_record: str = "error"
    # languages sampled with p_i ∝ q_i^alpha, q_i a language's share of the training records:
    # 1 reads every record once an epoch; below 1, smaller languages come more often, larger ones less
    alpha: float = 1.0
    max_valid_examples: int | None = 200  # validation generation is the slow part
    # examples per validation batch (loss and decoding); None: the training batch_size, which
    # under a `max_tokens` budget only sizes length groups and is usually far below what fits
    valid_batch_size: int | None = None
    # validation decoding; without max_new_tokens, the model's generation config, which
    # `finetune` sets to max_target_length (one length for training and generation)
    generation: dict = field(default_factory=lambda: {"num_beams": 1})

    def __post_init__(self) -> None:
        if self.task not in TASK_FIELDS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASK_FIELDS)}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


def read_task_pairs(path, tokenizer, settings: FinetuneSettings, problems: Problems | None = None) -> list[TextPair]:
    """The validated records of a task file (reading comprehension joins question and
    context with the tokenizer's own pair separator)."""
    return list(read_task(
        str(path), settings.task, fields=settings.field_map, separator=pair_separator(tokenizer),
        on_bad_record=settings.on_bad_record, problems=problems,
    ))


def encode_records(tokenizer, records: Sequence[TextPair], settings: FinetuneSettings, what: str | None = None) -> list[dict]:
    """Token-level examples {"input_ids", "labels"} for task records. With `what` (e.g.
    "training data"), the examples cut to the length limits are reported per language on
    stderr, as a warning where more than 1 % of a language's examples were cut."""
    # The position table (shared by encoder and decoder) bounds source and target: never ask
    # for more than the tokenizer allows.
    max_source = min(settings.max_source_length, tokenizer.model_max_length)
    max_target = min(settings.max_target_length, tokenizer.model_max_length)
    encoder = ExampleEncoder(tokenizer, max_source, max_target)
    examples = [encoder.encode(r.source_text, r.target_text, r.target_lang) for r in records]
    if what is not None and distributed_state().is_main_process:
        limits = f"{what} (--max-source-length {max_source}, --max-target-length {max_target})"
        for line in truncation_report(encoder.truncation, limits):
            print(line, file=sys.stderr)
    return examples


def by_language_sample(records: Sequence[TextPair], n: int | None, seed: int) -> list[TextPair]:
    """`n` records drawn with `seed`, each target language keeping its share (all when n is None)."""
    return stratified_sample(records, n, seed, key=lambda r: r.target_lang)


def _subset(records: list[TextPair], n: int | None, seed: int, what: str) -> list[TextPair]:
    """`by_language_sample`, saying on stderr (main process) what was kept when it is a subset."""
    kept = by_language_sample(records, n, seed)
    if len(kept) < len(records) and distributed_state().is_main_process:
        langs = Counter(r.target_lang for r in kept)
        print(f"{what}: {len(kept)} of {len(records)} records, drawn with seed {seed}: "
              + ", ".join(f"{lang} {count}" for lang, count in langs.items()), file=sys.stderr)
    return kept


def validation_hook(tokenizer, records: Sequence, settings: FinetuneSettings, batch_size: int = 16, seed: int = 0):
    """An `evaluate(model) -> {"rougeL_f", "chrf", "loss"}` hook over validation records.

    At most `settings.max_valid_examples` records are used, drawn with `seed`, stratified by
    language (not the first N: on a file sorted by language that would be one language).
    ROUGE-L F and chrF++ (sacrebleu's, on the raw text) are scored per target language and
    averaged over languages, so a large language does not drown the others; the loss is the
    mean token cross-entropy.

    Under `accelerate launch` the hook is collective (its `across_processes` attribute says so,
    and `train` calls it on every process): each process computes the loss of every N-th batch
    and decodes every N-th batch (`swcm.distributed.split_across_processes`), and every process
    gets the same metrics, those of one process over all the records. In one process it is an
    ordinary function.
    """
    records = by_language_sample(list(records), settings.max_valid_examples, seed)
    examples = encode_records(tokenizer, records, settings, "validation data")
    collate = DataCollatorForSeq2Seq(tokenizer)

    def evaluate(model) -> dict:
        device = next(model.parameters()).device

        def loss_sum(start: int) -> tuple[float, int]:  # (summed token loss, target tokens) of one batch
            batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
            n = int((batch["labels"] != -100).sum())
            return model(**batch).loss.item() * n, n

        total, count = 0.0, 0
        for batch_total, n in split_across_processes(range(0, len(examples), batch_size), loss_sum):
            total += batch_total  # in batch order, as one process adds them
            count += n
        predictions = generate_texts(
            model, tokenizer, [r.source_text for r in records], [r.target_lang for r in records],
            batch_size=batch_size, max_source_length=settings.max_source_length, progress=False,
            across_processes=True, **settings.generation,
        )
        rows = evaluate_predictions(
            [{"prediction": p, "reference": r.target_text, "lang": r.target_lang} for r, p in zip(records, predictions)],
            reference_field="reference", lang_field="lang",
        )
        means = {key: sum(row[key] for row in rows) / len(rows) for key in ("rougeL_f", "chrf")}
        return {**means, "loss": total / max(count, 1)}

    evaluate.across_processes = True
    return evaluate


def finetune(
    model_dir: str | os.PathLike,
    train_file: str | os.PathLike,
    valid_file: str | os.PathLike | None,
    config: TrainingConfig,
    settings: FinetuneSettings,
    *,
    train_size: int | None = None,
    lora: LoraSettings | None = None,
) -> TrainingResult:
    """Fine-tune the model in `model_dir` on a task file; OUT/best (by `config.metric`) and
    OUT/final load with `from_pretrained`, and so does OUT/averaged with `config.average_last`
    (the mean of the last checkpoints, its validation scores in finetune.json's "averaged"). `train_size` keeps N training records drawn with
    the run's seed, stratified by language (Figure 4's 10K / 20K / 50K). With `lora.lora`,
    LoRA adapters train instead of the whole model (`swcm.lora`), and OUT/best and OUT/final
    are adapter directories over `model_dir`. Each of OUT/best, OUT/final (and OUT/averaged) gets finetune.json
    (the run's data, settings and best validation score) and a model card (README.md,
    `swcm.model_card`)."""
    lora = lora or LoraSettings()
    if config.metric not in EVAL_METRICS:
        raise ValueError(f"unknown metric {config.metric!r}; expected one of {', '.join(EVAL_METRICS)}")
    model = SWCMForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)  # fp32 master weights
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems = Problems()
    train_records = read_task_pairs(train_file, tokenizer, settings, problems)
    train_records = _subset(train_records, train_size, config.seed, f"{train_file} (--train-size)")
    valid_records = read_task_pairs(valid_file, tokenizer, settings, problems) if valid_file else []
    valid_records = _subset(valid_records, settings.max_valid_examples, config.seed, f"{valid_file} (--max-valid)")
    if problems.total:
        print(problems.summary(), file=sys.stderr)
    if not train_records:
        raise ValueError(f"{train_file}: no training records")
    langs = sorted({r.target_lang for r in train_records + valid_records})
    untagged = [lang for lang in langs if language_tag(lang) not in tokenizer.get_vocab()]
    add_language_tags(model, tokenizer, langs)
    if lora.lora:
        if untagged:
            raise ValueError(f"--lora: {model_dir} has no language tag for {', '.join(untagged)}; "
                             "LoRA keeps the base model's vocabulary: build or pretrain with those languages, "
                             "or fine-tune without --lora")
        torch.manual_seed(config.seed)  # the adapters' random halves are the run's seed's
        model = apply_lora(model, lora, model_dir)
        if distributed_state().is_main_process:
            trainable, total = parameter_counts(model)
            print(f"LoRA rank {lora.lora_r}: {trainable:,} of {total:,} parameters trained ({trainable / total:.2%}); "
                  f"in full: {lora.lora_full}", file=sys.stderr)
    valid_batch_size = settings.valid_batch_size or config.batch_size
    evaluate = validation_hook(tokenizer, valid_records, settings, valid_batch_size, config.seed) if valid_records else None
    if evaluate is None:  # nothing to validate on: no evaluation schedule, no early stopping
        config = replace(config, eval_every=None, patience=None)
    examples = encode_records(tokenizer, train_records, settings, "training data")
    if settings.alpha != 1.0:
        examples = LanguageBalanced(examples, [r.target_lang for r in train_records], settings.alpha)
        if distributed_state().is_main_process:
            print(f"training data sampled by language with alpha {settings.alpha:g}: "
                  + ", ".join(f"{lang} {p:.1%}" for lang, p in examples.probs.items()), file=sys.stderr)
    # The saved model generates as long as it was trained to (its start token, then the target).
    model.generation_config.max_length = min(settings.max_target_length, tokenizer.model_max_length) + 1
    torch.manual_seed(config.seed)
    tracked = {"task": settings.task, "model": str(model_dir), "train_file": str(train_file),
               "valid_file": str(valid_file), "train_size": train_size, "finetune": asdict(settings),
               **({"lora": asdict(lora)} if lora.lora else {})}
    result = train(model, tokenizer, examples, config, DataCollatorForSeq2Seq(tokenizer), evaluate=evaluate,
                   settings=tracked)
    if distributed_state().is_main_process:
        record = {**tracked, "training": json.loads(json.dumps(asdict(config), default=str)),
                  "train_records": len(train_records), "langs": langs, "steps": result.step,
                  "metric": config.metric, "best_metric": result.best_metric, "best_step": result.best_step,
                  "mixed_precision": next((r["mixed_precision"] for r in result.history if "mixed_precision" in r), None)}
        if result.averaged_dir is not None:
            record["averaged"] = {"steps": result.averaged_steps, "valid": result.averaged_metrics}
        for directory in (result.final_dir, result.best_dir, result.averaged_dir):
            if directory is not None:
                write_json(directory / FINETUNE_RECORD, record)
                write_model_card(directory)
    distributed_state().wait_for_everyone()
    return result

