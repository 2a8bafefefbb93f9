"""Greedy decoding speed: the KV cache against re-running the whole decoder at every step.

The reference XLM-SWCM code generates by feeding the whole prefix through the decoder for
every new token. This benchmark builds a base-shaped SWCM (CINO-base-v2 shape, random
weights), encodes a batch once, then generates the same number of tokens both ways —
`model.generate()` with the cache, and a loop that re-runs the decoder on the full prefix
(the LM head only on the last position, which favours the baseline) — and prints time per
token and the ratio. Both runs are checked to produce the same tokens.

    python benchmarks/decode.py [--new-tokens 128] [--batch 8] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import XLMRobertaConfig

from swcm import SWCMConfig, SWCMForConditionalGeneration
from swcm.records import append_record


def base_model(vocab_size: int, dtype: torch.dtype) -> SWCMForConditionalGeneration:
    encoder = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
    )
    torch.manual_seed(0)
    return SWCMForConditionalGeneration(SWCMConfig(encoder=encoder.to_dict())).to(dtype).eval()


@torch.no_grad()
def decode_without_cache(model, encoder_hidden, attention_mask, new_tokens: int) -> torch.Tensor:
    """Greedy decoding that recomputes every decoder position at every step."""
    cfg = model.config
    tokens = torch.full((encoder_hidden.shape[0], 1), cfg.decoder_start_token_id, device=encoder_hidden.device)
    for _ in range(new_tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = model.encoder.embeddings(
            input_ids=tokens, position_ids=(positions + model.position_offset).expand(tokens.shape[0], -1)
        )
        hidden = model.decoder(hidden, encoder_hidden, attention_mask, None, None, positions)
        logits = model.lm_head(hidden[:, -1])
        logits[:, cfg.eos_token_id] = -float("inf")  # same as min_new_tokens below
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source-length", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=135135)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    model = base_model(args.vocab_size, dtype).to(args.device)
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, args.vocab_size, (args.batch, args.source_length), generator=gen).to(args.device)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1::2, args.source_length * 3 // 4 :] = 0  # a padded batch, as in real use

    def timed(fn):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        # warm-up, then the measured runs
        model.generate(encoder_outputs=encoder_outputs, attention_mask=attention_mask, max_new_tokens=4)
        cached, t_cache = timed(lambda: model.generate(
            encoder_outputs=encoder_outputs, attention_mask=attention_mask, do_sample=False, num_beams=1,
            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, use_cache=True,
        ))
        uncached, t_full = timed(lambda: decode_without_cache(
            model, encoder_outputs.last_hidden_state, attention_mask, args.new_tokens
        ))
    same = torch.equal(cached.cpu(), uncached.cpu())
    n = args.batch * args.new_tokens
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {args.dtype}, {args.device}; "
          f"batch {args.batch}, source {args.source_length}, {args.new_tokens} new tokens, greedy")
    print(f"re-run whole decoder : {1000 * t_full / n:8.2f} ms/token  ({t_full:.1f} s)")
    print(f"KV cache (generate)  : {1000 * t_cache / n:8.2f} ms/token  ({t_cache:.1f} s)")
    print(f"speed-up             : {t_full / t_cache:8.1f}x   identical tokens: {same}")
    append_record("decode", {"settings": vars(args), "ms_per_token_rerun": round(1000 * t_full / n, 2),
                             "ms_per_token_kv_cache": round(1000 * t_cache / n, 2), "speedup": round(t_full / t_cache, 1),
                             "identical_tokens": same}, precision=f"{args.dtype}, {args.device}")


if __name__ == "__main__":
    main()
