"""Encoder adaptation on real text: vocabulary extension to a script the tokenizer lacked,
continued masked-LM training, and an adapted encoder that builds, pretrains and generates;
and the collapse diagnostic that `swcm build` prints."""

import json

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaModel,
)

from swcm.cli import main as cli
from swcm.diagnostics import hidden_state_similarity, mean_pairwise_cosine, sample_pairs, similarity_summary
from swcm.encoders.adapt import continue_mlm, load_masked_lm, mlm_validation_loss, tokenizer_statistics
from swcm.encoders.focus import auxiliary_embeddings, sparsemax
from swcm.encoders.vocabulary import _decomposer, extend_vocabulary, piece_decomposition, script_characters, sentencepiece_proto
from swcm.encoders.tiny_encoder import train_tokenizer
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr
from swcm.training import TrainingConfig


def _texts(*langs, split="train"):
    return [unit["text"][lang] for unit in udhr(split) for lang in langs if lang in unit["text"]]


def _zh_en_encoder(out, byte_fallback=False):
    """A tiny XLM-R masked LM whose tokenizer saw only Chinese and English."""
    tokenizer = train_tokenizer(_texts("zh", "en"), out, vocab_size=900 if byte_fallback else 600,
                                byte_fallback=byte_fallback, model_max_length=128)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=130, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    XLMRobertaForMaskedLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def zh_en_encoder(tmp_path_factory):
    return _zh_en_encoder(tmp_path_factory.mktemp("zh-en-encoder"))


@pytest.fixture(scope="module")
def udhr_mono(tmp_path_factory):
    """Plain-text monolingual files of the UDHR train split: {lang: path}."""
    out = tmp_path_factory.mktemp("mono")
    paths = {}
    for lang in ("bo", "zh", "en"):
        paths[lang] = out / f"{lang}.txt"
        paths[lang].write_text("\n".join(_texts(lang)) + "\n", encoding="utf-8")
    return paths


# --- vocabulary extension --------------------------------------------------------------------


def test_extension_covers_an_unseen_script_and_keeps_old_pieces(zh_en_encoder, tmp_path):
    model = AutoModelForMaskedLM.from_pretrained(zh_en_encoder)
    old = AutoTokenizer.from_pretrained(zh_en_encoder)
    tibetan = _texts("bo")
    before = tokenizer_statistics(old, tibetan)
    assert before["unk_rate"] > 0.3 and before["round_trip"] == 0.0
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    old_bias = model.lm_head.bias.detach().clone()

    new, added = extend_vocabulary(model, old, tibetan, 200, tmp_path / "tok")

    after = tokenizer_statistics(new, tibetan)
    assert after == {"unk_rate": 0.0, "chars_per_token": pytest.approx(after["chars_per_token"]), "round_trip": 1.0,
                     "round_trip_normalised": 1.0}
    assert after["chars_per_token"] < before["chars_per_token"]
    for text in tibetan[:5]:
        assert new.decode(new(text)["input_ids"], skip_special_tokens=True) == " ".join(text.split())
    # The old text is tokenized exactly as before (no new piece beats the old ones on it).
    assert tokenizer_statistics(new, _texts("zh", "en")) == tokenizer_statistics(old, _texts("zh", "en"))
    assert len(added) > 0 and len(new) == len(old) + len(added)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    mask = old.mask_token_id
    assert all(new_vocab[token] == i for token, i in old_vocab.items() if i != mask)
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(embeddings[:mask], old_embeddings[:mask], rtol=0, atol=0)
    # <mask> stays last: its id moves up by the new pieces, its embedding and bias go with it.
    assert new.mask_token_id == mask + len(added)
    torch.testing.assert_close(embeddings[new.mask_token_id], old_embeddings[mask], rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head.bias[:mask], old_bias[:mask], rtol=0, atol=0)
    assert model.lm_head.decoder.weight is embeddings  # the head stays tied
    # Saved and reloaded, the tokenizer is the same.
    new.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded(tibetan[:3])["input_ids"] == new(tibetan[:3])["input_ids"]


def test_new_rows_are_the_mean_of_their_decomposition(zh_en_encoder, tmp_path):
    """Pieces spelled by old pieces (here: Chinese words) start at the mean of those rows."""
    model = AutoModelForMaskedLM.from_pretrained(zh_en_encoder)
    old = AutoTokenizer.from_pretrained(zh_en_encoder)
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    new, added = extend_vocabulary(model, old, _texts("zh"), 100, tmp_path / "tok")
    decomposer = _decomposer(sentencepiece_proto(old, "old"))
    id_to_piece = {i: p for p, i in old.get_vocab().items()}
    checked = 0
    for piece in added:
        parts = piece_decomposition(piece, decomposer, old.get_vocab())
        if not parts:
            continue
        assert "".join(id_to_piece[i] for i in parts) == piece
        torch.testing.assert_close(model.get_input_embeddings().weight[new.convert_tokens_to_ids(piece)],
                                   old_embeddings[parts].mean(0))
        checked += 1
    assert checked > 0


def test_a_script_the_vocabulary_cannot_read_is_added_whole():
    """UDHR Tibetan lacks ༈ (it is in the vendored bo test text): the whole script comes in, so it is no <unk>."""
    tibetan = _texts("bo")
    assert "༈" not in "".join(tibetan)
    chars = script_characters(tibetan + _texts("zh"), known=set("".join(_texts("zh"))), nfkc=True)
    assert "༈" in chars and "ཀ" in chars and "༌" not in chars  # NFKC writes U+0F0C as ་
    assert not any("\u4e00" <= c <= "\u9fff" for c in chars)  # Han: known, so not added


def test_sparsemax_is_a_sparse_distribution():
    weights = sparsemax(torch.tensor([[0.9, 0.85, 0.1, -0.5], [0.2, 0.2, 0.2, 0.2]]))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights[0, 2:] == 0).all() and weights[0, 0] > weights[0, 1] > 0
    torch.testing.assert_close(weights[1], torch.full((4,), 0.25))


def test_auxiliary_embeddings_place_co_occurring_pieces_together(zh_en_encoder):
    tokenizer = AutoTokenizer.from_pretrained(zh_en_encoder)
    index, vectors = auxiliary_embeddings(tokenizer, _texts("zh", "en"))
    assert vectors.shape[0] == len(index) and torch.allclose(vectors.norm(dim=1), torch.ones(len(index)), atol=1e-4)
    # Pieces of Chinese text and pieces of English text form two groups: nearer within than across.
    pieces = {lang: {i for ids in tokenizer(_texts(lang), add_special_tokens=False)["input_ids"] for i in ids}
              for lang in ("zh", "en")}
    zh, en = ([index[i] for i in pieces[a] - pieces[b] if i in index] for a, b in (("zh", "en"), ("en", "zh")))
    within = ((vectors[zh] @ vectors[zh].T).mean() + (vectors[en] @ vectors[en].T).mean()) / 2
    across = (vectors[zh] @ vectors[en].T).mean()
    assert within > across + 0.05


def test_focus_gives_pieces_of_an_unseen_script_distinct_rows(zh_en_encoder, tmp_path):
    """Tibetan pieces are all <unk> to a zh/en tokenizer: the decomposition mean gives them one
    shared row (the mean of all rows); FOCUS gives each its own mix of shared pieces' rows."""
    rows = {}
    for init in ("mean", "focus"):
        model = AutoModelForMaskedLM.from_pretrained(zh_en_encoder)
        old = AutoTokenizer.from_pretrained(zh_en_encoder)
        # Mixed text, so that the new pieces co-occur with pieces both vocabularies share.
        new, added = extend_vocabulary(model, old, _texts("bo", "zh", "en"), 500, tmp_path / init, init=init)
        tibetan = [p for p in added if any("\u0f00" <= c <= "\u0fff" for c in p) and len(p.strip("▁")) > 1]
        rows[init] = model.get_input_embeddings().weight[new.convert_tokens_to_ids(tibetan)].detach()
    assert len(rows["mean"]) > 5
    assert torch.unique(rows["mean"], dim=0).shape[0] < len(rows["mean"]) / 2
    assert torch.unique(rows["focus"], dim=0).shape[0] > len(rows["focus"]) / 2


def test_training_only_the_new_rows_leaves_the_encoder_as_it_was(zh_en_encoder, tmp_path):
    """`--train new-rows`: the layers and the old rows do not move, the new rows and the head do."""
    from swcm.encoders.adapt import train_only_new_rows

    model, head_added = load_masked_lm(zh_en_encoder)
    old = AutoTokenizer.from_pretrained(zh_en_encoder)
    new, added = extend_vocabulary(model, old, _texts("bo"), 200, tmp_path / "tok")
    new_ids = [new.convert_tokens_to_ids(p) for p in added]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_only_new_rows(model, new_ids, head_added=True)
    config = TrainingConfig(out_dir=tmp_path / "mlm", max_steps=3, batch_size=4, lr=1e-2, weight_decay=0.0,
                            progress=False, mixed_precision="no")
    continue_mlm(model, new, {"bo": _texts("bo")}, config, max_length=32)
    embeddings = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is embeddings)
    moved = (embeddings - before[name]).abs().sum(dim=1) > 0
    assert moved[new_ids].any() and not moved[[i for i in range(len(new)) if i not in set(new_ids)]].any()
    for n, p in model.named_parameters():
        if n != name and not n.startswith("lm_head"):
            torch.testing.assert_close(p, before[n], rtol=0, atol=0, msg=n)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("lm_head"))


def test_mlm_validation_loss_is_repeatable(zh_en_encoder):
    model = AutoModelForMaskedLM.from_pretrained(zh_en_encoder)
    tokenizer = AutoTokenizer.from_pretrained(zh_en_encoder)
    texts = _texts("zh", split="valid")
    first = mlm_validation_loss(model, tokenizer, texts, max_length=64)
    assert first == mlm_validation_loss(model, tokenizer, texts, max_length=64) and first > 0
    assert not model.training


def test_unknown_characters_decompose_into_byte_pieces(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(_zh_en_encoder(tmp_path, byte_fallback=True))
    vocab = tokenizer.get_vocab()
    decomposer = _decomposer(sentencepiece_proto(tokenizer, "enc"))
    assert piece_decomposition("ཀ", decomposer, vocab) == [vocab["<0xE0>"], vocab["<0xBD>"], vocab["<0x80>"]]
    assert piece_decomposition("▁人", decomposer, vocab)  # known characters: their own pieces


def test_other_tokenizer_kinds_are_refused_in_one_line(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    model = BertForMaskedLM(BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=16))
    with pytest.raises(ValueError, match=r"^bert-dir: vocabulary extension supports XLM-R-style SentencePiece") as err:
        extend_vocabulary(model, tokenizer, ["a b"], 10, tmp_path / "out", where="bert-dir")
    assert "\n" not in str(err.value)


# --- continued masked LM ---------------------------------------------------------------------


def test_a_bare_encoder_gets_a_tied_mlm_head(zh_en_encoder, tmp_path):
    bare = XLMRobertaModel.from_pretrained(zh_en_encoder, add_pooling_layer=False)
    bare.save_pretrained(tmp_path / "bare")
    AutoTokenizer.from_pretrained(zh_en_encoder).save_pretrained(tmp_path / "bare")
    model, added = load_masked_lm(tmp_path / "bare")
    assert added
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight
    _, added = load_masked_lm(zh_en_encoder)
    assert not added


@pytest.mark.parametrize("kind", ["xlm-r", "bert"])
def test_masked_lm_loss_scores_only_the_masked_positions(zh_en_encoder, kind):
    """The head runs on the masked rows alone, and loss and gradients are the model's own."""
    from transformers import DataCollatorForLanguageModeling

    from swcm.encoders.adapt import mlm_head
    from swcm.encoders.tiny_encoder import masked_lm_loss, mlm_windows

    tokenizer = AutoTokenizer.from_pretrained(zh_en_encoder)
    if kind == "xlm-r":
        model = AutoModelForMaskedLM.from_pretrained(zh_en_encoder)
    else:
        torch.manual_seed(0)
        model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=64, pad_token_id=tokenizer.pad_token_id))
    model.eval()  # no dropout: the two forwards must agree
    windows = mlm_windows(tokenizer, _texts("zh", "en", split="valid"), 48)[:6]
    batch = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)([{"input_ids": w} for w in windows])
    masked = int((batch["labels"] != -100).sum())
    assert 0 < masked < batch["labels"].numel() // 3
    rows = []
    probe = mlm_head(model).register_forward_hook(lambda module, args, out: rows.append(out.shape[:-1]))
    loss = masked_lm_loss(model, batch)
    probe.remove()
    assert rows == [torch.Size([masked])]
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference = model(**batch).loss
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[n], p.grad, msg=n)


def test_mlm_loss_falls_on_real_text(tiny_encoder_dir, tmp_path):
    model = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    texts = {lang: _texts(lang) for lang in ("zh", "bo", "en")}
    config = TrainingConfig(out_dir=tmp_path / "mlm", max_steps=40, batch_size=8, lr=2e-3, log_every=10,
                            save_every=40, progress=False)
    result, probs = continue_mlm(model, tokenizer, texts, config, max_length=64)
    losses = [record["loss"] for record in result.history if "loss" in record]
    assert losses[-1] < losses[0] - 0.3
    assert set(probs) == {"zh", "bo", "en"} and sum(probs.values()) == pytest.approx(1.0)
    assert (tmp_path / "mlm" / "final" / "model.safetensors").is_file()
    assert len((tmp_path / "mlm" / "log.jsonl").read_text().splitlines()) == 4


def test_adapted_encoder_builds_pretrains_and_generates(zh_en_encoder, udhr_mono, tmp_path, capsys):
    out = tmp_path / "adapted"
    args = ["adapt", "--encoder", str(zh_en_encoder), "--mono", f"bo={udhr_mono['bo']}", "--mono", f"zh={udhr_mono['zh']}",
            "--out", str(out), "--extend-vocab", "150", "--batch-size", "4", "--max-length", "48", "--lr", "1e-3",
            "--log-every", "3", "--save-every", "3", "--no-progress"]
    assert cli([*args, "--max-steps", "3"]) == 0
    extended = (out / "extended" / "model.safetensors").stat().st_mtime_ns
    assert cli([*args, "--max-steps", "6"]) == 2  # checkpoints there: refused before anything is rewritten
    assert cli([*args, "--max-steps", "6", "--resume"]) == 0
    assert (out / "extended" / "model.safetensors").stat().st_mtime_ns == extended  # the grown model is reused
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [3, 6]
    printed = capsys.readouterr().out
    assert "bo: <unk> " in printed and "-> <unk> 0.0%" in printed
    report = json.loads((out / "adapt.json").read_text())
    assert report["after"]["bo"]["unk_rate"] == 0.0 and report["after"]["bo"]["round_trip"] == 1.0
    assert report["before"]["bo"]["unk_rate"] > 0.3
    encoder = out / "final"

    model_dir = tmp_path / "model"
    assert cli(["build", "--encoder", str(encoder), "--out", str(model_dir), "--lm-head", "mlm", "--langs", "zh,bo"]) == 0
    printed = capsys.readouterr().out
    assert "mean pairwise cosine" in printed and "decoder: L1 " in printed
    pre = tmp_path / "pre"
    assert cli(["pretrain", "--model", str(model_dir), "--mono", f"bo={udhr_mono['bo']}", "--out", str(pre),
                "--max-steps", "3", "--batch-size", "4", "--max-source-length", "48", "--max-target-length", "48",
                "--no-progress"]) == 0
    model = SWCMForConditionalGeneration.from_pretrained(pre / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(pre / "final")
    source = tokenizer(_texts("bo", split="valid")[:2], return_tensors="pt", padding=True, truncation=True, max_length=48)
    generated = model.generate(**source, max_new_tokens=5, forced_bos_token_id=tokenizer.convert_tokens_to_ids("__bo__"))
    assert generated.shape[0] == 2 and 2 < generated.shape[1] <= 7
    assert tokenizer.unk_token_id not in tokenizer(_texts("bo", split="train")[0])["input_ids"]


# --- collapse diagnostic -----------------------------------------------------------------------


def test_mean_pairwise_cosine():
    assert mean_pairwise_cosine(torch.ones(5, 4)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(4)) == pytest.approx(0.0)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(x, dim=-1)
    brute = sum(float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j) / 42
    assert mean_pairwise_cosine(x) == pytest.approx(brute, abs=1e-6)


def test_similarity_per_layer_sees_a_collapsed_layer(tiny_encoder_dir):
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    pairs = sample_pairs(4)
    assert len(pairs) == 4
    similarity = hidden_state_similarity(model, tokenizer, pairs)
    assert len(similarity["encoder"]) == 4 and len(similarity["decoder"]) == len(model.decoder.layers)
    assert all(-1.0 <= v < 0.99 for v in similarity["encoder"] + similarity["decoder"])
    # A last decoder layer whose final LayerNorm outputs one vector: collapsed there, not before.
    with torch.no_grad():
        last_norm = model.decoder.layers[-1].ffn_b_layer_norm if hasattr(model.decoder.layers[-1], "ffn_b") \
            else model.decoder.layers[-1].ffn_layer_norm
        last_norm.weight.zero_()
        last_norm.bias.normal_()
    model.train()
    collapsed = hidden_state_similarity(model, tokenizer, pairs)
    assert model.training  # measured in eval mode, handed back as it came
    assert collapsed["decoder"][-1] == pytest.approx(1.0, abs=1e-5)
    assert collapsed["decoder"][:-1] == pytest.approx(similarity["decoder"][:-1])
    lines = similarity_summary(collapsed)
    assert lines[0].startswith("encoder: L1 ") and lines[1].endswith(f"L{len(model.decoder.layers)} 1.00")


def test_replay_trains_on_languages_the_encoder_reads_without_learning_pieces_from_them(zh_en_encoder, udhr_mono, tmp_path):
    """--replay (CINO-style continued pretraining): with --train all the whole encoder trains on the
    new language's text and on the replayed one's, sampled alike; the new pieces come from --mono only."""
    from safetensors.torch import load_file

    base = ["adapt", "--encoder", str(zh_en_encoder), "--mono", f"bo={udhr_mono['bo']}", "--extend-vocab", "150",
            "--init", "mean", "--batch-size", "4", "--max-length", "48", "--no-progress"]
    assert cli([*base, "--out", str(tmp_path / "extended"), "--max-steps", "0"]) == 0
    assert cli([*base, "--out", str(tmp_path / "replayed"), "--max-steps", "2", "--train", "all",
                "--replay", f"zh={udhr_mono['zh']}"]) == 0
    extended, replayed = (json.loads((tmp_path / name / "adapt.json").read_text()) for name in ("extended", "replayed"))
    assert replayed["vocab_after"] == extended["vocab_after"]  # no piece learnt from the zh text
    assert replayed["replay"] == ["zh"] and set(replayed["sampling"]) == {"bo", "zh"}
    before, after = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("extended", "replayed"))
    layer = next(name for name in after if ".layer.0." in name and name.endswith("query.weight"))
    assert not torch.equal(before[layer], after[layer])  # the whole encoder trained, not only the new rows
