"""Using a model: generate for a task file, evaluate on test files, score predictions against references.

generate and evaluate take any encoder-decoder directory (SWCM, or a baseline such as NLLB-200,
mBART-50, M2M-100, mT5, Marian) and share the flags that read task files and decode.
"""

from __future__ import annotations

import sys

from .flags import (ON_BAD_RECORD_HELP, UsageError, add_field_flag, add_overwrite, check_at_least, field_map, key_values,
                    language_list)


def _add_task_input_args(p, *, task_required: bool) -> None:
    """How task files are read, the device and dtype: shared by generate and evaluate."""
    from ..data.readers import ON_BAD_RECORD, TASK_FIELDS
    from ..precision import DTYPE_CHOICES

    p.add_argument("--task", choices=list(TASK_FIELDS), required=task_required,
                   help="sum {document, summary, lang} | mrc {question, context, answer, lang} | mt {src, tgt, "
                   "src_lang, tgt_lang}" + ("" if task_required else "; default: from each record's fields"))
    add_field_flag(p)
    p.add_argument("--tgt-lang", metavar="L", help="output language for records without a lang / tgt_lang field")
    b = p.add_argument_group("baselines", "any AutoModelForSeq2SeqLM directory works: NLLB-200, M2M-100 and mBART-50 "
                             "get their language code as forced first token (and source code); mT5 and Marian none, "
                             "or a --source-prefix")
    b.add_argument("--lang-code", action="append", default=[], metavar="L=CODE",
                   help="the model's code for language L, e.g. bo=bod_Tibt (NLLB), kk=kk_KZ (mBART-50); repeat. "
                   "Defaults cover zh, bo, ug, kk, mn, en where the model has them")
    b.add_argument("--lang-codes", metavar="FILE", help="language codes from a file: JSON {\"bo\": \"bod_Tibt\"} or TSV L<TAB>CODE")
    b.add_argument("--source-prefix", metavar="TEMPLATE",
                   help="put before every source, {code}/{lang} filled in for the output language, e.g. '>>{code}<< ' "
                   "(multi-target Marian) or 'summarize: ' (T5)")
    p.add_argument("--on-bad-record", default="error", choices=ON_BAD_RECORD, help=ON_BAD_RECORD_HELP)
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights and compute: auto (default; training's --mixed-precision auto: bfloat16 on a GPU "
                   "of compute capability 8.0 or more and on a CPU measured faster in it, float16 on older GPUs "
                   "(T4, V100), else float32) | float32 | bfloat16 | float16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _language_options(args) -> dict:
    """--lang-codes, --lang-code (which wins) and --source-prefix as keyword arguments."""
    from ..languages import read_language_codes

    codes = read_language_codes(args.lang_codes) if args.lang_codes else {}
    codes.update(key_values(args.lang_code, "--lang-code", "LANG=CODE, e.g. bo=bod_Tibt"))
    return {"lang_codes": codes, "source_prefix": args.source_prefix}


def _add_generation_args(p) -> None:
    """Decoding flags, mapped onto transformers' generate(); unset ones keep the model's defaults."""
    g = p.add_argument_group("generation")
    g.add_argument("--batch-size", type=int, metavar="N", default=16, help="sources per generate() call (default 16)")
    g.add_argument("--max-source-length", type=int, metavar="N", default=256, help="source tokens kept (default 256)")
    g.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="output tokens at most (default: the model's; a model fine-tuned by swcm: its --max-target-length)")
    g.add_argument("--num-beams", type=int, metavar="N", help="beam search with N beams (default 1: greedy)")
    g.add_argument("--num-return-sequences", type=int, metavar="N",
                   help='outputs per input: "prediction" is the first (best beam), "predictions" holds all')
    g.add_argument("--length-penalty", type=float, metavar="F", help="beam search: >1 favours longer outputs, <1 shorter")
    g.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="never repeat an n-gram of this size")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy / beam search")
    g.add_argument("--top-k", type=int, metavar="K", help="sampling: keep the K most likely tokens")
    g.add_argument("--top-p", type=float, metavar="P", help="sampling: nucleus probability mass")
    g.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    g.add_argument("--seed", type=int, metavar="S", default=0, help="random seed (sampling)")
    g.add_argument("--engine", default="transformers", choices=["transformers", "fast"],
                   help="transformers: model.generate() (default; any model); fast: swcm's lean decoding loop for SWCM "
                   "models, greedy or beam search, the same outputs in float32, faster on a CPU")
    g.add_argument("--quantize", default="none", choices=["none", "int8"],
                   help="int8: int8 weights in every linear layer and the head (--engine fast, CPU; float32 otherwise)")


def _generation_options(args) -> dict:
    """The generation flags as keyword arguments of swcm.generation.generate_sequences."""
    check_at_least(args, batch_size=1, max_source_length=1, max_new_tokens=1, num_beams=1, num_return_sequences=1,
                    top_k=1, no_repeat_ngram_size=0)
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature is not None and not args.temperature > 0:
        raise UsageError(f"--temperature must be positive, got {args.temperature}")
    sampling = {k: getattr(args, k) for k in ("top_k", "top_p", "temperature") if getattr(args, k) is not None}
    if sampling and not args.do_sample:
        raise UsageError("--top-k, --top-p and --temperature need --do-sample")
    if args.engine == "fast" and args.do_sample:
        raise UsageError("--engine fast decodes greedily or by beam search; sampling needs --engine transformers")
    if args.quantize != "none" and args.engine != "fast":
        raise UsageError(f"--quantize {args.quantize} needs --engine fast")
    options = {"batch_size": args.batch_size, "max_source_length": args.max_source_length,
               "max_new_tokens": args.max_new_tokens, "progress": not args.no_progress, **sampling}
    for key in ("num_beams", "num_return_sequences", "length_penalty", "no_repeat_ngram_size"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.do_sample:
        options["do_sample"] = True
    return options


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate for a task file: JSONL in, the same records with a \"prediction\" field out",
        description="Generate with a fine-tuned model for every record of a task file (JSONL). Each output line "
        "is the input record, every field kept, with \"prediction\" added; the order is kept. The output "
        "language is the record's lang (sum, mrc) or tgt_lang (mt), else --tgt-lang; its tag (a baseline's "
        "language code) is forced as the first decoder token. The output is written atomically: a failed run leaves an existing file as it was.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="a model directory: SWCM, or any AutoModelForSeq2SeqLM (NLLB-200, mBART-50, M2M-100, mT5, Marian)")
    p.add_argument("--input", required=True, metavar="FILE", help="task JSONL (file, glob or directory)")
    p.add_argument("--output", required=True, metavar="FILE", help="output JSONL")
    p.add_argument("--keep-special-tokens", action="store_true",
                   help="keep <s>, the language tag and </s> in the predictions (to inspect the forced tag)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output even if it is not an earlier output of swcm generate")
    _add_task_input_args(p, task_required=False)
    _add_generation_args(p)
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    import time
    from collections import Counter

    from transformers import set_seed

    from ..data.readers import Problems
    from ..distributed import distributed_state
    from ..generation import generate_file, load_generator
    from ..io import check_model_dir, check_output_file, seq2seq_model_types
    from ..languages import language_convention

    options = _generation_options(args)
    fields = field_map(args.field)
    language_options = _language_options(args)
    check_model_dir(args.model, seq2seq_model_types(), "an encoder-decoder model")
    check_output_file(args.output, args.overwrite, is_own=_is_prediction_file)
    start = time.perf_counter()
    model, tokenizer = load_generator(args.model, args.device, args.dtype, args.engine, args.quantize)
    languages = language_convention(model, tokenizer, language_options["lang_codes"], language_options["source_prefix"])
    set_seed(args.seed)
    problems = Problems()
    inputs = generate_file(
        model, tokenizer, args.input, args.output, args.task, fields=fields, tgt_lang=args.tgt_lang,
        on_bad_record=args.on_bad_record, problems=problems, skip_special_tokens=not args.keep_special_tokens,
        languages=languages, across_processes=True, **options,
    )
    if not distributed_state().is_main_process:  # under accelerate launch: the main process reports
        return 0
    if problems.total:
        print(f"{args.input}: {problems.summary()}", file=sys.stderr)
    langs = ", ".join(f"{lang} {n}" for lang, n in Counter(i.target_lang for i in inputs).items())
    print(f"wrote {len(inputs)} predictions to {args.output} ({langs}) in {time.perf_counter() - start:.1f} s")
    return 0


def _is_prediction_file(path) -> bool:
    """Whether `path` looks like an earlier output of swcm generate: its first line is a JSON
    object with a "prediction" field."""
    import json

    with open(path, "rb") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "prediction" in record


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="generate for test files and score them per language: ROUGE-L F/P/R, chrF++, BLEU, script rate",
        description="Generate for every test file (task JSONL with references), score one language at a time "
        "and write OUT/predictions/<stem>.jsonl, OUT/results.json and OUT/results.md (a markdown table, also "
        "printed). For cross-lingual transfer, pass the fine-tuning language with --transfer-from.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="a model directory: SWCM, or any AutoModelForSeq2SeqLM (NLLB-200, mBART-50, M2M-100, mT5, Marian)")
    p.add_argument("--test", required=True, action="append", metavar="FILE",
                   help="test JSONL with references; repeat for several files (one or more languages each)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--transfer-from", metavar="L",
                   help="the language the model was fine-tuned on: titles the table as cross-lingual transfer")
    _add_task_input_args(p, task_required=True)
    _add_generation_args(p)
    add_overwrite(p)
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from transformers import set_seed

    from ..distributed import distributed_state
    from ..evaluating import evaluate_model, results_markdown
    from ..io import check_model_dir, output_directory, seq2seq_model_types

    options = _generation_options(args)
    fields = field_map(args.field)
    check_model_dir(args.model, seq2seq_model_types(), "an encoder-decoder model")
    set_seed(args.seed)
    language_options = _language_options(args)
    with output_directory(args.out, "evaluate", args.overwrite):
        rows = evaluate_model(
            args.model, args.task, args.test, args.out, fields=fields, tgt_lang=args.tgt_lang,
            transfer_from=args.transfer_from, device=args.device, dtype=args.dtype, on_bad_record=args.on_bad_record,
            engine=args.engine, quantize=args.quantize, **language_options, **options,
        )
    if not distributed_state().is_main_process:  # under accelerate launch: the main process reports
        return 0
    print(results_markdown(rows, args.task, args.transfer_from), end="")
    print(f"wrote {args.out}/results.json, {args.out}/results.md and {args.out}/predictions/")
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score predictions against references: ROUGE-L F/P/R, chrF++, BLEU, spBLEU (sacrebleu's, on the "
        "raw text), their script-aware variants, script rate",
        description="Score plain-text predictions against references (UTF-8, one segment per line, "
        "aligned by line). Tokenisation follows the Unicode script of the references (Han characters, "
        "Tibetan syllables, words elsewhere), so any language scores correctly. All scores on 0-100.",
    )
    p.add_argument("--pred", required=True, metavar="FILE", help="predictions, one segment per line")
    p.add_argument("--ref", required=True, metavar="FILE", help="references, one segment per line")
    p.add_argument("--lang", metavar="L", help="target language code; fixes the target script where the code "
                   "implies one (zh, bo, ug, kk-Arab, mn-Mong, ...), else it is read from the references")
    p.add_argument("--json", action="store_true", help='print one JSON object: {"rougeL": {"f", "p", "r"}, '
                   '"chrf", "bleu", "spbleu", "chrf_script", "bleu_script", "script_rate", "signatures"}; '
                   'spbleu is null without the FLORES-200 SentencePiece model in sacrebleu\'s cache')
    p.set_defaults(func=_score)


def _score(args) -> int:
    import json

    from ..metrics import COLUMN_HEADERS, flatten_scores, read_segments, score

    if args.lang is not None:
        language_list(args.lang, "--lang")
    predictions, references = read_segments(args.pred), read_segments(args.ref)
    if len(predictions) != len(references):
        raise UsageError(f"{args.pred} has {len(predictions)} lines but {args.ref} has {len(references)}")
    if not references:
        raise UsageError(f"{args.ref} is empty")
    result = score(predictions, references, args.lang)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "n"}, ensure_ascii=False))
        return 0
    row = flatten_scores(result)
    for key in ("rougeL_f", "rougeL_p", "rougeL_r", "chrf", "bleu", "spbleu", "chrf_script", "bleu_script", "script_rate"):
        value = "     –  (no FLORES-200 SentencePiece model in sacrebleu's cache)" if row[key] is None else f"{row[key]:6.2f}"
        print(f"{COLUMN_HEADERS[key]:<20} {value}")
    print(f"{result['n']} segments; script {result['script']}; sacrebleu signatures:")
    for key, signature in result["signatures"].items():
        print(f"  {COLUMN_HEADERS[key]:<18} {signature}")
    return 0


# Its subcommands, in workflow order.
SUBCOMMANDS = [_add_generate, _add_evaluate, _add_score]
