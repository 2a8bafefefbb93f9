"""Shared fixtures: a tiny real XLM-R encoder with a SentencePiece tokenizer trained on UDHR text."""

import io
import os

import pytest
import sentencepiece as spm
import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaTokenizerFast

from swcm.resources import udhr

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _train_tokenizer(out_dir, vocab_size=1000):
    texts = [t for unit in udhr("train") + udhr("valid") + udhr("test") for t in unit["text"].values()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, pad_id=-1, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
    )
    (out_dir / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    return XLMRobertaTokenizerFast.from_pretrained(out_dir, from_slow=True)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A directory with a random 4-layer XLM-R masked LM (hidden 32) and its tokenizer."""
    out = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = _train_tokenizer(out)
    tokenizer.save_pretrained(out)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    XLMRobertaForMaskedLM(config).save_pretrained(out, safe_serialization=True)
    return out
