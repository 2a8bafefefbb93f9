"""Generation: batched `generate()` over many inputs, and task files in, predictions out.

`generate_texts` / `generate_sequences` run the model over a list of source texts, each with
its own target language: for SWCM its tag is the forced first decoder token; any other
`AutoModelForSeq2SeqLM` (NLLB-200, M2M-100, mBART-50, mT5, Marian) is told the language by its
family's convention (`swcm.languages`). `generate_file` reads a
task file (summarisation, reading comprehension or translation JSONL), generates for every
record and writes the records back with a `prediction` field added — atomically, so a crash
never leaves a half-written file or clobbers an older one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .data.examples import pair_separator
from .data.readers import MRC_SEPARATOR, Problems, check_language, read_task_records
from .distributed import distributed_state, split_across_processes
from .io import atomic_text_file
from .languages import LanguageConvention, language_convention
from .precision import resolve_dtype


@torch.no_grad()
def generate_sequences(
    model,
    tokenizer,
    sources: Sequence[str],
    target_langs: Sequence[str | None] | str | None = None,
    *,
    batch_size: int = 16,
    max_source_length: int = 256,
    max_new_tokens: int | None = None,
    progress: bool = True,
    skip_special_tokens: bool = True,
    source_langs: Sequence[str | None] | str | None = None,
    languages: LanguageConvention | None = None,
    across_processes: bool = False,
    **generate_kwargs,
) -> list[list[str]]:
    """Generate for every source with `model.generate()`; returns, in input order, the list of
    `num_return_sequences` outputs of each source (best first for beam search).

    `target_langs` (one code for all, or one per source) selects the output language: the
    forced first token (SWCM's language tag, NLLB's `bod_Tibt`, …) or a source prefix, as
    `languages` says (default: the convention of the model's family, `swcm.languages`).
    `source_langs` (one or one per source) matter to families that mark the source language
    (NLLB, M2M-100, mBART-50). Inputs are grouped by languages and sorted by length so
    that batches carry little padding; sources are truncated to `max_source_length` tokens
    (and never beyond the tokenizer's `model_max_length`). `max_new_tokens` is capped by the
    decoder's position table; None leaves the length to the model's generation config (for a
    model fine-tuned by swcm: its target length, so that training and generation agree). Extra keyword arguments go to
    `generate()` (num_beams, num_return_sequences, do_sample, top_k, top_p, temperature,
    length_penalty, no_repeat_ngram_size…). With `skip_special_tokens=False` the outputs keep
    their start token, language tag and </s> (padding is always dropped).

    With `across_processes`, under `accelerate launch` every process calls this with the same
    sources and decodes every N-th batch of them (`swcm.distributed.split_across_processes`);
    each gets all outputs, as one process makes them (the batches are the same; sampled
    outputs follow each process's random state).
    """
    if target_langs is None or isinstance(target_langs, str):
        target_langs = [target_langs] * len(sources)
    if source_langs is None or isinstance(source_langs, str):
        source_langs = [source_langs] * len(sources)
    if len(target_langs) != len(sources) or len(source_langs) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(target_langs)} target and {len(source_langs)} source languages")
    languages = languages or language_convention(model, tokenizer)
    langs = [(target_langs[i] or "", source_langs[i] or "") for i in range(len(sources))]
    # Never feed the encoder more positions than it has (tiny encoders have 128, XLM-R 512),
    # nor ask the decoder for more than its position table holds after the start token.
    max_source_length = min(max_source_length, tokenizer.model_max_length)
    if max_new_tokens is not None and hasattr(model, "max_target_positions"):
        max_new_tokens = min(max_new_tokens, model.max_target_positions - 1)
    # An encoder-decoder's decoder starts from one token, so max_new_tokens N is max_length N + 1; said
    # as max_length, it does not clash with the max_length of a saved generation config, which
    # transformers would warn about at every batch.
    if max_new_tokens is None:
        length = {}
    elif getattr(model.config, "is_encoder_decoder", False):
        length = {"max_length": max_new_tokens + 1}
    else:
        length = {"max_new_tokens": max_new_tokens}
    lengths = [len(tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"]) for s in sources]
    order = sorted(range(len(sources)), key=lambda i: (langs[i], -lengths[i]))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and langs[batches[-1][0]] == langs[i]:
            batches[-1].append(i)
        else:
            batches.append([i])

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # the bar counts this process's share, and only the main process shows it
    state = distributed_state() if across_processes else None
    share = sum(map(len, batches[state.process_index :: state.num_processes])) if state else len(sources)
    hidden = state is not None and not state.is_main_process
    bar = tqdm(total=share, desc="generate", unit="seq", disable=not progress or hidden)

    def decode(batch: list[int]) -> list[list[str]]:
        target_lang = target_langs[batch[0]]
        languages.set_source_language(tokenizer, source_langs[batch[0]])
        enc = tokenizer(
            [languages.source_text(sources[i], target_lang) for i in batch], return_tensors="pt", padding=True,
            truncation=True, max_length=max_source_length,
        ).to(device)
        enc.pop("token_type_ids", None)
        forced = languages.forced_bos_token_id(tokenizer, target_lang)
        out = model.generate(
            **enc,
            **length,
            **({} if forced is None else {"forced_bos_token_id": forced}),
            **generate_kwargs,
        )
        rows = [[t for t in row if t != tokenizer.pad_token_id] for row in out.tolist()]
        texts = [t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens)]
        per_source = len(texts) // len(batch)  # num_return_sequences, consecutive per source
        bar.update(len(batch))
        return [texts[k * per_source : (k + 1) * per_source] for k in range(len(batch))]

    outputs: list[list[str]] = [[] for _ in sources]
    try:
        for batch, decoded in zip(batches, split_across_processes(batches, decode, across_processes)):
            for i, texts in zip(batch, decoded):
                outputs[i] = texts
    finally:
        bar.close()
        model.train(was_training)
    return outputs


def generate_texts(model, tokenizer, sources: Sequence[str], target_langs: Sequence[str | None] | str | None = None,
                   **kwargs) -> list[str]:
    """One output per source, in input order: the first (for beam search the best) of
    `generate_sequences`, which takes the same arguments."""
    return [seqs[0] for seqs in generate_sequences(model, tokenizer, sources, target_langs, **kwargs)]


def load_generator(model_dir: str | os.PathLike, device: str | None = None, dtype: str = "auto",
                   engine: str = "transformers", quantize: str | None = None):
    """Load a saved model directory for generation: (model in eval mode on `device`, tokenizer).

    `device` defaults to "cuda" when a GPU is visible, else "cpu"; under `accelerate launch`
    with several processes, to this process's own device. `dtype` ("float32",
    "bfloat16", "float16") is the model's weight and compute dtype; "auto" takes bfloat16 where
    the device runs it natively and fast, float16 on a T4 or V100, float32 elsewhere
    (`swcm.precision.resolve_dtype`). Any transformers seq2seq
    model directory works (the baselines: NLLB-200, M2M-100, mBART-50, mT5, Marian); SWCM
    models load through the Auto classes `swcm` registers; a LoRA adapter directory (`swcm
    finetune --lora`) loads as its base model with the adapter merged in (`swcm.lora.load_merged`).

    `engine="fast"` (SWCM models only) returns the model wrapped in `swcm.fast_generation.FastSWCM`,
    which decodes greedily or by beam search with the same outputs, faster on a CPU;
    `quantize="int8"` (with it, on the CPU) decodes with int8 weights, loading the model in float32.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .fast_generation import FastSWCM, check_engine
    from .lora import is_adapter_dir, load_merged

    from . import modeling  # noqa: F401  (importing swcm registers SWCM with the Auto classes)

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    if device is None:
        state = distributed_state()
        device = str(state.device) if state.num_processes > 1 else "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible")
    check_engine(engine, quantize, device, dtype)
    if quantize == "int8":
        dtype = "float32"  # int8 weights are quantised from float32 ones; activations stay float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch_dtype = resolve_dtype(dtype, device)
    if is_adapter_dir(model_dir):  # a LoRA run's model: merged into its base model's weights
        model = load_merged(model_dir, torch_dtype).to(device).eval()
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    if engine == "fast":
        model = FastSWCM(model, quantize)
    return model, tokenizer


# --- task files ----------------------------------------------------------------------------


class TaskInput(NamedTuple):
    """One record of a task file, ready for generation.

    record: the JSON object as read (every field kept); where: "path:line"; task: "sum",
    "mrc" or "mt"; source_text: what the encoder reads; target_lang: the output language;
    reference: the target text when the record has one, else None; source_lang: the source's
    language when the record gives it (sum and mrc: their lang; mt: src_lang, optional here).
    """

    record: dict
    where: str
    task: str
    source_text: str
    target_lang: str
    reference: str | None
    source_lang: str | None = None


def read_task_inputs(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    task: str | None = None,
    *,
    fields: Mapping[str, str] | None = None,
    tgt_lang: str | None = None,
    separator: str = MRC_SEPARATOR,
    require_reference: bool = False,
    on_bad_record: str = "error",
    problems: Problems | None = None,
) -> list[TaskInput]:
    """The records of task files as `TaskInput`s, in file and line order.

    The formats are those of fine-tuning (read by `swcm.data.readers.read_task_records`): sum
    {"document", "summary", "lang"}, mrc {"question", "context", "answer", "lang"}, mt {"src",
    "tgt", "src_lang", "tgt_lang"}; `fields` renames them ({"document": "article"}). Unlike
    training, the target text is optional (`require_reference=True` demands it) and so is the
    target language field when `tgt_lang` supplies it for records without one. The source
    text is built as in training: mrc joins question and context with `separator` (the
    tokenizer's pair separator). `task=None` takes each record's task from the source fields it
    holds. A bad record raises a one-line `BadRecord` ("path:line: problem") or, with
    on_bad_record="skip", is dropped and counted in `problems`.
    """
    if tgt_lang is not None:  # checked here to name the flag it comes from
        try:
            check_language(tgt_lang)
        except ValueError as err:
            raise ValueError(f"--tgt-lang: {err}") from None
    records = read_task_records(
        paths, task, fields=fields, tgt_lang=tgt_lang, separator=separator, require_target=require_reference,
        read_source_lang=False, on_bad_record=on_bad_record, problems=problems,
    )
    src_lang_field = (fields or {}).get("src_lang", "src_lang")
    inputs = []
    for r in records:
        source_lang = r.pair.source_lang if r.task != "mt" else r.record.get(src_lang_field)
        if source_lang is not None:
            try:
                check_language(source_lang)
            except ValueError as err:
                raise ValueError(f'{r.where}: {err} in field "{src_lang_field}"') from None
        inputs.append(TaskInput(r.record, r.where, r.task, r.pair.source_text, r.pair.target_lang, r.pair.target_text,
                                source_lang))
    return inputs


def check_languages(tokenizer, inputs: Sequence[TaskInput], languages: LanguageConvention) -> None:
    """Raise a one-line ValueError naming the first record whose target (or source) language the
    model cannot be told: no SWCM language tag, no NLLB / mBART-50 / M2M-100 code."""
    seen: set[tuple[str, str | None]] = set()
    for item in inputs:
        if (item.target_lang, item.source_lang) not in seen:
            try:
                languages.check(tokenizer, [item.target_lang], [item.source_lang])
            except ValueError as err:
                raise ValueError(f"{item.where}: {err}") from None
            seen.add((item.target_lang, item.source_lang))


def generate_file(
    model,
    tokenizer,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    task: str | None = None,
    *,
    fields: Mapping[str, str] | None = None,
    tgt_lang: str | None = None,
    require_reference: bool = False,
    on_bad_record: str = "error",
    problems: Problems | None = None,
    prediction_field: str = "prediction",
    languages: LanguageConvention | None = None,
    across_processes: bool = False,
    **generate_options,
) -> list[TaskInput]:
    """Generate for every record of a task file and write them to `output_path` as JSONL.

    Each output line is the input record with `prediction_field` added (every original field
    kept, input order kept); with `num_return_sequences` > 1 a "predictions" list holds all
    outputs too. Records are read by `read_task_inputs` (`task`, `fields`, `tgt_lang`,
    `require_reference`, `on_bad_record`, `problems` as there) and all of them are validated,
    language tags (or the baseline's language codes, `languages`) included, before anything is
    generated; the output is written atomically. With `across_processes` every process of the
    launch calls this and decodes its share (`generate_sequences`); the main process writes.
    `generate_options` go to `generate_sequences` (batch_size, max_new_tokens, num_beams, …).
    Returns the inputs, whose `record`s now hold the predictions.
    """
    inputs = read_task_inputs(
        input_path, task, fields=fields, tgt_lang=tgt_lang, separator=pair_separator(tokenizer),
        require_reference=require_reference, on_bad_record=on_bad_record, problems=problems,
    )
    if not inputs:
        raise ValueError(f"{input_path}: no records")
    languages = languages or language_convention(model, tokenizer)
    check_languages(tokenizer, inputs, languages)
    outputs = generate_sequences(
        model, tokenizer, [i.source_text for i in inputs], [i.target_lang for i in inputs],
        source_langs=[i.source_lang for i in inputs], languages=languages, across_processes=across_processes,
        **generate_options
    )
    for item, sequences in zip(inputs, outputs):
        item.record[prediction_field] = sequences[0]
        if len(sequences) > 1:
            item.record["predictions"] = sequences
    if not across_processes or distributed_state().is_main_process:
        with atomic_text_file(output_path) as f:
            f.writelines(json.dumps(item.record, ensure_ascii=False) + "\n" for item in inputs)
    return inputs
