"""Pretraining: DAE on monolingual text + MT on parallel pairs, through the shared loop.

`pretrain()` is what `swcm pretrain` runs: load a built model, add a language tag for every
language in the data, build this process's share of the pretraining stream
(`swcm.data.PretrainingStream`: language-balanced sampling, mBART noise, both MT directions)
and train with `swcm.training.train`. Under `accelerate launch` every rank builds its own
stream over a disjoint part of the data, and its data position goes into each checkpoint.
The language census (one tokenisation pass over the corpus) is computed once, by the main
process, and kept in OUT/census.json: other ranks and later starts (`--resume`) read it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from .data.census_cache import CENSUS_FILE, cached_languages
from .data.examples import truncation_report
from .data.noise import NoiseConfig
from .data.pretraining import PretrainingStream
from .data.readers import Problems, parse_source_spec, read_records, stream_key
from .modeling import SWCMForConditionalGeneration
from .tokenization import add_language_tags
from .training import TrainingConfig, TrainingResult, distributed_state, train

MAX_LENGTH = 512
# The paper pretrains with scheduled sampling (teacher forcing decaying from 1.0 to a floor) and
# a learning-rate warm-up; these are pretraining's defaults wherever a setting leaves them out.
SCHEDULED_SAMPLING = "linear"
WARMUP_SHARE = 0.05


def default_warmup_steps(max_steps: int) -> int:
    """Pretraining's warm-up when none is given: 5 % of the run (at least one step)."""
    return max(1, round(WARMUP_SHARE * max_steps))


@dataclass
class PretrainSettings:
    """What pretraining adds to the training loop's settings.

    mono / parallel: source specs as `--mono` / `--parallel` take them ("bo=bo.txt",
    "mono.jsonl", "zh-bo=pairs.tsv", "pairs.jsonl"; files, globs or directories).
    langs: the allowed language codes (None: any well-formed code). alpha: the language
    sampling exponent. mt_ratio: the share of MT examples when there are parallel data.
    max_source_length / max_target_length: tokens, special tokens included (None: the
    tokenizer's limit, at most 512).
    """

    mono: Sequence[str] = ()
    parallel: Sequence[str] = ()
    langs: Sequence[str] | None = None
    alpha: float = 0.3
    mt_ratio: float = 0.1
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    max_source_length: int | None = None
    max_target_length: int | None = None
    on_bad_record: str = "error"


def data_languages(settings: PretrainSettings, census_cache: str | os.PathLike | None = None) -> list[str]:
    """Every language code in the data, sorted: from LANG=PATH / SRC-TGT=PATH specs directly,
    and for JSONL sources from a census file over the same files when `census_cache` names one
    (`swcm.data.census_cache`), else by reading their records (bad records are left to the
    stream to report)."""
    sources = {"dae": [parse_source_spec(spec, "mono", settings.langs) for spec in settings.mono],
               "mt": [parse_source_spec(spec, "parallel", settings.langs) for spec in settings.parallel]}
    cached = None
    if census_cache is not None and Path(census_cache).is_file():
        cached = cached_languages(census_cache, sources, settings.langs, settings.on_bad_record)
    found: set[str] = set(cached or ())
    for source in sources["dae"] + sources["mt"]:
        if source.langs is not None:
            found.update(source.langs)
        elif cached is None:
            for record in read_records(source, langs=settings.langs, on_bad_record="skip", problems=Problems()):
                found.update(stream_key(record))
    return sorted(found)


def pretraining_stream(tokenizer: PreTrainedTokenizerBase, settings: PretrainSettings, seed: int = 0,
                       census_cache: str | os.PathLike | None = None) -> PretrainingStream:
    """This process's `PretrainingStream` (its rank's share of the data) for `settings`, its
    census kept in / read from `census_cache` when given."""
    state = distributed_state()
    limit = min(tokenizer.model_max_length, MAX_LENGTH)
    return PretrainingStream(
        tokenizer, settings.mono, settings.parallel, noise=settings.noise, alpha=settings.alpha,
        mt_fraction=settings.mt_ratio if settings.parallel else 0.0,
        # Explicit lengths are capped too: positions past the table cannot be embedded.
        max_source_length=min(settings.max_source_length or limit, limit),
        max_target_length=min(settings.max_target_length or limit, limit),
        seed=seed, rank=state.process_index, world_size=state.num_processes, langs=settings.langs,
        on_bad_record=settings.on_bad_record, census_cache=census_cache,
    )


def pretrain(model_dir: str | os.PathLike, config: TrainingConfig, settings: PretrainSettings) -> TrainingResult:
    """Pretrain the model in `model_dir` on `settings`' data; OUT/final loads with `from_pretrained`.

    Adds the missing language tags to model and tokenizer first (in sorted order, so that a
    resumed run gets the same ids). Reports the sampling probabilities and, with
    on_bad_record="skip", what was skipped, on stderr (main process).
    """
    if not settings.mono and not settings.parallel:
        raise ValueError("no pretraining data: give monolingual (--mono) and/or parallel (--parallel) sources")
    model = SWCMForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)  # fp32 master weights
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cache = Path(config.out_dir) / CENSUS_FILE
    add_language_tags(model, tokenizer, data_languages(settings, cache))
    state = distributed_state()
    with state.main_process_first():  # the main process computes the census; the others read it
        stream = pretraining_stream(tokenizer, settings, config.seed, census_cache=cache)
    main = state.is_main_process
    if main:
        probs = ", ".join(f"{name} {p:.3f}" for name, p in sorted(stream.probabilities.items()))
        print(f"sampling: {probs}", file=sys.stderr)
        if stream.problems.total:
            print(stream.problems.summary(), file=sys.stderr)
    result = train(model, tokenizer, stream, config, DataCollatorForSeq2Seq(tokenizer), sharded=True)
    if main:  # what this process's examples lost to the length limits, per target language
        limits = (f"pretraining data (--max-source-length {stream.encoder.max_source_length}, "
                  f"--max-target-length {stream.encoder.max_target_length})")
        for line in truncation_report(stream.encoder.truncation, limits):
            print(line, file=sys.stderr)
    return result
