"""The `swcm` command: a thin skin over the library, one subcommand per workflow step.

Each subcommand is an `_add_<name>(sub)` function that declares its arguments and sets
`func` to a handler taking the parsed namespace. Handlers import the library lazily so
that `swcm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swcm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"swcm {args.command}: error: {err}", file=sys.stderr)
        return 2


def _add_tiny_encoder(sub) -> None:
    # The defaults live in one place, the library's settings; importing it costs ~60 ms on top of `swcm`.
    from .tiny_encoder import TinyEncoderSettings as S

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
    p.set_defaults(func=_tiny_encoder)


def _tiny_encoder(args) -> int:
    import json

    from .resources import udhr
    from .tiny_encoder import SETTINGS_FILE, read_corpus, train_tiny_encoder

    if args.corpus:
        texts = read_corpus(args.corpus)
    else:
        texts = [text for unit in udhr("train") for text in unit["text"].values()]
    out = train_tiny_encoder(texts, args.out, steps=args.steps, hidden=args.hidden, layers=args.layers,
                             vocab_size=args.vocab_size, seed=args.seed)
    record = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    print(f"{out}: XLM-R masked LM, hidden {args.hidden}, {args.layers} layers, "
          f"{record['parameters']:,} parameters, vocabulary {record['vocab_size']:,}; "
          f"MLM loss {record['loss']['first']:.2f} -> {record['loss']['last']:.2f}")
    return 0


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="build an SWCM model from a pretrained encoder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--encoder", help="encoder directory (or hub id when online)")
    src.add_argument("--encoder-config", help="an encoder config.json (with --dry-run)")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--insert-every", type=int, default=3, help="X: a Normal layer after every X Custom layers")
    p.add_argument("--variant", default="ws", help="ws | random | no-normal | duplicate")
    p.add_argument("--lm-head", default="untied", help="untied | tied | mlm")
    p.add_argument("--langs", help="comma-separated language codes to add tags for, e.g. zh,bo,ug")
    p.add_argument("--dry-run", action="store_true", help="allocate nothing (meta device); report the plan")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=_build)


def _build(args) -> int:
    import json

    from .building import build_model_dir, dry_run_report, load_encoder_config

    if args.dry_run:
        config = load_encoder_config(args.encoder_config or args.encoder)
        report = dry_run_report(config, args.insert_every, args.variant, args.lm_head)
        if args.json:
            print(json.dumps(report))
        else:
            print(f"decoder plan ({len(report['layers'])} layers): " + " ".join(k[0].upper() for k in report["layers"]))
            print(f"parameters: {report['parameters']:,} (decoder {report['decoder_parameters']:,})")
        return 0
    if args.encoder is None or args.out is None:
        raise UsageError("build needs --encoder and --out (or --dry-run)")
    langs = [lang for lang in (args.langs or "").split(",") if lang]
    report = build_model_dir(args.encoder, args.out, args.insert_every, args.variant, args.lm_head, langs)
    print(json.dumps(report) if args.json else f"wrote {args.out}: {report['parameters']:,} parameters, "
          f"decoder plan " + " ".join(k[0].upper() for k in report["layers"]))
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score predictions against references: ROUGE-L F/P/R, chrF++, BLEU, script rate",
        description="Score plain-text predictions against references (UTF-8, one segment per line, "
        "aligned by line). Tokenisation follows the Unicode script of the references (Han characters, "
        "Tibetan syllables, words elsewhere), so any language scores correctly. All scores on 0-100.",
    )
    p.add_argument("--pred", required=True, metavar="FILE", help="predictions, one segment per line")
    p.add_argument("--ref", required=True, metavar="FILE", help="references, one segment per line")
    p.add_argument("--lang", metavar="L", help="target language code; fixes the target script where the code "
                   "implies one (zh, bo, ug, kk-Arab, mn-Mong, ...), else it is read from the references")
    p.add_argument("--json", action="store_true", help='print one JSON object: {"rougeL": {"f", "p", "r"}, '
                   '"chrf", "bleu", "script_rate"}')
    p.set_defaults(func=_score)


def _score(args) -> int:
    import json

    from .evaluation import COLUMN_HEADERS, bleu_tokenize, flatten_scores, read_segments, score, target_script

    predictions, references = read_segments(args.pred), read_segments(args.ref)
    if len(predictions) != len(references):
        raise UsageError(f"{args.pred} has {len(predictions)} lines but {args.ref} has {len(references)}")
    if not references:
        raise UsageError(f"{args.ref} is empty")
    result = score(predictions, references, args.lang)
    if args.json:
        print(json.dumps({k: result[k] for k in ("rougeL", "chrf", "bleu", "script_rate")}))
        return 0
    row = flatten_scores(result)
    for key in ("rougeL_f", "rougeL_p", "rougeL_r", "chrf", "bleu", "script_rate"):
        print(f"{COLUMN_HEADERS[key]:<12} {row[key]:6.2f}")
    script = target_script(references, args.lang)
    print(f"{result['n']} segments; script {script}; BLEU tokenize {bleu_tokenize(script)}")
    return 0


# Subcommands, in workflow order.
_SUBCOMMANDS: list = [_add_tiny_encoder, _add_build, _add_score]

if __name__ == "__main__":
    sys.exit(main())
