"""Vocabulary trimming on tiny real encoders (SentencePiece/XLM-R and WordPiece/BERT) and real text."""

import json

import pytest
import sentencepiece as spm
import torch
from tokenizers import BertWordPieceTokenizer, Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

from swcm.building import build_model_dir
from swcm.cli import main
from swcm.encoders.tiny_encoder import read_corpus
from swcm.encoders.trim import REPORT_FILE, trim_vocabulary
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import libreoffice, udhr


def _udhr(langs, split="train"):
    return [u["text"][lang] for u in udhr(split) for lang in langs]


def _write(path, texts):
    path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    return path


def _assert_same_pieces(old, new, texts):
    for text in texts:
        assert new.tokenize(text) == old.tokenize(text), text[:60]
        assert new.decode(new(text)["input_ids"]) == old.decode(old(text)["input_ids"]), text[:60]


@torch.no_grad()
def _assert_same_masked_lm(old_dir, new_dir, texts):
    """The trimmed masked LM computes the old one's hidden states and logits (on the kept rows)."""
    old_tok, new_tok = AutoTokenizer.from_pretrained(old_dir), AutoTokenizer.from_pretrained(new_dir)
    old_model, new_model = AutoModelForMaskedLM.from_pretrained(old_dir).eval(), AutoModelForMaskedLM.from_pretrained(new_dir).eval()
    kept = torch.tensor(old_tok.convert_tokens_to_ids(new_tok.convert_ids_to_tokens(list(range(len(new_tok))))))
    for text in texts:
        old_out = old_model(**old_tok(text, truncation=True, return_tensors="pt"), output_hidden_states=True)
        new_out = new_model(**new_tok(text, truncation=True, return_tensors="pt"), output_hidden_states=True)
        torch.testing.assert_close(new_out.hidden_states[-1], old_out.hidden_states[-1])
        torch.testing.assert_close(new_out.logits, old_out.logits[..., kept])


@pytest.fixture(scope="module")
def zh_en_trimmed(tiny_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trim") / "zh-en"
    report = trim_vocabulary(tiny_encoder_dir, _udhr(["zh", "en"]), out)
    return out, report


def test_unigram_trim_keeps_every_corpus_segmentation(tiny_encoder_dir, zh_en_trimmed):
    out, report = zh_en_trimmed
    old, new = AutoTokenizer.from_pretrained(tiny_encoder_dir), AutoTokenizer.from_pretrained(out)
    assert report.pieces_kept == len(new) < len(old) == report.pieces_before
    assert report.coverage == 1.0 and report.texts_unchanged == report.texts == len(_udhr(["zh", "en"]))
    assert report.bytes_after < report.bytes_before and report.parameters_after < report.parameters_before
    _assert_same_pieces(old, new, _udhr(["zh", "en"]))
    # Unseen text of the corpus languages still splits into kept pieces, never more <unk> than before.
    for text in _udhr(["zh", "en"], "test"):
        assert new(text)["input_ids"].count(new.unk_token_id) <= old(text)["input_ids"].count(old.unk_token_id)
    assert [new.bos_token_id, new.pad_token_id, new.eos_token_id, new.unk_token_id] == [0, 1, 2, 3]
    assert new.mask_token_id == len(new) - 1 and new.convert_ids_to_tokens(new.mask_token_id) == "<mask>"
    assert json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))["pieces_kept"] == len(new)


def test_unigram_trim_rewrites_the_sentencepiece_file_consistently(zh_en_trimmed):
    out, _ = zh_en_trimmed
    fast = AutoTokenizer.from_pretrained(out)
    slow = spm.SentencePieceProcessor(model_file=str(out / "sentencepiece.bpe.model"))
    assert slow.get_piece_size() == len(fast) - 2  # XLM-R's fairseq layout adds <pad> and <mask>
    for text in _udhr(["zh", "en"], "valid"):
        assert fast.tokenize(text) == slow.encode(text, out_type=str)
        assert fast(text, add_special_tokens=False)["input_ids"] == [i + 1 for i in slow.encode(text)]


def test_unigram_trim_keeps_the_masked_lm_rows(tiny_encoder_dir, zh_en_trimmed):
    _assert_same_masked_lm(tiny_encoder_dir, zh_en_trimmed[0], _udhr(["zh", "en"], "valid")[:4])


def test_wordpiece_trim_keeps_every_corpus_segmentation(tiny_bert_dir, tmp_path):
    texts = _udhr(["en", "kk"])
    report = trim_vocabulary(tiny_bert_dir, texts, tmp_path / "out")
    old, new = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoTokenizer.from_pretrained(tmp_path / "out")
    assert report.pieces_kept == len(new) < len(old) and report.texts_unchanged == len(texts)
    _assert_same_pieces(old, new, texts)
    # A vocab.txt beside it (transformers 4 saves one) is rewritten: on its own it gives the same pieces
    assert (tmp_path / "out" / "vocab.txt").is_file() == (tiny_bert_dir / "vocab.txt").is_file()
    if (tiny_bert_dir / "vocab.txt").is_file():
        from_vocab = BertWordPieceTokenizer(str(tmp_path / "out" / "vocab.txt"), lowercase=False)
        for text in texts[:5]:
            assert from_vocab.encode(text, add_special_tokens=False).tokens == new.tokenize(text)
    assert new.cls_token_id is not None and new(texts[0])["input_ids"][0] == new.cls_token_id
    _assert_same_masked_lm(tiny_bert_dir, tmp_path / "out", texts[:3])


@pytest.mark.parametrize("encoder", ["tiny_encoder_dir", "tiny_bert_dir"])
def test_keep_and_min_count_drop_rare_pieces_but_keep_characters(encoder, request, tmp_path):
    encoder_dir = request.getfixturevalue(encoder)
    texts = _udhr(["en"])
    full = trim_vocabulary(encoder_dir, texts, tmp_path / "full")
    small = trim_vocabulary(encoder_dir, texts, tmp_path / "small", keep=20)
    frequent = trim_vocabulary(encoder_dir, texts, tmp_path / "frequent", min_count=50)
    assert small.pieces_kept < full.pieces_kept and frequent.pieces_kept < full.pieces_kept
    assert small.coverage < 1.0 and small.texts_unchanged < small.texts
    old, new = AutoTokenizer.from_pretrained(encoder_dir), AutoTokenizer.from_pretrained(tmp_path / "small")
    for text in texts:  # dropped pieces split into characters, not <unk>
        assert new(text)["input_ids"].count(new.unk_token_id) == old(text)["input_ids"].count(old.unk_token_id)


def test_a_trimmed_encoder_builds_and_trains(zh_en_trimmed, tmp_path):
    out, _ = zh_en_trimmed
    build_model_dir(out, tmp_path / "built", insert_every=2, langs=["zh", "en"])
    model = SWCMForConditionalGeneration.from_pretrained(tmp_path / "built").train()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "built")
    unit = udhr("valid")[0]["text"]
    loss = model(**tokenizer([unit["zh"][:80]], return_tensors="pt"), labels=tokenizer([unit["en"][:80]], return_tensors="pt")["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_cli_trims_on_the_vendored_gzip_corpus(tiny_encoder_dir, tmp_path, capsys):
    corpus = "swcm/resources/libreoffice/valid.jsonl.gz"
    assert main(["trim-vocab", "--encoder", str(tiny_encoder_dir), "--corpus", corpus, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "pieces kept:" in printed and "corpus covered: 100.00% of tokens" in printed and "saved" in printed
    texts = read_corpus([corpus])
    assert len(texts) == sum(len(u["text"]) for u in libreoffice("valid"))
    _assert_same_pieces(AutoTokenizer.from_pretrained(tiny_encoder_dir), AutoTokenizer.from_pretrained(tmp_path / "out"), texts[:300])


def test_a_bpe_tokenizer_is_refused_in_one_line(tmp_path, capsys):
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(_udhr(["en"]), trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(tmp_path / "bpe")
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    RobertaForMaskedLM(config).save_pretrained(tmp_path / "bpe", safe_serialization=True)
    corpus = _write(tmp_path / "corpus.txt", _udhr(["en"]))
    capsys.readouterr()  # what saving the checkpoint printed
    assert main(["trim-vocab", "--encoder", str(tmp_path / "bpe"), "--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a BPE tokenizer" in err and "tokenizer.json" in err
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_directory_it_did_not_write(tiny_encoder_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine", encoding="utf-8")
    corpus = _write(tmp_path / "corpus.txt", _udhr(["en"]))
    assert main(["trim-vocab", "--encoder", str(tiny_encoder_dir), "--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 2
    assert "is a directory that swcm did not write" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text(encoding="utf-8") == "mine"
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip")
    assert main(["trim-vocab", "--encoder", str(tiny_encoder_dir), "--corpus", str(bad), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "not a readable gzip file" in err


def test_an_encoder_path_that_is_not_a_model_directory_gets_one_line(tmp_path, capsys):
    corpus = _write(tmp_path / "corpus.txt", _udhr(["en"]))
    assert main(["trim-vocab", "--encoder", str(tmp_path), "--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config.json" in err
