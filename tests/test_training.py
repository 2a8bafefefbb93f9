"""The shared training loop on a tiny SWCM model and real UDHR text."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr
from swcm.tokenization import add_language_tags
from swcm.training import (
    TrainingConfig,
    latest_checkpoint,
    load_model_weights,
    parameter_groups,
    scheduled_sampling_inputs,
    teacher_forcing_ratio,
    train,
    training_loss,
)

LANGS = ["zh", "bo", "ug", "kk", "mn", "en"]


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    build_model(tiny_encoder_dir, tok)  # adds the language tags to `tok`
    return tok


def build_model(encoder_dir, tokenizer, seed=0, dropout=True):
    """A tiny SWCM model with language tags; `dropout=False` for one whose loss does not depend
    on how a step is split (dropout masks would differ)."""
    encoder = encoder_dir
    if not dropout:
        encoder = AutoModelForMaskedLM.from_pretrained(encoder_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = SWCMForConditionalGeneration.from_encoder(encoder)
    add_language_tags(model, tokenizer, LANGS)
    return model


def short_and_long(tokenizer):
    """8 copy examples, short and long targets alternating (a rank's slice can be all short)."""
    examples = sorted(copy_examples(tokenizer, n=8), key=lambda e: len(e["labels"]))[::6][:8]
    return [e for pair in zip(examples[:4], examples[4:]) for e in pair]


def copy_examples(tokenizer, split="train", n=10, max_length=32):
    """Token-level examples that copy a sentence into its own language (real text, six scripts)."""
    examples = []
    for unit in udhr(split)[:n]:
        for lang in LANGS:
            ids = tokenizer(unit["text"][lang], truncation=True, max_length=max_length)["input_ids"]
            examples.append({"input_ids": ids, "labels": [tokenizer.convert_tokens_to_ids(f"__{lang}__")] + ids[1:]})
    return examples


def collate(tokenizer):
    def pad(examples):
        n = max(len(e["input_ids"]) for e in examples)
        m = max(len(e["labels"]) for e in examples)
        input_ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (n - len(e["input_ids"])) for e in examples])
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != tokenizer.pad_token_id).long(),
            "labels": torch.tensor([e["labels"] + [-100] * (m - len(e["labels"])) for e in examples]),
        }

    return pad


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --- scheduled sampling ------------------------------------------------------------------


def test_teacher_forcing_ratio_schedules():
    assert teacher_forcing_ratio(0, 100, "constant", 0.8) == teacher_forcing_ratio(99, 100, "constant", 0.8) == 0.8
    assert teacher_forcing_ratio(0, 100) == 1.0  # the default is plain teacher forcing
    for schedule in ("linear", "inverse_sigmoid"):
        ratios = [teacher_forcing_ratio(s, 100, schedule, 0.75, k=10) for s in range(101)]
        assert ratios[0] == pytest.approx(1.0) and ratios[-1] == pytest.approx(0.75)
        assert all(a >= b for a, b in zip(ratios, ratios[1:]))
        assert ratios[50] == pytest.approx(0.875)  # both are halfway at half of training
    assert teacher_forcing_ratio(25, 100, "linear", 0.0) == pytest.approx(0.75)
    # the inverse sigmoid stays near 1 early and near the floor late
    assert teacher_forcing_ratio(10, 100, "inverse_sigmoid", 0.0, k=10) > 0.97
    assert teacher_forcing_ratio(90, 100, "inverse_sigmoid", 0.0, k=10) < 0.03
    assert teacher_forcing_ratio(500, 100, "linear", 0.6) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="scheduled sampling"):
        teacher_forcing_ratio(0, 10, "exponential")
    with pytest.raises(ValueError, match="floor"):
        teacher_forcing_ratio(0, 10, "linear", 1.5)


@pytest.fixture(scope="module")
def model_and_batch(tiny_encoder_dir, tokenizer):
    model = build_model(tiny_encoder_dir, tokenizer).eval()
    examples = copy_examples(tokenizer, "valid", n=2)
    return model, collate(tokenizer)(examples)


def teacher_forced(model, batch):
    """(labels, gold decoder inputs, argmax predictions of a teacher-forced pass)."""
    labels = batch["labels"]
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    return labels, model.prepare_decoder_input_ids_from_labels(labels), predictions


def test_ratio_one_is_exactly_teacher_forcing(model_and_batch):
    model, batch = model_and_batch
    loss, decoder_inputs = training_loss(model, batch, ratio=1.0)
    reference = model(**batch)
    assert torch.equal(decoder_inputs, model.prepare_decoder_input_ids_from_labels(batch["labels"]))
    assert loss.item() == reference.loss.item()


def test_ratio_zero_feeds_the_models_own_predictions(model_and_batch, tokenizer):
    model, batch = model_and_batch
    labels, gold, predictions = teacher_forced(model, batch)

    fed = []  # the decoder reads its inputs through the shared embedding module
    hook = model.encoder.embeddings.register_forward_hook(
        lambda module, args, kwargs, out: fed.append(kwargs.get("input_ids")), with_kwargs=True
    )
    try:
        torch.manual_seed(0)
        loss, decoder_inputs = training_loss(model, batch, ratio=0.0)
    finally:
        hook.remove()

    real = torch.zeros_like(labels, dtype=torch.bool)
    real[:, 1:] = labels[:, :-1] != -100
    # The start token and the language tag (the first label), both forced at inference, are never replaced.
    real[:, :2] = False
    assert torch.equal(decoder_inputs[:, 0], gold[:, 0])
    assert torch.equal(decoder_inputs[:, 1], labels[:, 0])
    tags = {tokenizer.convert_tokens_to_ids(f"__{lang}__") for lang in LANGS}
    assert set(decoder_inputs[:, 1].tolist()) == tags  # a tag of every language, each kept
    assert (predictions[:, 0] != labels[:, 0]).any()  # the untrained model would have swapped some
    assert torch.equal(decoder_inputs[real], predictions[:, :-1][real[:, 1:]])
    assert torch.equal(decoder_inputs[~real], gold[~real])  # padding stays padding
    assert not torch.equal(decoder_inputs, gold)  # an untrained model does not predict the gold text
    # Two passes, each encoder then decoder: the first decoder read the gold inputs, the second the mixed ones.
    assert len(fed) == 4 and torch.equal(fed[0], batch["input_ids"]) and torch.equal(fed[2], batch["input_ids"])
    assert torch.equal(fed[1], gold) and torch.equal(fed[3], decoder_inputs)
    # scored against the gold labels
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=decoder_inputs, labels=labels).loss
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_intermediate_ratio_replaces_about_that_share(model_and_batch):
    model, batch = model_and_batch
    labels, gold, predictions = teacher_forced(model, batch)
    candidates = (labels[:, 1:-1] != -100) & (predictions[:, 1:-1] != gold[:, 2:])  # the tag excepted
    torch.manual_seed(1)
    replaced = [(scheduled_sampling_inputs(model, batch, 0.7)[:, 2:] != gold[:, 2:]) for _ in range(20)]
    share = torch.stack(replaced).float().sum() / (20 * candidates.sum())
    assert 0.2 < share.item() < 0.4


# --- optimiser ---------------------------------------------------------------------------


def test_no_weight_decay_on_biases_and_layer_norms(model_and_batch):
    model, _ = model_and_batch
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(not_decayed) and decayed | not_decayed == set(names.values())
    assert all(n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n for n in not_decayed)
    assert "decoder.layers.0.self_attn_layer_norm.weight" in not_decayed
    assert "encoder.encoder.layer.0.attention.output.LayerNorm.weight" in not_decayed
    assert "decoder.layers.0.ffn_a.intermediate.weight" in decayed
    # the default head on this encoder is its MLM head (dense → LayerNorm → decoder Linear)
    assert "lm_head.decoder.weight" in decayed and "lm_head.layer_norm.weight" in not_decayed


# --- the loop ----------------------------------------------------------------------------


def test_resume_ends_with_the_same_weights(tmp_path, tiny_encoder_dir, tokenizer):
    """2N steps uninterrupted against N steps, a restart from the checkpoint, and N more."""
    examples = copy_examples(tokenizer)  # 60 examples: the run wraps into a second, reshuffled epoch
    settings = dict(out_dir=tmp_path, max_steps=8, batch_size=5, grad_accum=2, lr=1e-3, warmup_steps=2,
                    log_every=2, save_every=4, keep_last=3, scheduled_sampling="linear", ss_floor=0.5,
                    label_smoothing=0.1, progress=False)
    model = build_model(tiny_encoder_dir, tokenizer)
    full = train(model, tokenizer, examples, TrainingConfig(**settings), collate(tokenizer))
    uninterrupted = params(model)
    assert full.step == 8 and [r["step"] for r in full.history] == [2, 4, 6, 8]
    assert full.history[-1]["epoch"] == 1

    # The run "died" after step 4's checkpoint.
    shutil.rmtree(tmp_path / "checkpoints" / "step-8")
    shutil.rmtree(tmp_path / "final")
    fresh = build_model(tiny_encoder_dir, tokenizer, seed=1)  # different initial weights
    resumed = train(fresh, tokenizer, examples, TrainingConfig(**settings, resume=True), collate(tokenizer))
    assert resumed.step == 8 and [r["step"] for r in resumed.history] == [6, 8]
    assert max_diff(params(fresh), uninterrupted) <= 1e-6
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history[2:]], abs=1e-6)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]  # the redone steps are logged once
    assert all({"step", "loss", "lr", "tokens_per_s"} <= r.keys() for r in records)
    assert all(r["tokens_per_s"] > 0 for r in records)


def test_accumulation_weighs_every_target_token_alike(tmp_path, tiny_encoder_dir, tokenizer):
    """One optimizer step over 4 micro-batches of 2 equals one step over the batch of 8: the
    same loss (token-weighted over the whole step) and the same gradients, hence the same
    weights. Targets of very different lengths make a mean of per-micro-batch means differ."""
    examples = sorted(copy_examples(tokenizer, n=8), key=lambda e: len(e["labels"]))[::6][:8]
    counts = [sum(len(e["labels"]) for e in examples[i : i + 2]) for i in range(0, 8, 2)]
    assert max(counts) > 2 * min(counts)  # short and long micro-batches
    initial = build_model(tiny_encoder_dir, tokenizer, dropout=False)

    def one_step(name, batch_size, grad_accum):
        model = copy.deepcopy(initial)
        config = TrainingConfig(out_dir=tmp_path / name, max_steps=1, batch_size=batch_size, grad_accum=grad_accum,
                                lr=1e-3, weight_decay=0.0, max_grad_norm=None, shuffle=False, progress=False,
                                mixed_precision="no")  # exact comparisons: fp32 whatever the hardware
        result = train(model, tokenizer, examples, config, collate(tokenizer))
        return params(model), result.history[0]["loss"]

    whole, whole_loss = one_step("whole", 8, 1)
    accumulated, accumulated_loss = one_step("accumulated", 2, 4)
    with torch.no_grad():
        expected = initial.eval()(**collate(tokenizer)(examples)).loss.item()  # mean over all target tokens
    assert whole_loss == pytest.approx(expected, abs=1e-5)
    assert accumulated_loss == pytest.approx(expected, abs=1e-5)
    # AdamW's first step moves each weight by about ±lr: a mean of micro-batch means flips the
    # sign of some updates (a difference of 2·lr); equal gradients leave float rounding.
    assert max_diff(accumulated, whole) < 1e-5


def test_a_micro_batch_without_target_tokens_adds_nothing(tmp_path, tiny_encoder_dir, tokenizer):
    """A micro-batch whose labels are all −100 (possible in adapt's MLM windows) has a NaN mean
    loss; the step skips it: the logged loss and the weights are those of the step without it."""
    examples = copy_examples(tokenizer, n=1)[:4]
    empty = {"input_ids": examples[0]["input_ids"], "labels": [-100] * 5}
    initial = build_model(tiny_encoder_dir, tokenizer, dropout=False)

    def one_step(name, data, grad_accum):
        model = copy.deepcopy(initial)
        config = TrainingConfig(out_dir=tmp_path / name, max_steps=1, batch_size=2, grad_accum=grad_accum,
                                lr=1e-3, weight_decay=0.0, max_grad_norm=1.0, shuffle=False, progress=False,
                                mixed_precision="no")
        result = train(model, tokenizer, data, config, collate(tokenizer))
        return params(model), result.history[0]

    plain, plain_log = one_step("plain", examples, 2)
    skipped, skipped_log = one_step("skipped", examples[:2] + [empty, empty] + examples[2:], 3)
    # Float noise only: the empty micro-batch still runs (DDP's ranks stay in step), and transformers 4
    # sums the step in another order (2e-6 apart there).
    assert skipped_log["loss"] == pytest.approx(plain_log["loss"], abs=1e-5)
    assert skipped_log["grad_norm"] == pytest.approx(plain_log["grad_norm"], rel=1e-5)
    assert max_diff(skipped, plain) < 1e-5


def test_checkpoints_and_final_model(tmp_path, tiny_encoder_dir, tokenizer):
    examples = copy_examples(tokenizer, n=4)
    config = TrainingConfig(out_dir=tmp_path, max_steps=6, batch_size=4, lr=1e-3, save_every=2, keep_last=2,
                            log_every=3, progress=False)
    model = build_model(tiny_encoder_dir, tokenizer)
    train(model, tokenizer, examples, config, collate(tokenizer))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-4", "step-6"]  # the last two
    step6 = tmp_path / "checkpoints" / "step-6"
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "data.pt"):
        torch.load(step6 / name, weights_only=True)  # plain tensors and containers only
    assert (step6 / "model.safetensors").exists()
    # optimizer state keyed by parameter name (torch's distributed state-dict format, the same under FSDP)
    optimizer_state = torch.load(step6 / "optimizer.pt", weights_only=True)["state"]
    assert optimizer_state.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert json.loads((step6 / "trainer_state.json").read_text())["step"] == 6

    final = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "final").eval()
    assert max_diff(params(final), params(model)) == 0
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    assert loaded_tokenizer.convert_tokens_to_ids("__bo__") == tokenizer.convert_tokens_to_ids("__bo__")
    source = loaded_tokenizer(udhr("test")[0]["text"]["bo"], return_tensors="pt", truncation=True, max_length=32)
    out = final.generate(**source, max_new_tokens=5, forced_bos_token_id=tokenizer.convert_tokens_to_ids("__bo__"))
    assert out[0, 1].item() == tokenizer.convert_tokens_to_ids("__bo__")

    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(model, tokenizer, examples, config, collate(tokenizer))


def test_evaluate_keeps_the_best_and_stops_early(tmp_path, tiny_encoder_dir, tokenizer):
    valid = collate(tokenizer)(copy_examples(tokenizer, "valid", n=3))

    def validation_loss(model):
        return {"loss": model(**valid).loss.item()}

    model = build_model(tiny_encoder_dir, tokenizer)
    # fp32: the hook's loss is compared exactly with the reloaded best model's.
    config = TrainingConfig(out_dir=tmp_path / "a", max_steps=6, batch_size=6, lr=2e-3, log_every=2,
                            save_every=2, eval_every=2, metric="loss", progress=False, mixed_precision="no")
    result = train(model, tokenizer, copy_examples(tokenizer), config, collate(tokenizer), evaluate=validation_loss)
    evals = [r for r in result.history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    best = min(evals, key=lambda r: r["eval_loss"])
    assert result.best_step == best["step"] and result.best_metric == best["eval_loss"]
    best_model = AutoModelForSeq2SeqLM.from_pretrained(result.best_dir)
    assert validation_loss(best_model.eval())["loss"] == pytest.approx(best["eval_loss"], abs=1e-5)
    checkpoint = build_model(tiny_encoder_dir, tokenizer, seed=3)
    load_model_weights(checkpoint, tmp_path / "a" / "checkpoints" / f"step-{result.best_step}")
    assert max_diff(params(checkpoint), params(best_model)) == 0

    # A metric that should rise but falls (the loss, read as higher-is-better) stops after `patience` evaluations.
    model = build_model(tiny_encoder_dir, tokenizer)
    config = TrainingConfig(out_dir=tmp_path / "b", max_steps=20, batch_size=6, lr=2e-3, log_every=2, save_every=10,
                            eval_every=2, metric="loss", greater_is_better=True, patience=2, progress=False)
    result = train(model, tokenizer, copy_examples(tokenizer), config, collate(tokenizer), evaluate=validation_loss)
    assert result.stopped_early and result.step == 6 and result.best_step == 2
    assert latest_checkpoint(tmp_path / "b").name == "step-6"  # the stop is resumable


def test_bf16_and_gradient_checkpointing(tmp_path, tiny_encoder_dir, tokenizer):
    examples = copy_examples(tokenizer, n=4)

    def run(name, **settings):
        model = build_model(tiny_encoder_dir, tokenizer)
        config = TrainingConfig(out_dir=tmp_path / name, max_steps=3, batch_size=4, lr=1e-3, log_every=1,
                                progress=False, **settings)
        result = train(model, tokenizer, examples, config, collate(tokenizer))
        return model, result

    plain, plain_result = run("plain", mixed_precision="no")
    checkpointed, _ = run("checkpointed", gradient_checkpointing=True, mixed_precision="no")
    # Recomputation replays the same dropout masks: the same training, within float rounding.
    assert max_diff(params(plain), params(checkpointed)) < 1e-5
    assert not checkpointed.is_gradient_checkpointing  # handed back as it came

    bf16, bf16_result = run("bf16", mixed_precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay fp32
    losses = [r["loss"] for r in bf16_result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(plain_result.history[0]["loss"], rel=0.02)  # autocast was on, and close
    assert losses[0] != plain_result.history[0]["loss"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16"):
            run("fp16", mixed_precision="fp16")


def test_one_shot_data_ends_training(tmp_path, tiny_encoder_dir, tokenizer, monkeypatch):
    monkeypatch.setenv("SWCM_CACHE", str(tmp_path / "cache"))  # no cached precision: auto would probe re-readable data
    examples = copy_examples(tokenizer, n=2)  # 12 examples, read once
    model = build_model(tiny_encoder_dir, tokenizer)
    config = TrainingConfig(out_dir=tmp_path, max_steps=100, batch_size=5, log_every=1, progress=False)
    result = train(model, tokenizer, iter(examples), config, collate(tokenizer))
    assert result.data_exhausted and result.step == 3  # 5 + 5 + 2
    assert latest_checkpoint(tmp_path).name == "step-3" and (tmp_path / "final" / "model.safetensors").exists()


_KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from transformers import AutoTokenizer
sys.path.insert(0, {tests!r})
from test_training import build_model, collate, copy_examples
from swcm.training import TrainingConfig, train
tokenizer = AutoTokenizer.from_pretrained({encoder!r})
model = build_model({encoder!r}, tokenizer)
config = TrainingConfig(out_dir={out!r}, max_steps=10_000, batch_size=2, save_every=1, keep_last=2, log_every=1,
                        progress=False, resume={resume})
train(model, tokenizer, copy_examples(tokenizer, n=2), config, collate(tokenizer))
"""


def test_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, tiny_encoder_dir, tokenizer):
    out = tmp_path / "run"
    script = _KILL_SCRIPT.format(tests=os.path.dirname(__file__), encoder=str(tiny_encoder_dir), out=str(out), resume=False)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # Kill as soon as a save is under way after at least two complete checkpoints exist.
        while time.monotonic() < deadline and proc.poll() is None:
            root = out / "checkpoints"
            if root.is_dir() and len(list(root.glob("step-*"))) >= 2 and list(root.glob(".step-*")):
                break
            time.sleep(0.001)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    latest = latest_checkpoint(out)
    assert latest is not None
    model = build_model(tiny_encoder_dir, tokenizer, seed=5)
    load_model_weights(model, latest)  # complete safetensors
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "data.pt"):
        torch.load(latest / name, weights_only=True)
    step = int(latest.name.split("-")[1])
    assert json.loads((latest / "trainer_state.json").read_text())["step"] == step

    # Resuming picks up that checkpoint and clears the half-written one.
    config = TrainingConfig(out_dir=out, max_steps=step + 2, batch_size=2, save_every=1, resume=True, progress=False)
    result = train(model, tokenizer, copy_examples(tokenizer, n=2), config, collate(tokenizer))
    assert result.step == step + 2 and not list((out / "checkpoints").glob(".step-*"))


# --- swcm pretrain -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """UDHR train and valid text as the CLI takes it: one plain-text file per language, and zh↔x pairs."""
    root = tmp_path_factory.mktemp("corpus")
    for split in ("train", "valid"):
        (root / split).mkdir()
        units = udhr(split)
        for lang in LANGS:
            (root / split / f"{lang}.txt").write_text("".join(u["text"][lang] + "\n" for u in units), encoding="utf-8")
        with open(root / split / "pairs.jsonl", "w", encoding="utf-8") as f:
            for u in units:
                for lang in ("bo", "ug"):
                    f.write(json.dumps({"src": u["text"]["zh"], "tgt": u["text"][lang], "src_lang": "zh", "tgt_lang": lang}) + "\n")
    return root


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory, tiny_encoder_dir):
    from swcm.building import build_model_dir

    out = tmp_path_factory.mktemp("built") / "swcm"
    torch.manual_seed(0)
    build_model_dir(tiny_encoder_dir, out)  # no language tags yet: pretrain adds them
    return out


def pretrain_cli(model, out, data, *flags):
    from swcm.cli import main

    mono = [f"--mono={lang}={data / f'{lang}.txt'}" for lang in LANGS]
    return main(["pretrain", "--model", str(model), "--out", str(out), *mono, "--no-progress",
                 "--max-source-length", "64", "--max-target-length", "64", *flags])


def test_pretrain_learns_on_six_scripts(tmp_path, built_dir, corpus):
    """A few dozen steps of DAE (+ some MT) on real text: the DAE loss on held-out text drops clearly."""
    from swcm.data import PretrainingStream
    from swcm.pretraining import PretrainSettings

    flags = ["--parallel", str(corpus / "train" / "pairs.jsonl"), "--mt-ratio", "0.2", "--max-steps", "40",
             "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "4", "--log-every", "5", "--save-every", "100"]
    assert pretrain_cli(built_dir, tmp_path, corpus / "train", *flags) == 0

    trained = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    assert all(tokenizer.convert_tokens_to_ids(f"__{lang}__") != tokenizer.unk_token_id for lang in LANGS)
    initial = AutoModelForSeq2SeqLM.from_pretrained(built_dir)
    initial.resize_token_embeddings(len(tokenizer))  # the tags are new rows; the text rows are the built ones
    # Held-out DAE examples: noised UDHR valid sentences, the same for both models.
    valid = PretrainingStream(tokenizer, [f"{lang}={corpus / 'valid' / f'{lang}.txt'}" for lang in LANGS],
                              max_source_length=64, max_target_length=64, seed=1)
    batch = DataCollatorForSeq2Seq(tokenizer)([valid.next_example() for _ in range(48)])
    with torch.no_grad():
        before, after = initial.eval()(**batch).loss.item(), trained(**batch).loss.item()
    assert after < before - 0.8, (before, after)

    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, 45, 5))
    assert records[-1]["loss"] < records[0]["loss"] - 0.8


def test_pretrain_defaults_warm_up_and_scheduled_sampling(tmp_path, built_dir, corpus):
    """Without flags, pretraining warms the learning rate up over 5 % of the steps and decays
    teacher forcing (the paper's scheduled sampling); --scheduled-sampling none turns it off."""
    flags = ["--max-steps", "40", "--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--save-every", "100"]
    assert pretrain_cli(built_dir, tmp_path / "a", corpus / "train", *flags, "--max-source-length", "24",
                        "--max-target-length", "24") == 0
    records = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)  # 2 warm-up steps, then the peak
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    ratios = [r["teacher_forcing_ratio"] for r in records]
    assert ratios[0] == 1.0 and ratios[-1] < 0.76 and all(a > b for a, b in zip(ratios, ratios[1:]))

    assert pretrain_cli(built_dir, tmp_path / "b", corpus / "train", "--scheduled-sampling", "none", "--warmup-steps", "0",
                        "--max-steps", "2", "--batch-size", "2", "--log-every", "1") == 0
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert all("teacher_forcing_ratio" not in r for r in records) and records[0]["lr"] == pytest.approx(1e-4 * 0.5)


def test_pretrain_resume_through_the_stream(tmp_path, built_dir, corpus):
    """The stream's position and RNG go into the checkpoint: an interrupted CLI run ends identical."""
    flags = ["--parallel", str(corpus / "train" / "pairs.jsonl"), "--mt-ratio", "0.3", "--max-steps", "6",
             "--batch-size", "4", "--lr", "1e-3", "--save-every", "3", "--scheduled-sampling", "linear"]
    assert pretrain_cli(built_dir, tmp_path, corpus / "train", *flags) == 0
    uninterrupted = load_file_state(tmp_path / "final")
    shutil.rmtree(tmp_path / "checkpoints" / "step-6")
    shutil.rmtree(tmp_path / "final")
    assert pretrain_cli(built_dir, tmp_path, corpus / "train", *flags, "--resume") == 0
    assert max_diff(load_file_state(tmp_path / "final"), uninterrupted) <= 1e-6


def load_file_state(directory):
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def test_pretrain_reports_bad_data(tmp_path, built_dir, corpus, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "བོད་ཡིག", "lang": "bo"}\n{"text": "", "lang": "bo"}\n{"lang": "zh"}\n', encoding="utf-8")
    from swcm.cli import main

    args = ["pretrain", "--model", str(built_dir), "--out", str(tmp_path / "out"), "--mono", str(bad), "--no-progress",
            "--max-steps", "1", "--batch-size", "1", "--max-source-length", "32", "--max-target-length", "32"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("swcm pretrain: error: ") and f"{bad}:2:" in err[0]

    assert main(args + ["--on-bad-record", "skip"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 bad records" in captured.err and "pretrained 1 steps" in captured.out

    assert main(["pretrain", "--model", str(built_dir), "--out", str(tmp_path / "x")]) == 2
    assert "needs data" in capsys.readouterr().err
    assert main(args[:-8] + ["--langs", "zh,en", "--max-steps", "1"]) == 2
    assert "not in the allowed languages" in capsys.readouterr().err
