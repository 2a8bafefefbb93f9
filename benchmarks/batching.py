"""Padding waste: fine-tuning with and without length-grouped batches, on vendored corpora.

For each corpus (the LibreOffice UI strings; UDHR, the demo's fine-tuning data) it writes the
translation task files the demo writes (pivot zh → every other language), trains a SentencePiece
tokenizer on the corpus, encodes the training records as fine-tuning does (demo lengths:
128 source and target tokens), and trains a small SWCM model (the stand-in encoder's shape,
random weights) for the same number of steps with `group_by_length` off and on. Printed per
run: the padding share of the batches and real (non-padding) tokens per second, both as the
training loop logs them in log.jsonl, and the speed-up.

    python benchmarks/batching.py [--corpus libreoffice udhr] [--steps 30] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import XLMRobertaConfig

from swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.data import Seq2SeqCollator
from swcm.encoders.tiny_encoder import TinyEncoderSettings, train_tokenizer
from swcm.experiments import prepare_vendored_data
from swcm.finetuning import FinetuneSettings, encode_records, read_task_pairs
from swcm.resources import CORPORA
from swcm.tokenization import add_language_tags
from swcm.training import TrainingConfig, train


def corpus_examples(corpus: str, root: Path):
    """(tokenizer, examples) for the corpus's zh → x training records, encoded as `swcm finetune` does."""
    langs, read = CORPORA[corpus]
    data = prepare_vendored_data(corpus, root / "data")
    texts = [t for unit in read("train") for t in unit["text"].values()]
    tokenizer = train_tokenizer(texts, root / "tokenizer", vocab_size=TinyEncoderSettings.vocab_size, model_max_length=512)
    settings = FinetuneSettings(task="mt", max_source_length=128, max_target_length=128)
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
    parser.add_argument("--mixed-precision", default="auto")
    args = parser.parse_args()
    for corpus in args.corpus:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            tokenizer, records, settings = corpus_examples(corpus, root)
            results = {}
            for group in (False, True):
                model = small_model(tokenizer)
                add_language_tags(model, tokenizer, sorted({r.target_lang for r in records}))
                examples = encode_records(tokenizer, records, settings)
                config = TrainingConfig(
                    out_dir=root / f"run-{group}", max_steps=args.steps, batch_size=args.batch, log_every=args.steps,
                    save_every=args.steps, progress=False, group_by_length=group, mixed_precision=args.mixed_precision,
                )
                result = train(model, tokenizer, examples, config, Seq2SeqCollator(tokenizer))
                results[group] = json.loads((root / f"run-{group}" / "log.jsonl").read_text().splitlines()[-1])
                del result
            print(f"{corpus}: {len(records)} zh -> x fine-tuning records, batch {args.batch}, {args.steps} steps, "
                  f"mixed precision {results[True]['mixed_precision']}")
            for group, record in results.items():
                print(f"  {'length-grouped' if group else 'random order  '}: padding {100 * record['padding_share']:5.1f} %, "
                      f"{record['tokens_per_s']:7.0f} tokens/s")
            print(f"  speed-up {results[True]['tokens_per_s'] / results[False]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
