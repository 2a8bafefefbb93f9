"""A stand-in encoder: a SentencePiece tokenizer and a small XLM-R masked LM trained on a corpus.

The paper starts from CINO-base-v2, whose weights cannot be downloaded everywhere. This module
builds an encoder of the same architecture (XLM-R), only smaller, from whatever text is at hand,
so that the whole pipeline (build → pretrain → fine-tune → evaluate) runs offline.

The tokenizer follows XLM-R's id layout exactly: <s>=0, <pad>=1, </s>=2, <unk>=3, then the
SentencePiece pieces, <mask> last. Two choices make it lossless on text it has never seen:
byte fallback (a character missing from the vocabulary becomes its UTF-8 bytes, never <unk>)
and no Unicode normalisation (full-width Chinese punctuation stays full-width, so generated
text can match references exactly).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from tokenizers import decoders
from transformers import XLMRobertaTokenizer, XLMRobertaTokenizerFast
from transformers.convert_slow_tokenizer import XLMRobertaConverter

SENTENCEPIECE_FILE = "sentencepiece.bpe.model"  # the file name XLM-R checkpoints use


class _ByteFallbackXLMRobertaConverter(XLMRobertaConverter):
    """XLM-R's slow→fast conversion, keeping SentencePiece's byte fallback.

    transformers' own converter drops byte fallback for XLM-R (it warns and the fast tokenizer
    then emits <unk>); the tokenizers Unigram model supports it, and the decoder must turn the
    <0xNN> pieces back into characters before the word-boundary marker becomes a space.
    """

    handle_byte_fallback = True

    def decoder(self, replacement, add_prefix_space):
        return decoders.Sequence([decoders.ByteFallback(), super().decoder(replacement, add_prefix_space)])


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 8000,
    *,
    byte_fallback: bool = True,
) -> XLMRobertaTokenizerFast:
    """Train a SentencePiece unigram tokenizer on `texts` and save it, XLM-R style, in `out_dir`.

    Writes `sentencepiece.bpe.model` (the slow tokenizer's file) and the fast tokenizer's files
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json). `vocab_size` is an upper
    bound: a small corpus may yield fewer pieces. Every character of `texts` gets a piece
    (character coverage 1.0); with `byte_fallback`, any other character is encoded as bytes.
    Returns the fast tokenizer, as `AutoTokenizer.from_pretrained(out_dir)` would load it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no text to train a tokenizer on")
    model = io.BytesIO()
    try:
        _train_sentencepiece(texts, model, vocab_size, byte_fallback)
    except RuntimeError as err:
        # SentencePiece's own message reads "... required_chars. 600 vs 611 ..."
        need = re.search(r"required_chars\. \d+ vs (\d+)", str(err))
        if need is None:
            raise
        raise ValueError(
            f"vocab_size {vocab_size} is too small for this corpus: every character needs a piece"
            f"{' (plus 256 byte pieces)' if byte_fallback else ''}; use at least {need.group(1)}"
        ) from None
    model_file = out / SENTENCEPIECE_FILE
    model_file.write_bytes(model.getvalue())
    slow = XLMRobertaTokenizer(vocab_file=str(model_file))
    fast = XLMRobertaTokenizerFast(
        vocab_file=str(model_file), tokenizer_object=_ByteFallbackXLMRobertaConverter(slow).converted()
    )
    fast.save_pretrained(out)
    return fast


def _train_sentencepiece(texts: list[str], model_writer, vocab_size: int, byte_fallback: bool) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model_writer,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus cannot fill a large vocabulary; take what it has
        character_coverage=1.0,
        byte_fallback=byte_fallback,
        normalization_rule_name="identity",
        # XLM-R's SentencePiece model has <unk>, <s>, </s> at 0, 1, 2; the converter (and the slow
        # tokenizer's fairseq offset) drop exactly these three and add <pad> and <mask>. Any other
        # layout silently loses real pieces (the word-boundary "▁" was one of them).
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        max_sentence_length=1 << 16,
        minloglevel=2,  # quiet: SentencePiece otherwise logs every EM iteration to stderr
    )
