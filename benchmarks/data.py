"""Data path against the model: pretraining examples produced per second vs. consumed per second.

Builds a pretraining stream over real text (the vendored UDHR in zh, bo, ug, kk, mn and en:
monolingual documents of several articles each, so long ones are cut into chunks, plus zh–x
pairs), with a SentencePiece tokenizer trained on the same text, and counts the noised,
tokenised examples it yields per second in this process. In the same run it times a training
step (forward + backward) of a base-shaped SWCM (XLM-R base encoder, 15-layer decoder, the
tokenizer's vocabulary) on a batch of those very examples, and prints examples/s of both and
their ratio. A ratio above 1 means one data process keeps the model fed; the data path must
never be what the accelerator waits for.

    python benchmarks/data.py [--batch 8] [--length 256] [--device cpu|cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, XLMRobertaConfig

from swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.data import PretrainingStream
from swcm.records import append_record
from swcm.resources import UDHR_LANGS, udhr
from swcm.encoders.tiny_encoder import train_tokenizer
from swcm.tokenization import add_language_tags

PIVOT = "zh"


def write_corpus(root: Path, articles_per_document: int) -> tuple[list[str], list[str]]:
    """UDHR as plain-text documents per language and zh–x TSV pairs; returns (mono, parallel) specs."""
    units = [u for split in ("train", "valid", "test") for u in udhr(split)]
    mono, parallel = [], []
    for lang in UDHR_LANGS:
        docs = [" ".join(u["text"][lang] for u in units[i : i + articles_per_document])
                for i in range(0, len(units), articles_per_document)]
        (root / f"{lang}.txt").write_text("".join(d + "\n" for d in docs), encoding="utf-8")
        mono.append(f"{lang}={root / f'{lang}.txt'}")
        if lang != PIVOT:
            pairs = "".join(f"{u['text'][PIVOT]}\t{u['text'][lang]}\n" for u in units)
            (root / f"{PIVOT}-{lang}.tsv").write_text(pairs, encoding="utf-8")
            parallel.append(f"{PIVOT}-{lang}={root / f'{PIVOT}-{lang}.tsv'}")
    return mono, parallel


def base_model(vocab_size: int) -> SWCMForConditionalGeneration:
    encoder = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
    )
    torch.manual_seed(0)
    return SWCMForConditionalGeneration(SWCMConfig(encoder=encoder.to_dict()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="examples per training step")
    parser.add_argument("--length", type=int, default=256, help="max source and target length in tokens")
    parser.add_argument("--mt-fraction", type=float, default=0.1)
    parser.add_argument("--data-seconds", type=float, default=10.0, help="how long to draw examples")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps (the fastest counts)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary bound")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="autocast dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mono, parallel = write_corpus(root, articles_per_document=6)
        texts = [t for split in ("train", "valid", "test") for u in udhr(split) for t in u["text"].values()]
        tokenizer = train_tokenizer(texts, root / "tokenizer", vocab_size=args.vocab_size)
        model = base_model(len(tokenizer))
        add_language_tags(model, tokenizer, UDHR_LANGS)
        stream = PretrainingStream(
            tokenizer, mono, parallel, mt_fraction=args.mt_fraction,
            max_source_length=args.length, max_target_length=args.length, seed=0,
        )

        # --- data: noised, tokenised examples per second (one process, as training runs it)
        examples = iter(stream)
        batch_examples = list(islice(examples, args.batch))  # also warms the tokenizer and readers
        produced, source_tokens, target_tokens = 0, 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < args.data_seconds:
            for example in islice(examples, 100):
                produced += 1
                source_tokens += len(example["input_ids"])
                target_tokens += len(example["labels"])
        data_time = time.perf_counter() - start
        data_rate = produced / data_time

        # --- model: one training step (forward + backward) on a batch of the stream's examples,
        # padded to the full length so that the step is the worst case for the model
        batch = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=args.length)(batch_examples)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        model.to(args.device).train()
        dtype = getattr(torch, args.dtype)
        device_type = "cuda" if args.device.startswith("cuda") else "cpu"

        def step(inputs: dict) -> float:
            if device_type == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            with torch.autocast(device_type, dtype=dtype, enabled=args.dtype != "float32"):
                loss = model(**inputs).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            if device_type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - begin

        step({k: v[:1, :32] for k, v in batch.items()})  # warm-up on a small slice: a full CPU step takes minutes
        step_time = min(step(batch) for _ in range(args.steps))
        model_rate = args.batch / step_time

    n_params = sum(p.numel() for p in model.parameters())
    print(f"data : {data_rate:9.1f} examples/s  ({produced} examples in {data_time:.1f} s; "
          f"{source_tokens / produced:.0f} source + {target_tokens / produced:.0f} target tokens each; "
          f"{len(stream.probabilities)} streams, MT share {args.mt_fraction:.0%})")
    print(f"model: {model_rate:9.1f} examples/s  ({n_params / 1e6:.1f}M parameters, vocabulary {len(tokenizer):,}; "
          f"batch {args.batch} x {args.length} -> {args.length}, {args.dtype} autocast, {args.device}; "
          f"forward+backward {step_time:.2f} s/step)")
    print(f"ratio: {data_rate / model_rate:9.1f}x  (data produced / consumed per second; must stay above 1)")
    append_record("data", {"settings": vars(args), "data_examples_per_s": round(data_rate, 1),
                           "model_examples_per_s": round(model_rate, 1), "step_s": round(step_time, 3),
                           "data_over_model": round(data_rate / model_rate, 1)},
                  precision=f"{args.dtype} autocast, {args.device}")


if __name__ == "__main__":
    main()
