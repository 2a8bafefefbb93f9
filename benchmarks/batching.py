"""Padding waste: fine-tuning with and without length-grouped batches, on vendored corpora.

For each corpus (the LibreOffice UI strings; UDHR, the demo's fine-tuning data) it writes the
translation task files the demo writes (pivot zh → every other language), trains a SentencePiece
tokenizer on the corpus, encodes the training records as fine-tuning does (up to --max-length
source and target tokens), and trains a small SWCM model (the stand-in encoder's shape, random
weights) for the same number of steps with each batching. Printed per
run: the padding share of the batches and real (non-padding) tokens per second, both as the
training loop logs them in log.jsonl, for three batchings: random order, length-grouped batches
of a fixed count, and length-grouped batches cut by a token budget (`max_tokens`).

    python benchmarks/batching.py [--corpus libreoffice udhr] [--steps 30] [--batch 16] [--max-tokens 192]
    python benchmarks/batching.py --corpus libreoffice --targets ug kk mn --max-length 32   # the demo's data
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, XLMRobertaConfig

from swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.encoders.tiny_encoder import TinyEncoderSettings, train_tokenizer
from swcm.experiments import prepare_vendored_data
from swcm.finetuning import FinetuneSettings, encode_records, read_task_pairs
from swcm.records import append_record
from swcm.resources import CORPORA
from swcm.tokenization import add_language_tags
from swcm.training import TrainingConfig, train


def corpus_examples(corpus: str, root: Path, max_length: int, targets: list[str] | None):
    """(tokenizer, records, settings): the corpus's zh → x training records as the demo writes them."""
    _langs, read = CORPORA[corpus]
    data = prepare_vendored_data(corpus, root / "data", targets=targets)
    texts = [t for unit in read("train") for t in unit["text"].values()]
    tokenizer = train_tokenizer(texts, root / "tokenizer", vocab_size=TinyEncoderSettings.vocab_size, model_max_length=512)
    settings = FinetuneSettings(task="mt", max_source_length=max_length, max_target_length=max_length)
    records = read_task_pairs(data["train"], tokenizer, settings)
    return tokenizer, records, settings


def small_model(tokenizer) -> SWCMForConditionalGeneration:
    s = TinyEncoderSettings()
    encoder = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
        intermediate_size=4 * s.hidden, max_position_embeddings=s.max_positions, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return SWCMForConditionalGeneration(SWCMConfig(encoder=encoder.to_dict()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=["libreoffice", "udhr"], choices=sorted(CORPORA))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="examples per step (the demo's 16)")
    parser.add_argument("--max-tokens", type=int, default=192,
                        help="the token budget of the third run (padded positions per batch; the demo's 192)")
    parser.add_argument("--max-length", type=int, default=128, help="source and target length limit (the demo: 32)")
    parser.add_argument("--targets", nargs="+", help="target languages (default: all of the corpus'; the demo: ug kk mn)")
    parser.add_argument("--mixed-precision", default="auto")
    args = parser.parse_args()
    runs = {"random order": {"group_by_length": False},
            f"length-grouped, {args.batch} a batch": {"group_by_length": True},
            f"length-grouped, {args.max_tokens} tokens a batch": {"group_by_length": True, "max_tokens": args.max_tokens}}
    for corpus in args.corpus:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            tokenizer, records, settings = corpus_examples(corpus, root, args.max_length, args.targets)
            results = {}
            for name, batching in runs.items():
                model = small_model(tokenizer)
                add_language_tags(model, tokenizer, sorted({r.target_lang for r in records}))
                examples = encode_records(tokenizer, records, settings)
                out = root / f"run-{len(results)}"
                config = TrainingConfig(out_dir=out, max_steps=args.steps, batch_size=args.batch, log_every=args.steps,
                                        save_every=args.steps, progress=False, mixed_precision=args.mixed_precision,
                                        **batching)
                train(model, tokenizer, examples, config, DataCollatorForSeq2Seq(tokenizer))
                results[name] = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
            first = next(iter(results.values()))
            print(f"{corpus}: {len(records)} zh -> x fine-tuning records, lengths up to {args.max_length}, "
                  f"{args.steps} steps, mixed precision {first['mixed_precision']}")
            for name, record in results.items():
                print(f"  {name:32s}: padding {100 * record['padding_share']:5.1f} %, {record['tokens_per_s']:7.0f} tokens/s "
                      f"({record['tokens_per_s'] / first['tokens_per_s']:.2f}x)")
            append_record("batching", {"settings": {**vars(args), "corpus": corpus}, "records": len(records), **{
                f"{name}: {key}": round(record[key] * (100 if key == "padding_share" else 1), 1)
                for name, record in results.items() for key in ("padding_share", "tokens_per_s")}},
                precision=first["mixed_precision"])


if __name__ == "__main__":
    main()
