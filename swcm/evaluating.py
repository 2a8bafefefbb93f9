"""Evaluating a fine-tuned model on test files: generate, score per language, write the tables.

`evaluate_model` is `swcm evaluate`: for every test file it writes the predictions
(OUT/predictions/<file stem>.jsonl, the input records with a "prediction" field), scores all
of them one language at a time (`swcm.metrics.evaluate_predictions`: ROUGE-L F/P/R, sacrebleu's
chrF++, BLEU and spBLEU with their signatures, the script-aware chrF++ and BLEU, script rate) and
writes OUT/results.json and OUT/results.md, a table shaped like the
paper's Tables 1 and 2. For cross-lingual transfer (Table 2: fine-tuned on Chinese, evaluated on
Tibetan, Uyghur, Kazakh and Mongolian) `transfer_from` records the fine-tuning language and
titles the table accordingly; the script rate shows how much of each output is in the target
language's script.

Any `AutoModelForSeq2SeqLM` directory is evaluated the same way, so baselines (NLLB-200, M2M-100,
mBART-50, mT5, Marian) sit beside SWCM in one table, scored by the same script-aware metrics;
each is told the languages by its family's convention (`swcm.languages`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .metrics import evaluate_predictions, markdown_table
from .generation import generate_file, load_generator
from .languages import language_convention
from .distributed import distributed_state
from .io import atomic_text_file, write_json

# The paper's table shape: language, ROUGE-L F/P/R, then sacrebleu's chrF++, BLEU and spBLEU, the
# script-aware chrF++ and BLEU, script rate and size.
RESULT_COLUMNS = ("lang", "rougeL_f", "rougeL_p", "rougeL_r", "chrf", "bleu", "spbleu", "chrf_script", "bleu_script",
                  "script_rate", "n")
TASK_NAMES = {"sum": "summarisation", "mrc": "reading comprehension", "mt": "translation"}


def prediction_paths(test_files: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """OUT/predictions/<stem>.jsonl for each test file; ValueError when two files share a stem."""
    paths = [Path(out_dir) / "predictions" / f"{Path(f).name.removesuffix('.jsonl')}.jsonl" for f in test_files]
    seen: dict[Path, str] = {}
    for test_file, path in zip(test_files, paths):
        if path in seen:
            raise ValueError(f"{seen[path]} and {test_file} would both write {path}; rename one of them")
        seen[path] = str(test_file)
    return paths


def results_markdown(rows: Sequence[Mapping], task: str, transfer_from: str | None = None) -> str:
    """The results table as markdown under a title naming the task (and the transfer source)."""
    name = TASK_NAMES.get(task, task)
    if transfer_from is None:
        head = f"## {name.capitalize()}\n"
    else:
        others = ", ".join(r["lang"] for r in rows if r["lang"] != transfer_from)
        head = (
            f"## Cross-lingual transfer ({name}): fine-tuned on {transfer_from}, evaluated on {others or transfer_from}\n\n"
            f"Rows other than {transfer_from} are zero-shot: the model was fine-tuned on {transfer_from} data only. "
            "Script rate is the share of output letters in the target language's script.\n"
        )
    return f"{head}\n{markdown_table(rows, RESULT_COLUMNS)}"


def evaluate_model(
    model_dir: str | os.PathLike,
    task: str,
    test_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    tgt_lang: str | None = None,
    transfer_from: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    on_bad_record: str = "error",
    lang_codes: Mapping[str, str] | None = None,
    source_prefix: str | None = None,
    engine: str = "transformers",
    quantize: str | None = None,
    **generate_options,
) -> list[dict]:
    """Generate for every test file with the model in `model_dir` and score one language at a time.

    `task` is "sum", "mrc" or "mt"; the test files are in that task's format with the reference
    (summary / answer / tgt) present, `fields` renaming fields and `tgt_lang` standing in for a
    missing language field. A file may hold several languages and several files one each: the
    rows are per language over all files, in order of first appearance. `transfer_from` names
    the language the model was fine-tuned on (cross-lingual transfer). `lang_codes` (language
    code → the model's code, e.g. {"bo": "bod_Tibt"}) and `source_prefix` adapt the model
    family's language convention (`swcm.languages.language_convention`). `engine` and `quantize`
    choose the decoding engine (`swcm.generation.load_generator`). `generate_options` go to
    `swcm.generation.generate_sequences` (batch_size, max_new_tokens, num_beams, …).

    Writes OUT/predictions/<stem>.jsonl, OUT/results.json ({"model", "task", "transfer_from",
    "test_files", "languages", "generation", "rows"}) and OUT/results.md, each atomically. Returns the rows
    (`swcm.metrics.evaluate_predictions`'s, sacrebleu's signatures under "signatures").

    Under `accelerate launch` every process calls this: each loads the model (`load_generator`:
    on its own GPU unless `device` says otherwise) and decodes its share of every test file
    (`swcm.generation.generate_sequences`); every process gets the rows, the main process
    writes the files. The results are those of one process.
    """
    if not test_files:
        raise ValueError("no test files")
    out = Path(out_dir)
    outputs = prediction_paths(test_files, out)
    state = distributed_state()
    model, tokenizer = load_generator(model_dir, device, dtype, engine, quantize)
    languages = language_convention(model, tokenizer, lang_codes, source_prefix)
    scored: list[dict] = []
    files = []
    for test_file, output in zip(test_files, outputs):
        inputs = generate_file(
            model, tokenizer, test_file, output, task, fields=fields, tgt_lang=tgt_lang, require_reference=True,
            on_bad_record=on_bad_record, languages=languages, across_processes=True, **generate_options,
        )
        scored += [{"prediction": i.record["prediction"], "reference": i.reference, "lang": i.target_lang} for i in inputs]
        files.append({"file": str(test_file), "predictions": str(output), "n": len(inputs),
                      "langs": list(dict.fromkeys(i.target_lang for i in inputs))})
    rows = evaluate_predictions(scored, reference_field="reference", lang_field="lang")
    results = {
        "model": str(model_dir), "task": task, "transfer_from": transfer_from, "test_files": files,
        "languages": languages.describe(),
        "generation": {**{k: v for k, v in generate_options.items() if k != "progress"}, "engine": engine,
                       "quantize": quantize or "none"},
        "rows": rows,
    }
    if state.is_main_process:
        write_json(out / "results.json", results)
        with atomic_text_file(out / "results.md") as f:
            f.write(results_markdown(rows, task, transfer_from))
    state.wait_for_everyone()  # the files are there when any process returns
    return rows
