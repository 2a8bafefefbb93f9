"""The model's own steps: build an SWCM model from an encoder, pretrain it (DAE + MT), fine-tune it."""

from __future__ import annotations

from ..settings import settings_for
from .flags import (ON_BAD_RECORD_HELP, UsageError, add_field_flag, add_overwrite, add_settings, add_training_args,
                    check_at_least, check_resume, field_map, language_list, training_config)

# Fine-tuning's flags named otherwise than their setting.
FINETUNE_FLAG_NAMES = {"max_valid_examples": "--max-valid"}


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="build an SWCM model from a pretrained encoder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--encoder", help="encoder directory (or hub id when online)")
    src.add_argument("--encoder-config", help="an encoder config.json (with --dry-run)")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--insert-every", type=int, help="X: a Normal layer after every X Custom layers (default 3, the "
                   "paper's; over 3 encoder layers or fewer, e.g. --encoder-layers 3, layers - 1 so that the decoder "
                   "keeps a Normal layer: C C N C)")
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
    add_overwrite(p, replaces=True)
    p.set_defaults(func=_build)


def _build(args) -> int:
    import json

    from ..building import build_model_dir, choose_insert_every, dry_run_report, load_encoder_config
    from ..configuration import SUPPORTED_ENCODER_TYPES
    from ..io import check_model_dir, output_directory

    if args.encoder is not None:
        check_model_dir(args.encoder, SUPPORTED_ENCODER_TYPES, "an XLM-R/RoBERTa/BERT encoder", weights=not args.dry_run)
    config = load_encoder_config(args.encoder_config or args.encoder)
    chosen, note = choose_insert_every(args.encoder_layers or config.num_hidden_layers, args.insert_every, args.variant)
    if note and not args.json and (args.insert_every is None or args.dry_run):  # else build_model_dir warns
        print(note)
    args.insert_every = chosen
    if args.dry_run:
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
    langs = language_list(args.langs)
    with output_directory(args.out, "build", args.overwrite):
        report = build_model_dir(args.encoder, args.out, args.insert_every, args.variant, args.lm_head, langs,
                                 args.dropout, args.encoder_layers)
    print(json.dumps(report) if args.json else f"wrote {args.out}: {report['parameters']:,} parameters, "
          f"{report['encoder_layers']} encoder layers, decoder plan " + " ".join(k[0].upper() for k in report["layers"])
          + f", head {report['lm_head']}")
    if not args.json:
        from ..diagnostics import similarity_summary

        print("mean pairwise cosine of hidden states (UDHR sample; near 1 = collapsed):")
        for line in similarity_summary(report["hidden_state_similarity"]):
            print(f"  {line}")
        if report["advice"]:
            print(report["advice"])
    return 0


def _add_pretrain(sub) -> None:
    from ..data.noise import NoiseConfig
    from ..data.readers import ON_BAD_RECORD
    from ..pretraining import PretrainSettings

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
    add_settings(p, PretrainSettings, {
        "alpha": "language sampling exponent: p_i ∝ q_i^alpha, q_i the language's share of the tokens "
        "(default %(default)s)",
        "mt_ratio": "share of MT examples when there are parallel data (default %(default)s)",
    })
    add_settings(p, NoiseConfig, {  # the DAE noise; defaults are mBART's
        "mask_ratio": "text infilling: share of tokens masked (default %(default)s)",
        "poisson_lambda": "text infilling: mean span length (default %(default)s)",
        "deletion_ratio": "token deletion: share of tokens deleted (default %(default)s)",
        "permute_sentences": "do not shuffle sentences before infilling",
    }, names={"permute_sentences": "--no-sentence-permutation"})
    add_settings(p, PretrainSettings, {
        "max_source_length": "tokens (default: the tokenizer's limit, at most 512)",
        "max_target_length": "tokens (default: the tokenizer's limit, at most 512)",
        "on_bad_record": ON_BAD_RECORD_HELP,
    }, choices={"on_bad_record": ON_BAD_RECORD})
    add_training_args(p, max_steps=10000, lr=1e-4, batch_size=8, warmup="5%% of --max-steps",
                       scheduled_sampling="linear (the paper's method)")
    add_overwrite(p)
    p.set_defaults(func=_pretrain)


def _pretrain(args) -> int:
    from ..data.noise import NoiseConfig
    from ..io import check_model_dir, output_directory
    from ..pretraining import SCHEDULED_SAMPLING, PretrainSettings, default_warmup_steps, pretrain
    from ..training import distributed_state

    if not args.mono and not args.parallel:
        raise UsageError("pretrain needs data: --mono and/or --parallel")
    langs = language_list(args.langs) or None
    noise = NoiseConfig(**settings_for(NoiseConfig, vars(args)))
    settings = PretrainSettings(**{**settings_for(PretrainSettings, vars(args)), "langs": langs, "noise": noise})
    config = training_config(args, default_warmup_steps(args.max_steps), SCHEDULED_SAMPLING)
    check_model_dir(args.model, ["swcm"], "an SWCM model (swcm build makes one)")
    check_resume(args)
    with output_directory(args.out, "pretrain", args.overwrite):
        result = pretrain(args.model, config, settings)
    if distributed_state().is_main_process:
        last = f"; loss {result.history[-1]['loss']:.3f}" if result.history else ""
        print(f"pretrained {result.step} steps{last}; final model in {result.final_dir}")
    return 0


def _add_finetune(sub) -> None:
    from ..data.readers import ON_BAD_RECORD, TASK_FIELDS
    from ..finetuning import DEFAULT_METRIC, EVAL_METRICS, FinetuneSettings
    from ..lora import LoraSettings
    from ..training import TrainingConfig

    p = sub.add_parser("finetune", help="fine-tune for summarisation (sum), reading comprehension (mrc) or translation (mt)")
    p.add_argument("--task", required=True, choices=list(TASK_FIELDS),
                   help="sum: summarisation, mrc: reading comprehension, mt: translation (the fields each task's JSONL "
                   "holds: docs/reference/data-formats.md)")
    p.add_argument("--model", required=True, help="a built or pretrained SWCM model directory")
    p.add_argument("--train", required=True, help="training JSONL (file, glob or directory)")
    p.add_argument("--valid", help="validation JSONL: scored every --eval-every steps, keeps OUT/best")
    p.add_argument("--out", required=True, help="output directory")
    add_field_flag(p)
    p.add_argument("--train-size", type=int, help="use N training records, drawn with --seed, each language keeping its share")
    add_settings(p, FinetuneSettings, {
        "max_source_length": "source tokens kept (default %(default)s)",
        "max_target_length": "target tokens kept (default %(default)s)",
        "on_bad_record": ON_BAD_RECORD_HELP,
        "alpha": "language sampling exponent: p_i ∝ q_i^alpha, q_i the language's share of the training records "
        "(default %(default)s: each record once an epoch; below 1 smaller languages come more often)",
    }, choices={"on_bad_record": ON_BAD_RECORD})
    add_settings(p, TrainingConfig, {
        "eval_every": "validate every N steps (default %(default)s)",
        "metric": "selects OUT/best: ROUGE-L F or chrF++ (sacrebleu's) of validation decoding, averaged over "
        "languages, or the validation loss",
        "patience": "stop after N validations without improvement",
    }, defaults={"eval_every": 200, "metric": DEFAULT_METRIC}, choices={"metric": list(EVAL_METRICS)})
    add_settings(p, FinetuneSettings, {
        "max_valid_examples": "validation records generated for, drawn with --seed, each language keeping its "
        "share (default %(default)s; 0: all)",
    }, names=FINETUNE_FLAG_NAMES)
    add_settings(p.add_argument_group("LoRA (peft; docs/lora.md)"), LoraSettings, {
        "lora": "train LoRA adapters (and the Normal layers) instead of every weight; OUT/best and OUT/final are then "
        "adapter directories, which generate, evaluate and serve load merged (swcm merge writes the merged model)",
        "lora_r": "adapter rank (default %(default)s)",
        "lora_alpha": "adapter scale numerator: updates are scaled by alpha / rank (default %(default)s)",
        "lora_dropout": "dropout on the adapters' input (default %(default)s)",
        "lora_targets": "linear layers to adapt, by name (a module named N or ending in .N), comma-separated "
        "(default %(default)s: every attention and FFN projection of encoder and decoder)",
        "lora_full": "modules trained in full beside the adapters, comma-separated: normal (the random-initialised "
        "Normal decoder layers), embeddings (the word embeddings), head (with embeddings when they are tied); or none "
        "(default %(default)s)",
    })
    p.add_argument("--num-beams", type=int, default=1, help="beams for validation generation")
    p.add_argument("--max-new-tokens", type=int, help="for validation generation (default: --max-target-length)")
    # lr 5e-4, not the paper's 1e-4: at 1e-4 a model built from a small encoder barely moves in a
    # short run (ws on e5-small's first 3 layers, 40 steps: validation loss 8.16 at 1e-4, 7.41 at
    # 5e-4; docs/ws-on-e5.md, "Library defaults").
    add_training_args(p, max_steps=2000, lr=5e-4, batch_size=16)
    add_overwrite(p)
    p.set_defaults(func=_finetune)


def _finetune(args) -> int:
    from ..finetuning import FinetuneSettings, finetune
    from ..io import check_model_dir, output_directory
    from ..lora import LoraSettings

    check_at_least(args, FINETUNE_FLAG_NAMES, train_size=1, max_valid_examples=0, num_beams=1, max_new_tokens=1)
    settings = FinetuneSettings(**{
        **settings_for(FinetuneSettings, vars(args)), "field_map": field_map(args.field),
        "max_valid_examples": args.max_valid_examples or None,
        "generation": {"num_beams": args.num_beams,
                       **({} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens})},
    })
    config = training_config(args)
    check_model_dir(args.model, ["swcm"], "an SWCM model (swcm build makes one)")
    check_resume(args)
    with output_directory(args.out, "finetune", args.overwrite):
        result = finetune(args.model, args.train, args.valid, config, settings, train_size=args.train_size,
                          lora=LoraSettings(**settings_for(LoraSettings, vars(args))))
    best = f"; best {config.metric} {result.best_metric:.4g} at step {result.best_step} in {result.best_dir}" if result.best_dir else ""
    print(f"fine-tuned {result.step} steps; final model in {result.final_dir}{best}")
    if result.averaged_dir is not None:
        scored = (f"; validation {config.metric} {result.averaged_metrics[config.metric]:.4g}"
                  if result.averaged_metrics else "")
        print(f"averaged steps {', '.join(map(str, result.averaged_steps))} into {result.averaged_dir}{scored}")
    return 0


# Its subcommands, in workflow order.
SUBCOMMANDS = [_add_build, _add_pretrain, _add_finetune]
