"""Vocabulary extension of an XLM-R-style encoder: new SentencePiece pieces for a script or
language it reads poorly, and their embedding rows.

`extend_vocabulary` trains a SentencePiece unigram model on the new text, appends the pieces
the encoder's tokenizer lacks to its SentencePiece model (old pieces keep their ids; <mask> and
added tokens move up behind them), and initialises each new row from the piece's decomposition
under the old tokenizer (`mean`) or by FOCUS (`swcm.encoders.focus`).
"""

from __future__ import annotations

import io
import os
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import regex
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..io import save_tokenizer
from ..script_tokens import char_script
from .focus import auxiliary_embeddings, focus_rows
from .tiny_encoder import SENTENCEPIECE_FILE, write_xlmr_tokenizer

NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL
UNIGRAM = sp_pb2.TrainerSpec.UNIGRAM
# Normalisation rules SentencePiece's trainer knows by name; a custom rule trains as identity.
NAMED_NORMALIZATIONS = ("identity", "nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf")


def sentencepiece_proto(tokenizer: PreTrainedTokenizerBase, where: str) -> sp_pb2.ModelProto:
    """The SentencePiece unigram model behind an XLM-R-style tokenizer; ValueError otherwise."""
    # The SentencePiece file beside the tokenizer: `vocab_file` where the class records it, else
    # the directory it was loaded from (generic fast tokenizers, and XLM-R under transformers 5).
    candidates = [getattr(tokenizer, "vocab_file", None), os.path.join(tokenizer.name_or_path or "", SENTENCEPIECE_FILE)]
    vocab_file = next((f for f in candidates if f and os.path.isfile(f)), None)
    xlmr_layout = tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    if not xlmr_layout or vocab_file is None:
        raise ValueError(
            f"{where}: vocabulary extension supports XLM-R-style SentencePiece tokenizers ({SENTENCEPIECE_FILE}); "
            f"found {type(tokenizer).__name__}" + ("" if vocab_file else f" without {SENTENCEPIECE_FILE}")
        )
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(Path(vocab_file).read_bytes())
    if proto.trainer_spec.model_type != UNIGRAM:
        raise ValueError(f"{where}: {SENTENCEPIECE_FILE} is a {sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)} "
                         "model; vocabulary extension supports unigram models")
    return proto


def train_new_pieces(texts: Sequence[str], proto: sp_pb2.ModelProto, max_new: int) -> list[tuple[str, float]]:
    """Up to `max_new` (piece, score) pairs that a unigram model trained on `texts` has and `proto` lacks.

    The new model uses the old one's normalisation, so its pieces are written as the old
    tokenizer sees text. Single characters the old model lacks come first (without them the
    text cannot be covered): those of the text, then every other character of the scripts the
    text is written in (`script_characters`), so that a rare sign the training text happens not
    to hold is no <unk> later; then the other pieces by score (log probability).
    """
    normalization = proto.normalizer_spec.name if proto.normalizer_spec.name in NAMED_NORMALIZATIONS else "identity"
    characters = {c for text in texts for c in text if not c.isspace()}
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]),
        model_writer=writer,
        model_type="unigram",
        vocab_size=max_new + len(characters) + 4,  # an upper bound: a small corpus gives fewer
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=False,
        normalization_rule_name=normalization,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,  # a large corpus is sampled, as SentencePiece recommends
        shuffle_input_sentence=True,
        minloglevel=2,
    )
    trained = sp_pb2.ModelProto()
    trained.ParseFromString(writer.getvalue())
    known = {p.piece for p in proto.pieces}
    candidates = [(p.piece, p.score) for p in trained.pieces if p.type == NORMAL and p.piece not in known]
    # Single characters: what covering the text needs, so they come before longer pieces.
    chars = [c for c in candidates if len(c[0]) == 1]
    lowest = min((score for _, score in candidates), default=0.0) - 1.0
    seen = known | {piece for piece, _ in chars}
    fallback = [(c, lowest) for c in script_characters(texts, known, nfkc="nfkc" in normalization) if c not in seen]
    rest = sorted((c for c in candidates if len(c[0]) > 1), key=lambda c: -c[1])
    return (chars + fallback + rest)[:max_new]


_ALL_CHARACTERS = None


def script_characters(texts: Sequence[str], known: set[str], nfkc: bool = False) -> list[str]:
    """Every assigned character (letters, marks, digits and signs alike: Tibetan's ༈ and ༄ too),
    in code-point order, of each script the old vocabulary `known` cannot read: a script of
    whose characters in `texts` it lacks at least half. With `nfkc`, only characters that NFKC
    leaves as they are (the others never reach a tokenizer that normalises so)."""
    global _ALL_CHARACTERS
    used: dict[str, set[str]] = defaultdict(set)
    for c in {c for text in texts for c in text}:
        script = char_script(c)
        if script is not None:
            used[script].add(c)
    scripts = [s for s, chars in used.items() if 2 * len(chars - known) >= len(chars)]
    if not scripts:
        return []
    if _ALL_CHARACTERS is None:
        _ALL_CHARACTERS = "".join(chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF)
    return [c for script in sorted(scripts) for c in regex.findall(rf"\p{{Script={script}}}", _ALL_CHARACTERS)
            if not c.isspace() and (not nfkc or unicodedata.normalize("NFKC", c) == c)]


def extended_proto(proto: sp_pb2.ModelProto, pieces: Sequence[tuple[str, float]]) -> sp_pb2.ModelProto:
    """A copy of `proto` with `pieces` appended as normal pieces (old pieces keep their ids)."""
    out = sp_pb2.ModelProto()
    out.CopyFrom(proto)
    for piece, score in pieces:
        new = out.pieces.add()
        new.piece, new.score, new.type = piece, score, NORMAL
    out.trainer_spec.vocab_size = len(out.pieces)
    return out


def save_extended_tokenizer(proto: sp_pb2.ModelProto, out_dir: str | os.PathLike, like: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """Write `proto` as an XLM-R tokenizer into `out_dir` (fast and slow files), with the
    maximum length and added tokens of `like`; return the fast tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = write_xlmr_tokenizer(proto.SerializeToString(), out, like.model_max_length)
    vocab = fast.get_vocab()
    extra = [token for _, token in sorted(like.added_tokens_decoder.items()) if token.content not in vocab]
    if extra:
        fast.add_tokens(extra)
    save_tokenizer(fast, out)
    return fast


def _decomposer(proto: sp_pb2.ModelProto) -> spm.SentencePieceProcessor:
    """The old model, reading a piece literally: no dummy prefix, "▁" kept where it stands."""
    literal = sp_pb2.ModelProto()
    literal.CopyFrom(proto)
    literal.normalizer_spec.add_dummy_prefix = False
    literal.normalizer_spec.remove_extra_whitespaces = False
    return spm.SentencePieceProcessor(model_proto=literal.SerializeToString())


def piece_decomposition(piece: str, decomposer: spm.SentencePieceProcessor, old_vocab: Mapping[str, int]) -> list[int]:
    """Old token ids that spell `piece`: its segmentation under the old model, with every
    <unk> span replaced by its characters' pieces, or else their UTF-8 byte pieces (<0xNN>)."""
    ids: list[int] = []
    for sub in decomposer.encode(piece, return_type="proto").pieces:
        if sub.id != decomposer.unk_id() and sub.piece in old_vocab:
            ids.append(old_vocab[sub.piece])
            continue
        for char in sub.surface:
            if char in old_vocab:
                ids.append(old_vocab[char])
            else:
                ids += [old_vocab[b] for b in (f"<0x{byte:02X}>" for byte in char.encode("utf-8")) if b in old_vocab]
    return ids


@torch.no_grad()
def _remap_rows(old: torch.Tensor, new_vocab: Mapping[str, int], old_vocab: Mapping[str, int],
                decompositions: Mapping[str, list[int]]) -> torch.Tensor:
    """Rows (or entries) for the new vocabulary: an old token keeps its row, a new piece gets the
    mean of its decomposition's rows, or the mean of all rows when nothing in it is known."""
    rows = old.new_empty((len(new_vocab), *old.shape[1:]))
    fallback = old.mean(dim=0)
    for token, new_id in new_vocab.items():
        if token in old_vocab:
            rows[new_id] = old[old_vocab[token]]
        else:
            parts = decompositions.get(token) or []
            rows[new_id] = old[parts].mean(dim=0) if parts else fallback
    return rows


INITIALISATIONS = ("mean", "focus")


@torch.no_grad()
def extend_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_new: int,
    out_dir: str | os.PathLike,
    where: str = "encoder",
    init: str = "mean",
) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """Add up to `max_new` pieces learnt from `texts` to `tokenizer` and grow `model` (a masked LM) in place.

    The extended tokenizer is written to `out_dir`. `init` sets the new rows of the input
    embeddings (and of the output layer and bias, where untied): `mean`, the mean over the
    piece's decomposition under the old tokenizer (`piece_decomposition`; the mean of all rows
    where every part is <unk>); `focus`, FOCUS's weighted mean of similar shared pieces for the
    pieces that occur in `texts` (`focus_rows`), the decomposition mean for the rest.
    Returns (new tokenizer, the pieces added).
    """
    if init not in INITIALISATIONS:
        raise ValueError(f"unknown initialisation {init!r} (known: {', '.join(INITIALISATIONS)})")
    if max_new < 1:
        raise ValueError(f"--extend-vocab must be at least 1, got {max_new}")
    proto = sentencepiece_proto(tokenizer, where)
    pieces = train_new_pieces(texts, proto, max_new)
    new_tokenizer = save_extended_tokenizer(extended_proto(proto, pieces), out_dir, like=tokenizer)
    old_vocab, new_vocab = tokenizer.get_vocab(), new_tokenizer.get_vocab()
    decomposer = _decomposer(proto)
    decompositions = {piece: piece_decomposition(piece, decomposer, old_vocab) for piece, _ in pieces}

    auxiliary = auxiliary_embeddings(new_tokenizer, texts) if init == "focus" else None

    def remap(old: torch.Tensor) -> torch.Tensor:
        rows = _remap_rows(old, new_vocab, old_vocab, decompositions)
        if auxiliary is not None:
            focus_rows(old, rows, new_vocab, old_vocab, new_tokenizer, auxiliary)
        return rows

    inputs = model.get_input_embeddings()
    output = model.get_output_embeddings()
    new_inputs = remap(inputs.weight)
    untied = output is not None and output.weight is not inputs.weight
    new_outputs = remap(output.weight) if untied else None
    bias = getattr(output, "bias", None) if output is not None else None
    new_bias = remap(bias) if bias is not None else None

    model.resize_token_embeddings(len(new_vocab), mean_resizing=False)
    model.get_input_embeddings().weight.copy_(new_inputs)
    output = model.get_output_embeddings()
    if new_outputs is not None:
        output.weight.copy_(new_outputs)
    if new_bias is not None:
        output.bias.copy_(new_bias)
    model.tie_weights()
    return new_tokenizer, [piece for piece, _ in pieces]
