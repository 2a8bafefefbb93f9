"""Making a trained model ready to share: merge a LoRA adapter into full weights, write its model card."""

from __future__ import annotations

from .flags import add_overwrite


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter (finetune --lora) into its base model's weights",
                       description="Write the base model with the adapter folded into its weights: an ordinary model "
                       "directory that from_pretrained, generate, evaluate, the fast engine and serve load.")
    p.add_argument("adapter", metavar="ADAPTER_DIR", help="a LoRA run's OUT/best or OUT/final (adapter_config.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--base", metavar="DIR", help="the base model (default: the one adapter_config.json names)")
    add_overwrite(p, replaces=True)
    p.set_defaults(func=_merge)


def _merge(args) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from ..io import check_model_dir, check_output_dir, output_directory, save_model_dir
    from ..lora import ADAPTER_CONFIG, is_adapter_dir, load_merged
    from ..model_card import FINETUNE_RECORD, write_model_card

    from .flags import UsageError

    if not Path(args.adapter).is_dir():
        raise FileNotFoundError(f"{args.adapter}: no such directory")
    if not is_adapter_dir(args.adapter):
        raise UsageError(f"{args.adapter}: no {ADAPTER_CONFIG}, so not a LoRA adapter directory")
    if args.base is not None:
        check_model_dir(args.base, ["swcm"], "an SWCM model", tokenizer=False)
    check_output_dir(args.out, "merge", args.overwrite)  # before the work
    model = load_merged(args.adapter, base_dir=args.base)
    tokenizer = AutoTokenizer.from_pretrained(args.adapter)
    with output_directory(args.out, "merge", args.overwrite):
        save_model_dir(model, tokenizer, args.out, owner="merge")
        record = Path(args.adapter) / FINETUNE_RECORD
        if record.is_file():
            (Path(args.out) / FINETUNE_RECORD).write_bytes(record.read_bytes())
        write_model_card(args.out, [])
    print(f"wrote {args.out}: {args.adapter} merged into {args.base or 'its base model'}")
    return 0


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="write or refresh a model directory's model card (README.md)",
                       description="Write MODEL_DIR/README.md: the Hugging Face model card with its metadata (languages, "
                       "base encoder and licence, data, pipeline tag, model-index with the test scores and sacrebleu "
                       "signatures), the variant and training settings, how to load and serve it, and its known limits.")
    p.add_argument("model", metavar="MODEL_DIR", help="an SWCM model directory, or a LoRA adapter directory")
    p.add_argument("--results", action="append", metavar="FILE",
                   help="swcm evaluate's results.json to take scores from; repeat (default: those made with this model "
                   "found in MODEL_DIR/eval/ or, in an experiment, the run's eval/)")
    p.set_defaults(func=_card)


def _card(args) -> int:
    from ..io import check_model_dir, read_json_object
    from ..model_card import find_results, write_model_card

    from pathlib import Path

    check_model_dir(args.model, ["swcm"], "an SWCM model", weights=False, tokenizer=False)
    for file in args.results or []:
        read_json_object(Path(file))  # one line naming the file when it is not JSON
    results = args.results if args.results is not None else find_results(args.model)
    path = write_model_card(args.model, results)
    scores = f"scores from {', '.join(map(str, results))}" if results else "no test scores (give --results)"
    print(f"wrote {path}: {scores}")
    return 0


SUBCOMMANDS = [_add_merge, _add_card]
