"""A stand-in encoder: a SentencePiece tokenizer and a small XLM-R masked LM trained on a corpus.

The paper starts from CINO-base-v2, whose weights cannot be downloaded everywhere. This module
builds an encoder of the same architecture (XLM-R), only smaller, from whatever text is at hand,
so that the whole pipeline (build → pretrain → fine-tune → evaluate) runs offline.

The tokenizer follows XLM-R's id layout exactly: <s>=0, <pad>=1, </s>=2, <unk>=3, then the
SentencePiece pieces, <mask> last. Two choices make it lossless on text it has never seen:
byte fallback (a character missing from the vocabulary becomes its UTF-8 bytes, never <unk>)
and no Unicode normalisation (full-width Chinese punctuation stays full-width, so generated
text can match references exactly).

It is saved as a generic fast tokenizer (`PreTrainedTokenizerFast`, whose tokenizer.json is the
whole tokenizer) rather than as `XLMRobertaTokenizer`: transformers 5 rebuilds an
`XLMRobertaTokenizer` from its vocabulary list and drops byte fallback, while both majors read a
`PreTrainedTokenizerFast` unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from tokenizers import decoders
from tqdm.auto import tqdm
from transformers import (
    AddedToken,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaTokenizer,
)
from transformers.convert_slow_tokenizer import XLMRobertaConverter

from ..io import atomic_directory, save_tokenizer
from ..precision import MIXED_PRECISION_CHOICES, resolve_mixed_precision
from ..training import TrainingConfig, train

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
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece unigram tokenizer on `texts` and save it, XLM-R style, in `out_dir`.

    Writes `sentencepiece.bpe.model` (the slow tokenizer's file) and the fast tokenizer's files
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json). `vocab_size` is an upper
    bound: a small corpus may yield fewer pieces. Every character of `texts` gets a piece
    (character coverage 1.0); with `byte_fallback`, any other character is encoded as bytes.
    `model_max_length` is the longest input the encoder takes (XLM-R: 512 tokens, 514 positions).
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
    return write_xlmr_tokenizer(model.getvalue(), out, model_max_length)


def write_xlmr_tokenizer(sentencepiece_model: bytes, out_dir: str | os.PathLike, model_max_length: int) -> PreTrainedTokenizerFast:
    """Save a serialized SentencePiece model as an XLM-R tokenizer in `out_dir`, keeping byte
    fallback: `sentencepiece.bpe.model` and the fast tokenizer's files, loadable by
    `AutoTokenizer` under transformers 4 and 5 alike. Returns the fast tokenizer."""
    out = Path(out_dir)
    model_file = out / SENTENCEPIECE_FILE
    model_file.write_bytes(sentencepiece_model)
    slow = XLMRobertaTokenizer(vocab_file=str(model_file))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_ByteFallbackXLMRobertaConverter(slow).converted(),
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
        mask_token=AddedToken("<mask>", lstrip=True, special=True),  # XLM-R's: "<mask>" takes the space before it
        model_max_length=model_max_length,
    )
    save_tokenizer(fast, out)
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


def read_corpus(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Read documents from corpus files: plain text (one document a line) or JSONL (`.jsonl`),
    either of them gzip-compressed when the name ends in `.gz` (as the vendored corpora are).

    A JSONL line holds an object with "text": a string, or an object mapping language codes to
    strings (an aligned unit, as in swcm/resources/udhr/*.jsonl), whose every text is taken.
    Blank lines are skipped. Raises ValueError naming file and line on non-UTF-8 bytes, bad JSON,
    a missing or malformed "text", or a file without any text; FileNotFoundError if one is missing.
    """
    texts: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory; a corpus file is expected")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        jsonl = path.name.endswith((".jsonl", ".jsonl.gz"))
        found = 0
        try:
            with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a byte-order mark
                    except UnicodeDecodeError as err:
                        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})") from None
                    if not line.strip():
                        continue
                    line_texts = _jsonl_texts(line, f"{path}:{lineno}") if jsonl else [line.strip()]
                    texts += line_texts
                    found += len(line_texts)
        except (gzip.BadGzipFile, EOFError) as err:
            raise ValueError(f"{path}: not a readable gzip file ({err})") from None
        if not found:
            raise ValueError(f"{path}:1: no text in the file")
    return texts


def _jsonl_texts(line: str, where: str) -> list[str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: malformed JSON: {err.msg}") from None
    if not isinstance(record, dict) or "text" not in record:
        raise ValueError(f'{where}: missing field "text"')
    text = record["text"]
    texts = list(text.values()) if isinstance(text, dict) else [text]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f'{where}: field "text" must be a string or an object of strings per language')
    return [t for t in texts if t.strip()]


@dataclass(frozen=True)
class TinyEncoderSettings:
    """Everything that determines a stand-in encoder, besides the corpus (stored beside it)."""

    vocab_size: int = 8000
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    max_positions: int = 514  # XLM-R's: 512 tokens after the padding offset
    max_length: int = 128  # training window in tokens, <s> and </s> included
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 30
    mlm_probability: float = 0.15
    seed: int = 0
    mixed_precision: str = "auto"  # swcm.precision: bf16 where the hardware runs it fast, else fp32

    def __post_init__(self):
        for name in ("vocab_size", "hidden", "layers", "heads", "steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not a multiple of the {self.heads} attention heads")
        if not 3 <= self.max_length <= self.max_positions - 2:
            raise ValueError(f"max_length {self.max_length} must be between 3 and max_positions - 2 = {self.max_positions - 2}")
        if not 0 < self.mlm_probability < 1 or self.lr <= 0 or self.warmup < 0:
            raise ValueError("need 0 < mlm_probability < 1, lr > 0 and warmup >= 0")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {self.mixed_precision!r}")


SETTINGS_FILE = "tiny_encoder.json"


def train_tiny_encoder(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    settings: TinyEncoderSettings | None = None,
    *,
    progress: bool = True,
    **overrides,
) -> Path:
    """Train a stand-in encoder on `texts` and save it as a Hugging Face directory in `out_dir`.

    The tokenizer comes from `train_tokenizer`; the model is an `XLMRobertaForMaskedLM` (FFN 4×
    hidden, type vocab 1) trained with masked-language modelling through the shared training loop
    for `settings.steps` AdamW steps (linear warm-up and decay; autocast in the precision `swcm.precision` resolves for
    `settings.mixed_precision`, printed and recorded as "mixed_precision"). Settings are a `TinyEncoderSettings`, or its
    fields as keyword overrides. The run is deterministic for a seed. `out_dir` receives
    config.json, model.safetensors, the tokenizer files and `tiny_encoder.json` (settings, corpus
    digest, parameter count, vocabulary size, first and last loss); it is written atomically, and if it already holds an encoder
    trained with the same settings on the same texts it is reused without training.
    Returns `out_dir`, loadable by `AutoModelForMaskedLM` and by `swcm build`.
    """
    settings = replace(settings or TinyEncoderSettings(), **overrides)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no text to train the encoder on")
    out = Path(out_dir)
    record = {"settings": asdict(settings), "corpus_sha256": _digest(texts)}
    if _is_cached(out, record):
        if progress:
            tqdm.write(f"reusing the encoder in {out} (same settings, same corpus)", file=sys.stderr)
        return out
    with atomic_directory(out) as tmp:
        tokenizer = train_tokenizer(texts, tmp, settings.vocab_size, model_max_length=settings.max_positions - 2)
        model = _masked_lm(settings, tokenizer)
        precision = resolve_mixed_precision(settings.mixed_precision, "cpu")
        if precision.mixed_precision == "fp16":
            raise ValueError("the stand-in encoder trains on the CPU; fp16 needs a GPU")
        losses = _train_mlm(model, tokenizer, texts, settings, precision.mixed_precision, progress)
        model.save_pretrained(tmp, safe_serialization=True)
        record["parameters"] = sum(p.numel() for p in model.parameters())
        record["vocab_size"] = len(tokenizer)
        record["loss"] = {"first": losses[0], "last": sum(losses[-20:]) / len(losses[-20:])}
        record["mixed_precision"] = precision.mixed_precision
        (tmp / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _is_cached(out: Path, record: dict) -> bool:
    try:
        stored = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    complete = all((out / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))
    return complete and all(stored.get(key) == value for key, value in record.items())


def _masked_lm(settings: TinyEncoderSettings, tokenizer) -> XLMRobertaForMaskedLM:
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=4 * settings.hidden,
        max_position_embeddings=settings.max_positions,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(settings.seed)
    return XLMRobertaForMaskedLM(config)


def mlm_windows(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of `texts`, packed into `<s> ... </s>` windows of `max_length` tokens.

    As in RoBERTa's pretraining, documents are concatenated (each ended by </s>) and cut into
    full windows, so no step is spent on padding and no text is truncated away; only the last
    window may be shorter.
    """
    stream = [i for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
              for i in (*ids, tokenizer.eos_token_id)]
    body = max_length - 2
    return [
        [tokenizer.bos_token_id, *stream[start : start + body], tokenizer.eos_token_id]
        for start in range(0, len(stream), body)
    ]


def mlm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The child of a masked LM that holds its output embeddings (BERT's `cls`, XLM-R's
    `lm_head`): the head that turns each position's hidden state into vocabulary scores. None
    when the model has no output embeddings."""
    output = model.get_output_embeddings()
    if output is None:
        return None
    return next((module for module in model.children() if any(m is output for m in module.modules())), None)


def masked_lm_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The masked LM's cross-entropy per masked token on a `DataCollatorForLanguageModeling`
    batch, as the model's own loss gives it, with its head applied to the masked positions only
    (labels other than −100). The vocabulary projection of every position is most of a masked-LM
    step (e5's 3-layer cut: ~85 % of the FLOPs at 15 % masking), and all but the masked rows are
    thrown away. `model` may be wrapped (DDP): the forward goes through the wrapper, and a forward
    pre-hook on the head (`mlm_head`) hands it the masked rows. A head the hook does not reach
    scores every position, and the loss is taken on the masked ones (the same value)."""
    labels = batch["labels"]
    masked = labels != -100
    head = mlm_head(getattr(model, "module", model))
    reached = []

    def masked_rows(module, args, kwargs):
        if args and args[0].shape[:2] == masked.shape:
            reached.append(True)
            return (args[0][masked], *args[1:]), kwargs
        return None

    handle = head.register_forward_pre_hook(masked_rows, with_kwargs=True) if head is not None else None
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        if handle is not None:
            handle.remove()
    if not reached:
        logits = logits[masked]
    return F.cross_entropy(logits.float(), labels[masked])


def _train_mlm(model, tokenizer, texts: list[str], settings: TinyEncoderSettings, mixed_precision: str,
               progress: bool) -> list[float]:
    """Masked-LM training through the shared loop (`swcm.training.train`), in a scratch
    directory: `settings.steps` batches of windows drawn at random (with replacement, seeded);
    returns the loss of every step."""
    windows = mlm_windows(tokenizer, texts, settings.max_length)
    sampler = torch.Generator().manual_seed(settings.seed)
    picks = [torch.randint(len(windows), (min(settings.batch_size, len(windows)),), generator=sampler).tolist()
             for _ in range(settings.steps)]
    examples = [{"input_ids": windows[i]} for batch in picks for i in batch]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=settings.mlm_probability, seed=settings.seed)
    with tempfile.TemporaryDirectory(prefix="tiny-encoder-") as scratch:
        config = TrainingConfig(
            out_dir=scratch, max_steps=settings.steps, batch_size=len(picks[0]), lr=settings.lr, weight_decay=0.01,
            warmup_steps=min(settings.warmup, settings.steps // 2), schedule="linear", seed=settings.seed,
            shuffle=False, group_by_length=False, mixed_precision=mixed_precision, log_every=1,
            save_every=settings.steps, keep_last=1, progress=progress,
        )
        result = train(model, tokenizer, examples, config, collate, loss_fn=masked_lm_loss)
    model.eval()
    return [record["loss"] for record in result.history]
