"""Making a trained model ready to share: average checkpoints, merge a LoRA adapter into full weights,
write its model card."""

from __future__ import annotations

from .flags import add_overwrite


def _add_average(sub) -> None:
    p = sub.add_parser("average", help="average the weights of a run's last checkpoints (or of model directories)",
                       description="Write the model whose weights are the mean of several saved models of one run: "
                       "floating tensors averaged in float32, integer buffers and configs and tokenizer from the newest "
                       "(the last given). It loads with from_pretrained, as OUT/best does. fairseq's and Marian's "
                       "recipes average the last few checkpoints of a translation run the same way.")
    p.add_argument("sources", nargs="+", metavar="DIR",
                   help="with --last: a training output directory (OUT, holding checkpoints/step-N); else two or more "
                   "model directories of the same model, oldest first")
    p.add_argument("--last", type=int, metavar="K", help="average the last K checkpoints kept under DIR/checkpoints")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    add_overwrite(p, replaces=True)
    p.set_defaults(func=_average)


def _average(args) -> int:
    from ..io import output_directory
    from ..training import average_models, last_checkpoints

    from pathlib import Path

    from .flags import UsageError, check_at_least

    if args.last is not None:
        check_at_least(args, last=2)
        if len(args.sources) != 1:
            raise UsageError(f"--last takes one training output directory, got {len(args.sources)}")
        sources = last_checkpoints(args.sources[0], args.last)
    elif len(args.sources) < 2:
        raise UsageError(f"{args.sources[0]}: one directory; give two or more model directories, or a run's "
                         "output directory with --last K")
    else:
        sources = [Path(source) for source in args.sources]
    with output_directory(args.out, "average", args.overwrite):
        average_models(sources, args.out)
    print(f"wrote {args.out}: the mean of {len(sources)} models ({', '.join(str(s) for s in sources)})")
    return 0


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


SUBCOMMANDS = [_add_average, _add_merge, _add_card]
