"""The stand-in encoder: its tokenizer on real UDHR text in six scripts, MLM training, the CLI."""

import pytest
from transformers import AutoTokenizer

from swcm.resources import UDHR_LANGS, udhr
from swcm.tiny_encoder import train_tokenizer


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


def test_slow_and_fast_tokenizers_agree(tiny_encoder_dir, tokenizer):
    slow = AutoTokenizer.from_pretrained(tiny_encoder_dir, use_fast=False)
    assert type(slow).__name__ == "XLMRobertaTokenizer"
    assert len(slow) == len(tokenizer)
    for unit in udhr("valid"):
        for text in unit["text"].values():
            assert slow(text)["input_ids"] == tokenizer(text)["input_ids"]


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
