"""The stand-in encoder: its tokenizer on real UDHR text in six scripts, MLM training, the CLI."""

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

import swcm.resources
from swcm import SWCMForConditionalGeneration
from swcm.cli import main as cli
from swcm.resources import UDHR_LANGS, udhr
from swcm.encoders.tiny_encoder import SENTENCEPIECE_FILE, SETTINGS_FILE, mlm_windows, read_corpus, train_tiny_encoder, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return AutoTokenizer.from_pretrained(tiny_encoder_dir)


def test_id_layout_is_xlm_r(tokenizer):
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [0, 1, 2, 3]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    assert tokenizer("自由")["input_ids"][0] == 0 and tokenizer("自由")["input_ids"][-1] == 2


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("lang", UDHR_LANGS)
def test_round_trip_on_real_text(tokenizer, lang, split):
    # test-split text holds characters the tokenizer never saw: byte fallback keeps it lossless.
    for unit in udhr(split):
        text = unit["text"][lang]
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(text.split())


def test_word_boundaries_survive(tokenizer):
    text = "人人生而自由 ཡོངས་ཁྱབ་ ھەممە ئادەم Барлық адамдар all human beings"
    tokens = tokenizer.tokenize(text)
    assert "<unk>" not in tokens
    assert tokenizer.convert_tokens_to_string(tokens) == text
    assert sum(t.startswith("▁") for t in tokens) >= len(text.split())


def test_tokenizer_agrees_with_its_sentencepiece_model(tiny_encoder_dir, tokenizer):
    # XLM-R's fairseq layout: SentencePiece id + 1 for every piece, SentencePiece's <unk> (0) at 3.
    sp = spm.SentencePieceProcessor(model_file=str(tiny_encoder_dir / SENTENCEPIECE_FILE))
    assert len(tokenizer) == sp.get_piece_size() + 2  # + <pad> and <mask>
    for unit in udhr("valid"):
        for text in unit["text"].values():
            expected = [0, *(i + 1 if i else 3 for i in sp.encode(text)), 2]
            assert tokenizer(text)["input_ids"] == expected


def test_tokenizer_files_load_as_a_generic_fast_tokenizer(tiny_encoder_dir, tokenizer):
    # XLMRobertaTokenizer would drop byte fallback under transformers 5; the generic class keeps it.
    config = json.loads((tiny_encoder_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer.is_fast and json.loads(tokenizer.backend_tokenizer.to_str())["model"]["byte_fallback"]


def test_training_is_quiet_and_deterministic(tmp_path, capfd):
    texts = [t for unit in udhr("valid") for t in unit["text"].values()]
    a = train_tokenizer(texts, tmp_path / "a", vocab_size=700)
    b = train_tokenizer(texts, tmp_path / "b", vocab_size=700)
    assert capfd.readouterr().err == ""
    assert a.get_vocab() == b.get_vocab()
    assert (tmp_path / "a" / "sentencepiece.bpe.model").read_bytes() == (tmp_path / "b" / "sentencepiece.bpe.model").read_bytes()


def test_too_small_vocabulary_or_no_text_is_a_clear_error(tmp_path):
    texts = [t for unit in udhr("valid") for t in unit["text"].values()]
    with pytest.raises(ValueError, match=r"vocab_size 300 is too small .* use at least \d+"):
        train_tokenizer(texts, tmp_path, vocab_size=300)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", "  "], tmp_path)


TINY = dict(vocab_size=1000, hidden=32, layers=2, heads=4, max_positions=130, max_length=64, batch_size=16, lr=3e-3, warmup=5)


def _texts(split):
    return [t for unit in udhr(split) for t in unit["text"].values()]


def _heldout_mlm_loss(model, tokenizer):
    windows = mlm_windows(tokenizer, _texts("valid"), 64)
    batch = DataCollatorForLanguageModeling(tokenizer, seed=1)([{"input_ids": w} for w in windows])
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "encoder"
    return train_tiny_encoder(_texts("train"), out, steps=60, progress=False, **TINY)


def test_mlm_training_lowers_the_loss_on_held_out_text(trained_dir):
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    trained = AutoModelForMaskedLM.from_pretrained(trained_dir).eval()
    torch.manual_seed(0)
    untrained = AutoModelForMaskedLM.from_config(trained.config).eval()
    assert type(trained).__name__ == "XLMRobertaForMaskedLM"
    assert trained.config.vocab_size == len(tokenizer) and trained.config.type_vocab_size == 1
    assert trained.config.intermediate_size == 4 * trained.config.hidden_size
    before, after = _heldout_mlm_loss(untrained, tokenizer), _heldout_mlm_loss(trained, tokenizer)
    assert after < before - 0.5, (before, after)
    record = json.loads((trained_dir / SETTINGS_FILE).read_text())
    assert record["loss"]["last"] < record["loss"]["first"] - 0.5


def test_mlm_windows_pack_every_token(tokenizer):
    texts = _texts("valid")
    windows = mlm_windows(tokenizer, texts, 64)
    assert all(w[0] == tokenizer.bos_token_id and w[-1] == tokenizer.eos_token_id for w in windows)
    assert all(len(w) == 64 for w in windows[:-1]) and len(windows[-1]) <= 64
    stream = [i for w in windows for i in w[1:-1]]
    assert stream == [i for t in texts for i in (*tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)]


def test_training_is_deterministic_and_cached(trained_dir, tmp_path):
    again = train_tiny_encoder(_texts("train"), tmp_path / "again", steps=60, progress=False, **TINY)
    assert load_file(again / "model.safetensors").keys() == load_file(trained_dir / "model.safetensors").keys()
    for name, tensor in load_file(again / "model.safetensors").items():
        assert torch.equal(tensor, load_file(trained_dir / "model.safetensors")[name]), name
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    train_tiny_encoder(_texts("train"), again, steps=60, progress=False, **TINY)
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # same settings, same corpus: reused
    train_tiny_encoder(_texts("train"), again, steps=3, progress=False, **TINY)
    assert (again / "model.safetensors").stat().st_mtime_ns != stamp  # other settings: retrained
    assert json.loads((again / SETTINGS_FILE).read_text())["settings"]["steps"] == 3


def test_a_failed_run_leaves_the_previous_directory_intact(trained_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in trained_dir.iterdir()}
    with pytest.raises(ValueError, match="too small"):
        train_tiny_encoder(_texts("train"), trained_dir, steps=1, progress=False, **{**TINY, "vocab_size": 100})
    assert {p.name: p.read_bytes() for p in trained_dir.iterdir()} == before
    assert [p.name for p in trained_dir.parent.iterdir()] == [trained_dir.name]  # no temporary left behind
    with pytest.raises(ValueError, match="too small"):
        train_tiny_encoder(_texts("train"), tmp_path / "new", steps=1, progress=False, **{**TINY, "vocab_size": 100})
    assert list(tmp_path.iterdir()) == []


def test_read_corpus_takes_text_lines_and_jsonl_units(tmp_path):
    plain = tmp_path / "bo.txt"
    plain.write_text("\ufeffསྐྱེ་བོ་རེ་རེར།\n\n  ھەممە ئادەم  \n", encoding="utf-8")
    assert read_corpus([plain]) == ["སྐྱེ་བོ་རེ་རེར།", "ھەممە ئادەم"]
    udhr_train = Path(swcm.resources.__file__).parent / "udhr" / "train.jsonl"
    assert read_corpus([udhr_train, plain]) == [t for t in _texts("train") if t.strip()] + read_corpus([plain])
    single = tmp_path / "kk.jsonl"
    single.write_text('{"text": "Барлық адамдар"}\n', encoding="utf-8")
    assert read_corpus([single]) == ["Барлық адамдар"]


def test_cli_trains_an_encoder_that_swcm_builds_from(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_texts("train")) + "\n", encoding="utf-8")
    out = tmp_path / "enc"
    args = ["tiny-encoder", "--corpus", str(corpus), "--out", str(out), "--steps", "3", "--hidden", "32",
            "--layers", "2", "--vocab-size", "1000", "--seed", "1"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "MLM loss" in printed
    assert AutoModelForMaskedLM.from_pretrained(out).config.num_hidden_layers == 2
    model = SWCMForConditionalGeneration.from_encoder(out, insert_every=1)
    assert model.config.decoder_layer_types == ["custom", "normal", "custom"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("latin1.txt", "Article 1\nAll human beings\nd\xe9clar\xe9s\n".encode("latin-1"), ":3: not UTF-8 text"),
        ("empty.txt", b"\n  \n", ":1: no text in the file"),
        ("units.jsonl", b'{"text": "ok"}\n{"id": 2}\n', ':2: missing field "text"'),
        ("broken.jsonl", b'{"text": "ok"}\n\n{"text": \n', ":3: malformed JSON"),
    ],
)
def test_cli_bad_corpus_is_a_one_line_error(tmp_path, capsys, name, content, problem):
    (tmp_path / name).write_bytes(content)
    assert cli(["tiny-encoder", "--corpus", str(tmp_path / name), "--out", str(tmp_path / "enc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("swcm tiny-encoder: error: ")
    assert f"{tmp_path / name}{problem}" in err
    assert not (tmp_path / "enc").exists()


@pytest.mark.parametrize(
    ("flags", "problem"),
    [(["--hidden", "30"], "not a multiple of the 4 attention heads"), (["--steps", "0"], "steps must be positive")],
)
def test_cli_bad_settings_are_a_one_line_error(tmp_path, capsys, flags, problem):
    assert cli(["tiny-encoder", "--out", str(tmp_path / "enc"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err
