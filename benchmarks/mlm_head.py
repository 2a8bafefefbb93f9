"""A masked-LM training step with the head on every position against the masked positions only.

Builds a BERT masked LM of the demo's adapted e5 shape (hidden 384, 3 layers, 12 heads, FFN
1,536, 20,443 pieces; random weights, fp32), masks 15 % of a batch of random windows the way
`DataCollatorForLanguageModeling` does, and times forward + backward of the model's own loss
(transformers scores every position, then drops the unmasked ones) and of
`swcm.encoders.tiny_encoder.masked_lm_loss` (the head on the masked rows only), alternating, in
this process; both with every weight trained and, as the demo's adaptation trains, with only the
embeddings and the head. Prints the median step times and their ratio.

    python benchmarks/mlm_head.py                    # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForMaskedLM

from swcm.encoders.tiny_encoder import masked_lm_loss
from swcm.precision import cpu_name
from swcm.records import append_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=20443)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=args.vocab_size, hidden_size=384, num_hidden_layers=3,
                                       num_attention_heads=12, intermediate_size=1536)).train()
    input_ids = torch.randint(5, args.vocab_size, (args.batch, args.length))
    masked = torch.rand(input_ids.shape) < 0.15
    labels = torch.where(masked, input_ids, -100)
    batch = {"input_ids": torch.where(masked, 4, input_ids), "attention_mask": torch.ones_like(input_ids), "labels": labels}
    losses = {"every position": lambda: model(**batch).loss, "masked positions": lambda: masked_lm_loss(model, batch)}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; batch {args.batch} × {args.length}, "
          f"{int(masked.sum())} masked, vocabulary {args.vocab_size:,}")
    figures = {"settings": vars(args)}
    for trained in ("all weights", "embeddings and head"):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trained == "all weights" or not name.startswith("bert.encoder"))
        times = {name: [] for name in losses}
        for _ in range(args.rounds):
            for name, loss in losses.items():
                start = time.perf_counter()
                loss().backward()
                times[name].append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
        medians = {name: statistics.median(t[1:]) for name, t in times.items()}
        print(f"  {trained}: " + ", ".join(f"{name} {m:.3f} s" for name, m in medians.items())
              + f"; masked / every: {medians['masked positions'] / medians['every position']:.3f}")
        figures.update({f"{trained}: {name} step s": round(m, 3) for name, m in medians.items()})
        figures[f"{trained}: masked / every"] = round(medians["masked positions"] / medians["every position"], 3)
    append_record("mlm_head", figures, precision="fp32")


if __name__ == "__main__":
    main()
