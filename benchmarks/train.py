"""Training speed against Hugging Face MBart: one optimizer step, per token and per FLOP.

Builds an SWCM model (XLM-R-shaped encoder, random weights) and a transformers MBart of the
same width and depth (as many encoder layers, as many decoder layers as SWCM's decoder, the
same FFN size, vocabulary and dropout, SDPA attention, untied head), and times one optimizer
step — forward, backward, gradient clipping, AdamW — of each on the same batch, alternating,
in fp32 and under bf16 autocast (fp32 master weights, as accelerate runs it). SWCM's step is
the training loop's own (`swcm.training.training_loss`).

Printed per precision: tokens/s (source + target), the SWCM/MBart ratio, FLOPs per step
(matrix products counted by torch's FlopCounterMode, attention added analytically), the ratio
per FLOP (SWCM's FLOP/s over MBart's), achieved GFLOP/s and its share of a plain matrix
product's rate measured in the same run (`--device cuda`: MFU, the share of the GPU's dense
bf16 peak). Speed is noisy on a shared machine: the best of `--steps` timed steps is used.

With `--loss-ratio` it times SWCM's step only, alternating its loss's cross-entropy between
`swcm.loss.token_cross_entropy` (float32 a chunk of rows at a time, the softmax computed again
in the backward) and torch's `F.cross_entropy` on the float32 logits with autograd (the plain
path, which keeps float32 log-probabilities of every row for the backward), in each precision,
and prints the ratio of the two; `--record` appends the figures to benchmarks/records/train.jsonl.

With `--attention` it times SWCM's step only, alternating the training loop's attention kernels
(`swcm.precision.training_attention`: SDPA's math kernel for bf16 on a CPU) with SDPA's own
choice (flash attention on a CPU), in each precision, and prints the ratio; `--record` appends it.
With `--demo-run DIR` it does so on a finished demo's pretrained `ws` model and the first
`--steps` batches of its fine-tuning (many shapes, as the demo trains) instead.

With `--workers 0,2` it times the whole training loop instead (`swcm.training.train`: batching,
DAE noise, collation, copies to the device, forward, backward, AdamW) on the demo's pretraining
(the vendored LibreOffice text in zh, ug, kk, mn and dz, monolingual and zh–x pairs, half MT,
batches of 768 padded tokens grouped by length, 32-token sources and targets, a SentencePiece
tokenizer trained on the same text) with each number of DataLoader workers, and prints the
loop's tokens/s (the median over its steps after the first `--warmup`) and the wall time.

With `--omp-wait` it times SWCM's step in child processes started alternately with libgomp's
default wait (threads spin ~300,000 rounds before sleeping; GOMP_SPINCOUNT=300000 set to keep
a user's choice out) and with the passive wait (OMP_WAIT_POLICY=PASSIVE), `--rounds` of each, and prints the ratio in each precision by best and median steps with
the CPU and the load average named (the setting is read once per process, so no single process can
alternate it); `--record` appends the figures.

    python benchmarks/train.py                       # small shape, a few minutes on 2 cores
    python benchmarks/train.py --shape demo --omp-wait --batch 48 --source-length 16 --target-length 16 --record
    python benchmarks/train.py --shape demo --workers 0,2 --steps 30
    python benchmarks/train.py --shape demo --attention --batch 48 --source-length 16 --target-length 16 --record
    python benchmarks/train.py --attention --demo-run swcm-demo --steps 20 --record
    python benchmarks/train.py --shape demo --loss-ratio --batch 48 --source-length 16 --target-length 16 --record
    python benchmarks/train.py --shape base --batch 8 --source-length 128 --target-length 128
    python benchmarks/train.py --device cuda --shape base --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DataCollatorForSeq2Seq, MBartConfig, MBartForConditionalGeneration, XLMRobertaConfig

from swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.precision import cpu_name, matmul_gflops, resolve_mixed_precision, training_attention
from swcm.records import append_record
from swcm.training import TrainingConfig, parameter_groups, train, training_loss

SHAPES = {  # hidden, layers, heads, FFN, vocabulary
    "small": (256, 6, 4, 1024, 16000),
    "demo": (384, 3, 12, 1536, 17000),  # the demo's e5-small cut to 3 layers, vocabulary trimmed to ~17k
    "base": (768, 12, 12, 3072, 135135),  # CINO-base-v2 / XLM-R base
}
# Dense bf16 peaks (TFLOP/s) of common GPUs, for MFU; --peak-tflops for any other.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def swcm_model(shape: str, vocab_size: int | None, dropout: float | None = None
               ) -> tuple[SWCMForConditionalGeneration, XLMRobertaConfig]:
    """An SWCM model of `shape` (random weights) and its encoder's configuration; `dropout`
    (hidden and attention) replaces XLM-R's 0.1."""
    hidden, layers, heads, ffn, vocab = SHAPES[shape]
    drop = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    encoder = XLMRobertaConfig(
        vocab_size=vocab_size or vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=514, type_vocab_size=1, **drop,
    )
    torch.manual_seed(0)
    return SWCMForConditionalGeneration(SWCMConfig(encoder=encoder.to_dict())), encoder


def build_models(shape: str, vocab_size: int | None, dropout: float | None = None
                 ) -> tuple[SWCMForConditionalGeneration, MBartForConditionalGeneration]:
    swcm, encoder = swcm_model(shape, vocab_size, dropout)
    vocab, hidden, layers, heads, ffn = (encoder.vocab_size, encoder.hidden_size, encoder.num_hidden_layers,
                                         encoder.num_attention_heads, encoder.intermediate_size)
    mbart_config = MBartConfig(
        vocab_size=vocab, d_model=hidden, encoder_layers=layers, decoder_layers=len(swcm.decoder.layers),
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_position_embeddings=512, activation_function=encoder.hidden_act, dropout=encoder.hidden_dropout_prob,
        attention_dropout=encoder.attention_probs_dropout_prob, activation_dropout=0.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, tie_word_embeddings=False,
    )
    mbart_config._attn_implementation = "sdpa"
    mbart = MBartForConditionalGeneration(mbart_config)
    return swcm, mbart


def make_batch(args, vocab: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab, (args.batch, args.source_length), generator=gen)
    labels = torch.randint(5, vocab, (args.batch, args.target_length), generator=gen)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def loss_of(model, batch: dict) -> torch.Tensor:
    if isinstance(model, SWCMForConditionalGeneration):
        return training_loss(model, batch)[0]  # the training loop's own forward and loss
    return model(**batch, use_cache=False).loss


def attention_flops(model, batch: dict) -> int:
    """Forward + backward FLOPs of the attention products (QKᵀ and AV, 3 × forward) of every
    encoder self-attention, decoder self-attention and cross-attention; FlopCounterMode does
    not see inside the CPU SDPA kernels."""
    b, s = batch["input_ids"].shape
    t = batch["labels"].shape[1]
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or cfg.d_model
    if isinstance(model, SWCMForConditionalGeneration):
        enc_layers, dec_layers = cfg.encoder.num_hidden_layers, len(model.decoder.layers)
    else:
        enc_layers, dec_layers = cfg.encoder_layers, cfg.decoder_layers
    per_query_key = 3 * 2 * 2 * hidden  # fwd+bwd, two products, multiply-add
    return b * per_query_key * (enc_layers * s * s + dec_layers * (t * t + t * s))


def step_flops(model, batch: dict) -> int:
    with FlopCounterMode(display=False) as counter:
        loss_of(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() + attention_flops(model, batch)


def make_step(model, batch: dict, dtype: torch.dtype, device: str, swcm_attention: bool = True):
    """One optimizer step of `model` on `batch`. SWCM's forward runs with the training loop's
    attention kernels (`swcm.precision.training_attention`) unless `swcm_attention` is False;
    MBart's with SDPA's own choice, as transformers trains it."""
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, fused=True)
    ours = swcm_attention and isinstance(model, SWCMForConditionalGeneration)

    def step(this: dict | None = None) -> None:  # on `batch`, or on `this` batch
        autocast = torch.autocast(device, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        kernels = training_attention(device, dtype) if ours else contextlib.nullcontext()
        with autocast, kernels:
            loss = loss_of(model, batch if this is None else this)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, device: str, *args) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small", help="small (default), demo or base (XLM-R base)")
    parser.add_argument("--vocab-size", type=int, help="override the shape's vocabulary")
    parser.add_argument("--dropout", type=float, help="hidden and attention dropout (default XLM-R's 0.1; the demo trains with 0)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source-length", type=int, default=64)
    parser.add_argument("--target-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model and precision (after one warm-up)")
    parser.add_argument("--precision", default="no,bf16",
                        help="comma-separated: no (fp32), bf16, fp16, auto (default: no,bf16)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile one step of each model (torch.profiler) and print its N costliest ops")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (on a busy shared CPU, 1 is steadier)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (default: known GPUs)")
    parser.add_argument("--workers", help="comma-separated DataLoader worker counts: time the training loop on the "
                                          "demo's pretraining with each (e.g. 0,2) instead of one step")
    parser.add_argument("--warmup", type=int, default=3, help="with --workers: first steps left out of the median")
    parser.add_argument("--attention", action="store_true",
                        help="SWCM's step with the training loop's attention kernels against SDPA's own choice")
    parser.add_argument("--demo-run", metavar="DIR",
                        help="with --attention: time the pretrained ws model of a finished `swcm demo` in DIR on its "
                             "real fine-tuning batches instead of a synthetic shape")
    parser.add_argument("--loss-ratio", action="store_true",
                        help="SWCM's step with token_cross_entropy against F.cross_entropy on float32 logits")
    parser.add_argument("--omp-wait", action="store_true",
                        help="SWCM's step under libgomp's default (spinning) wait against the passive one, in child processes")
    parser.add_argument("--rounds", type=int, default=3, help="with --omp-wait: child processes per wait policy")
    parser.add_argument("--step-times", action="store_true", help=argparse.SUPPRESS)  # a child of --omp-wait
    parser.add_argument("--record", action="store_true", help="append the figures to benchmarks/records/train.jsonl")
    args = parser.parse_args()
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers:
        loop_with_workers(args, [int(n) for n in args.workers.split(",")])
        return
    if args.loss_ratio:
        loss_ratio(args)
        return
    if args.attention:
        attention_ratio(args)
        return
    if args.step_times:
        step_times(args)
        return
    if args.omp_wait:
        omp_wait_ratio(args)
        return

    swcm, mbart = build_models(args.shape, args.vocab_size, args.dropout)
    vocab = swcm.config.vocab_size
    batch = make_batch(args, vocab, device)
    tokens = args.batch * (args.source_length + args.target_length)
    models = {"swcm": swcm.to(device).train(), "mbart": mbart.to(device).train()}
    flops = {name: step_flops(model, batch) for name, model in models.items()}
    if args.compile:
        models = {name: torch.compile(model) for name, model in models.items()}

    where = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    hidden, layers, heads, ffn, _ = SHAPES[args.shape]
    print(f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads{', compiled' if args.compile else ''}")
    print(f"shape {args.shape}: hidden {hidden}, {layers} encoder layers, {len(swcm.decoder.layers)} decoder layers, "
          f"heads {heads}, FFN {ffn}, vocab {vocab}; batch {args.batch} x ({args.source_length} + "
          f"{args.target_length}) tokens, AdamW step included")
    print(f"parameters: swcm {_millions(swcm)}, mbart {_millions(mbart)}; "
          f"GFLOP/step: swcm {flops['swcm'] / 1e9:.1f}, mbart {flops['mbart'] / 1e9:.1f}")
    gemm = {dtype: matmul_gflops(dtype, device, size=2048 if device == "cuda" else 1024, budget_s=0.5)
            for dtype in (torch.float32, torch.bfloat16)}
    print(f"GEMM rate here: fp32 {gemm[torch.float32]:.0f} GFLOP/s, bf16 {gemm[torch.bfloat16]:.0f} GFLOP/s")
    peak = args.peak_tflops or next((v for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in where), None)

    for precision in args.precision.split(","):
        choice = resolve_mixed_precision(precision, device)
        dtype = choice.dtype
        steps = {name: make_step(model, batch, dtype, device) for name, model in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for name, step in steps.items():
            timed(step, device)  # warm-up (and compilation)
        for _ in range(args.steps):
            for name, step in steps.items():  # alternate, so both see the same machine load
                times[name].append(timed(step, device))
        best = {name: min(t) for name, t in times.items()}
        median = {name: statistics.median(t) for name, t in times.items()}
        name_of = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        print(f"\n{name_of[dtype]}" + (" (autocast)" if dtype != torch.float32 else "")
              + (f" [auto: {choice.reason}]" if precision == "auto" else ""))
        for name in models:
            rate = flops[name] / best[name] / 1e9
            line = (f"  {name:5s}: {tokens / best[name]:8.0f} tokens/s (median {tokens / median[name]:.0f}), "
                    f"{best[name]:.3f} s/step, {rate:7.1f} GFLOP/s")
            if dtype in gemm:
                line += f" = {100 * rate / gemm[dtype]:.0f} % of the {name_of[dtype]} GEMM rate"
            if peak:
                line += f", MFU {100 * rate / (peak * 1e3):.1f} % of {peak:.0f} TFLOP/s bf16"
            print(line)
        if args.profile:
            for name, step in steps.items():
                activities = [torch.profiler.ProfilerActivity.CPU]
                if device == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                with torch.profiler.profile(activities=activities) as prof:
                    step()
                sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
                print(f"  profile of one {name} step:")
                print(prof.key_averages().table(sort_by=sort, row_limit=args.profile, max_name_column_width=48))
        ratio = best["mbart"] / best["swcm"]
        per_flop = ratio * flops["swcm"] / flops["mbart"]
        ratio_median = median["mbart"] / median["swcm"]
        print(f"  swcm/mbart: {ratio:.2f} tokens/s (median {ratio_median:.2f}), "
              f"per FLOP {per_flop:.2f} (median {ratio_median * flops['swcm'] / flops['mbart']:.2f})")
        append_record("train", {"settings": {**vars(args), "precision": precision, "where": where},
                                **{f"{name} step s": round(best[name], 3) for name in models},
                                **{f"{name} GFLOP/s": round(flops[name] / best[name] / 1e9, 1) for name in models},
                                "swcm/mbart tokens/s": round(ratio, 2), "swcm/mbart per FLOP": round(per_flop, 2)},
                      precision=name_of[dtype])


def plain_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The summed cross-entropy by torch's autograd on the float32 logits: the plain path."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)


def ratio_figures(times: dict[str, list[float]], baseline: str, change: str, label: str, **context) -> dict:
    """Print and return the figures of `change` against `baseline` from their step times: each
    one's best and median step and the ratios (baseline over change, so above 1 means faster)."""
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    figures = {**context, **{f"{name}_s": round(best[name], 4) for name in times},
               **{f"{name}_median_s": round(median[name], 4) for name in times},
               "speedup": round(best[baseline] / best[change], 3),
               "speedup_median": round(median[baseline] / median[change], 3)}
    print(f"{label}: {change} {best[change]:.3f} s/step (median {median[change]:.3f}), {baseline} "
          f"{best[baseline]:.3f} (median {median[baseline]:.3f}): {figures['speedup']:.2f}x by best steps, "
          f"{figures['speedup_median']:.2f}x by medians")
    return figures


def loss_ratio(args) -> None:
    """SWCM's step with each cross-entropy, alternating, in each precision; the ratio of the two."""
    from swcm import modeling
    from swcm.loss import token_cross_entropy

    device = args.device
    model, _ = swcm_model(args.shape, args.vocab_size, args.dropout)
    model = model.to(device).train()
    batch = make_batch(args, model.config.vocab_size, device)
    where = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    print(f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads; shape {args.shape}, "
          f"batch {args.batch} x ({args.source_length} + {args.target_length}) tokens, AdamW step included")
    losses = {"one-pass": token_cross_entropy, "plain": plain_cross_entropy}
    for precision in args.precision.split(","):
        choice = resolve_mixed_precision(precision, device)
        step = make_step(model, batch, choice.dtype, device)
        times: dict[str, list[float]] = {name: [] for name in losses}
        for round_ in range(args.steps + 1):
            for name, loss in losses.items():  # alternate, so both see the same machine load
                modeling.token_cross_entropy = loss
                elapsed = timed(step, device)
                if round_:  # the first round warms up
                    times[name].append(elapsed)
        modeling.token_cross_entropy = token_cross_entropy
        figures = ratio_figures(times, "plain", "one-pass", choice.mixed_precision, shape=args.shape,
                                batch=[args.batch, args.source_length, args.target_length],
                                threads=torch.get_num_threads(), steps=args.steps)
        if args.record:
            from swcm.records import append_record

            append_record("train", {"what": "loss ratio", **figures}, precision=choice.mixed_precision)


def attention_ratio(args) -> None:
    """SWCM's step with the training loop's attention kernels against SDPA's own choice,
    alternating, in each precision; the ratio of the two."""
    device = args.device
    where = cpu_name() if device == "cpu" else torch.cuda.get_device_name()
    if args.demo_run:
        model, batches = demo_finetuning_batches(args.demo_run, args.steps + 1)
        model = model.to(device).train()
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        shape = {"shape": "demo run", "batches": "the demo's first fine-tuning batches"}
        print(f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads; the demo's pretrained ws "
              f"({_millions(model)} parameters) on its first {len(batches)} fine-tuning batches (768 padded tokens, "
              "one warm-up), AdamW step included")
    else:
        model, _ = swcm_model(args.shape, args.vocab_size, args.dropout)
        model = model.to(device).train()
        batches = [make_batch(args, model.config.vocab_size, device)] * (args.steps + 1)
        shape = {"shape": args.shape, "batch": [args.batch, args.source_length, args.target_length]}
        print(f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads; shape {args.shape}, batch "
              f"{args.batch} x ({args.source_length} + {args.target_length}) tokens, AdamW step included")
    for precision in args.precision.split(","):
        choice = resolve_mixed_precision(precision, device)
        steps = {"sdpa": make_step(model, batches[0], choice.dtype, device, swcm_attention=False),
                 "training": make_step(model, batches[0], choice.dtype, device)}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for round_, batch in enumerate(batches):
            for name, step in steps.items():  # alternate, so both see the same machine load and batch
                elapsed = timed(step, device, batch)
                if round_:  # the first round warms up
                    times[name].append(elapsed)
        figures = ratio_figures(times, "sdpa", "training", choice.mixed_precision, what="attention kernels",
                                **shape, threads=torch.get_num_threads(), steps=args.steps)
        if args.record:
            append_record("train", figures, precision=choice.mixed_precision)


def demo_finetuning_batches(demo_dir: str, n: int) -> tuple[SWCMForConditionalGeneration, list[dict]]:
    """The pretrained `ws` model of a finished `swcm demo` run in `demo_dir` (with its language
    tags) and the first `n` batches its fine-tuning reads (seed 0, 768 padded tokens, grouped by
    length), as `swcm finetune` collates them."""
    from transformers import AutoTokenizer

    from swcm.data.batching import DataCursor, RankBatchSampler
    from swcm.finetuning import FinetuneSettings, encode_records, read_task_pairs
    from swcm.tokenization import add_language_tags

    root = Path(demo_dir)
    model_dir = next(iter(sorted((root / "pretrain").glob("ws-*/final"))), None)
    if model_dir is None:
        raise SystemExit(f"{root}: no pretrain/ws-*/final; run `swcm demo --out {root}` first")
    model = SWCMForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    settings = FinetuneSettings(task="mt", max_source_length=32, max_target_length=32)
    records = read_task_pairs(root / "data" / "mt" / "train.jsonl", tokenizer, settings)
    add_language_tags(model, tokenizer, sorted({r.target_lang for r in records}))
    examples = encode_records(tokenizer, records, settings)
    indices = iter(RankBatchSampler(DataCursor(examples, 0, True, True, 768), 8, 1, 0))
    collate = DataCollatorForSeq2Seq(tokenizer)
    return model, [collate([examples[i] for i in next(indices)]) for _ in range(n)]


def step_times(args) -> None:
    """Print, as one JSON line, the times of `--steps` SWCM steps (after one warm-up) in each precision."""
    model, _ = swcm_model(args.shape, args.vocab_size, args.dropout)
    model = model.to(args.device).train()
    batch = make_batch(args, model.config.vocab_size, args.device)
    times = {}
    for precision in args.precision.split(","):
        choice = resolve_mixed_precision(precision, args.device)
        step = make_step(model, batch, choice.dtype, args.device)
        timed(step, args.device)
        times[choice.mixed_precision] = [timed(step, args.device) for _ in range(args.steps)]
    print(json.dumps(times))


# libgomp's wait before a thread sleeps when OMP_WAIT_POLICY is unset (its documented default),
# set explicitly so that the "spinning" runs do not depend on the environment the benchmark starts in.
OMP_WAITS = {"spinning": {"GOMP_SPINCOUNT": "300000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def omp_wait_ratio(args) -> None:
    """SWCM's step in child processes under each OpenMP wait, alternating; the ratio per precision."""
    flags = ["--shape", args.shape, "--batch", str(args.batch), "--source-length", str(args.source_length),
             "--target-length", str(args.target_length), "--steps", str(args.steps), "--precision", args.precision,
             "--device", args.device] + (["--vocab-size", str(args.vocab_size)] if args.vocab_size else []) + (
             ["--threads", str(args.threads)] if args.threads else [])
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    times: dict[str, dict[str, list[float]]] = {wait: {} for wait in OMP_WAITS}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for wait, env in OMP_WAITS.items():  # alternate, so both see the same machine load
            out = subprocess.run([sys.executable, __file__, "--step-times", *flags], env={**base, **env},
                                 capture_output=True, text=True, check=True).stdout
            for precision, values in json.loads(out.strip().splitlines()[-1]).items():
                times[wait].setdefault(precision, []).extend(values)
            loads.append(os.getloadavg()[0])
    threads = args.threads or os.cpu_count()
    print(f"{cpu_name()}; torch {torch.__version__}, {threads} threads; shape {args.shape}, batch {args.batch} x "
          f"({args.source_length} + {args.target_length}) tokens, AdamW step included; {args.rounds} processes x "
          f"{args.steps} steps per wait; 1-min load average {min(loads):.1f}-{max(loads):.1f}")
    for precision in times["passive"]:
        figures = ratio_figures({wait: t[precision] for wait, t in times.items()}, "spinning", "passive", precision,
                                what="omp wait ratio", shape=args.shape,
                                batch=[args.batch, args.source_length, args.target_length], threads=threads,
                                processes=args.rounds, steps=args.steps,
                                load_average=[round(min(loads), 2), round(max(loads), 2)])
        if args.record:
            from swcm.records import append_record

            append_record("train", figures, precision=precision)


def loop_with_workers(args, workers: list[int]) -> None:
    """The training loop on the demo's pretraining data and settings, once per worker count."""
    from swcm.data import PretrainingStream
    from swcm.encoders.tiny_encoder import train_tokenizer
    from swcm.experiments import prepare_vendored_data
    from swcm.tokenization import add_language_tags

    with tempfile.TemporaryDirectory(prefix="swcm-loop-") as tmp:
        root = Path(tmp)
        data = prepare_vendored_data("libreoffice", root / "data", targets=["ug", "kk", "mn", "dz"])
        texts = [line for spec in data["mono"] for line in Path(spec.split("=", 1)[1]).read_text(encoding="utf-8").splitlines()]
        tokenizer = train_tokenizer(texts, root / "tokenizer", vocab_size=8000)
        langs = data["langs"]
        model, _ = swcm_model(args.shape, max(args.vocab_size or SHAPES[args.shape][4], len(tokenizer) + len(langs)))
        add_language_tags(model, tokenizer, langs)
        where = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()  # where the loop trains
        print(f"{where}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; shape {args.shape}, vocab {model.config.vocab_size}; "
              f"the demo's pretraining: 768 padded tokens a step, 32-token sources and targets, MT half")
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        for run, count in enumerate(workers):
            model.load_state_dict(initial)
            stream = PretrainingStream(tokenizer, data["mono"], data["parallel"], mt_fraction=0.5, max_source_length=32,
                                       max_target_length=32, seed=0)
            config = TrainingConfig(out_dir=root / f"run-{run}", max_steps=args.steps, batch_size=8, max_tokens=768,
                                    lr=1e-3, warmup_steps=5, scheduled_sampling="linear", log_every=1,
                                    save_every=args.steps, keep_last=1, progress=False, num_workers=count)
            started = time.perf_counter()
            result = train(model, tokenizer, stream, config, DataCollatorForSeq2Seq(tokenizer), sharded=True)
            wall = time.perf_counter() - started
            rates = [r["tokens_per_s"] for r in result.history[args.warmup :]]
            print(f"  {count} workers: {statistics.median(rates):8.0f} tokens/s (median of steps {args.warmup + 1}-"
                  f"{args.steps}; min {min(rates):.0f}, max {max(rates):.0f}), {wall:.1f} s for {args.steps} steps "
                  f"with the final save, {result.history[-1]['mixed_precision']}")


def _millions(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"


if __name__ == "__main__":
    main()
