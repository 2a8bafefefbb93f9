"""What the automatic precision choice buys: the stand-in encoder's MLM training in fp32, in
bf16 autocast and in `auto`, timed in the same run.

The stand-in encoder (`swcm tiny-encoder`, the demo's fallback when the e5 wheel cannot be
installed) once hard-coded bf16 autocast. On a CPU without bf16 matrix units (an AMD EPYC
without AVX512-BF16) bf16 runs emulated, about 150x slower than fp32, and that stage alone took
most of an hour. `auto` (swcm.precision) now measures and picks. This benchmark trains the same
model on the same batches (the vendored UDHR train split, seed 0) for `--steps` steps in each
precision and prints s/step, the ratio to fp32, and what `auto` chose and why.

A CPU without fast bf16 can be imitated on one with it: oneDNN, which runs torch's CPU matrix
products, can be told to use no instruction set newer than AVX2, so its bf16 products run
emulated:

    python benchmarks/precision.py                               # this CPU as it is
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/precision.py       # as a CPU without bf16 units
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

import torch

from swcm.encoders.tiny_encoder import TinyEncoderSettings, _masked_lm, _train_mlm, train_tokenizer
from swcm.precision import auto_mixed_precision, cpu_name, matmul_gflops
from swcm.records import append_record
from swcm.resources import udhr


def time_mlm(tokenizer, texts: list[str], settings: TinyEncoderSettings, dtype: torch.dtype) -> tuple[float, float]:
    """(seconds per step, last loss) of `settings.steps` MLM steps in `dtype`, after one warm-up step."""
    warm = replace(settings, steps=1)
    _train_mlm(_masked_lm(warm, tokenizer), tokenizer, texts, warm, dtype, progress=False)
    model = _masked_lm(settings, tokenizer)
    start = time.perf_counter()
    losses = _train_mlm(model, tokenizer, texts, settings, dtype, progress=False)
    return (time.perf_counter() - start) / settings.steps, losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed MLM steps per precision (default 8)")
    parser.add_argument("--hidden", type=int, default=TinyEncoderSettings.hidden)
    parser.add_argument("--layers", type=int, default=TinyEncoderSettings.layers)
    args = parser.parse_args()
    settings = TinyEncoderSettings(steps=args.steps, hidden=args.hidden, layers=args.layers)
    texts = [text for unit in udhr("train") for text in unit["text"].values()]

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f"; ONEDNN_MAX_CPU_ISA={isa}" if isa else ""))
    print(f"matmul here: fp32 {matmul_gflops(torch.float32, size=512, budget_s=0.3):.0f} GFLOP/s, "
          f"bf16 {matmul_gflops(torch.bfloat16, size=512, budget_s=0.3):.0f} GFLOP/s")
    choice = auto_mixed_precision("cpu")
    print(f"auto chooses: {choice.mixed_precision} ({choice.reason})")
    print(f"stand-in encoder MLM: hidden {settings.hidden}, {settings.layers} layers, batch {settings.batch_size} "
          f"x {settings.max_length} tokens, {settings.steps} timed steps each")

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(texts, tmp, settings.vocab_size, model_max_length=settings.max_positions - 2)
        runs = {"fp32": torch.float32, "bf16": torch.bfloat16, f"auto ({choice.mixed_precision})": choice.dtype}
        seconds = {}
        for name, dtype in runs.items():
            seconds[name], loss = time_mlm(tokenizer, texts, settings, dtype)
            print(f"  {name:10s}: {seconds[name]:7.3f} s/step ({seconds['fp32'] / seconds[name]:.2f}x fp32), "
                  f"loss after {settings.steps} steps {loss:.4f}")
    append_record("precision", {"settings": {**vars(args), "ONEDNN_MAX_CPU_ISA": isa}, "auto chooses": choice.mixed_precision,
                                **{f"{name} s/step": round(s, 3) for name, s in seconds.items()}},
                  precision=choice.mixed_precision)


if __name__ == "__main__":
    main()
