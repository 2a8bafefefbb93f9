"""Vocabulary trimming: keep only the pieces a corpus uses.

XLM-R's 250k-row embedding (and an untied 250k-way output head built on it) dominates memory
and time for a small model. `trim_vocabulary` tokenizes the user's corpus with the encoder's
own tokenizer, keeps the special and added tokens, the pieces the corpus uses, and the
single-character pieces of every character it contains (so that a text outside the corpus
still splits into characters rather than <unk>), and writes a new encoder directory whose
tokenizer has only those pieces, in their old order, with their old scores, and whose
embedding rows (and masked-LM output rows, where the checkpoint has them) are the old ones.

Because the kept pieces keep their scores, every corpus text tokenizes exactly as before:
the old best segmentation (Unigram) or longest-match split (WordPiece) uses only kept pieces,
so it remains the best. `--min-count` and `--keep` drop rarely used pieces as well; texts that
used them are then segmented into other kept pieces, and the report says how many changed.

Supported: tokenizer.json with a Unigram (SentencePiece, XLM-R style; a `sentencepiece.bpe.model`
beside it is trimmed too) or WordPiece model (BERT; `vocab.txt` is rewritten), and checkpoints
stored as `model.safetensors` (BERT, RoBERTa, XLM-R layouts, with or without MLM head).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import AutoConfig, AutoTokenizer

from ..configuration import check_encoder_config
from ..io import atomic_directory
from .tiny_encoder import SENTENCEPIECE_FILE

REPORT_FILE = "trim-vocab.json"  # written into every trimmed directory
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
# Files copied unchanged; the tokenizer's own files are rewritten.
_COPIED = ("special_tokens_map.json", "generation_config.json")


@dataclass
class TrimReport:
    """What a trim kept and saved."""

    pieces_before: int
    pieces_kept: int
    coverage: float  # share of corpus tokens (old tokenizer) whose piece is kept
    texts: int
    texts_unchanged: int  # corpus texts whose pieces are identical under the new tokenizer
    bytes_before: int
    bytes_after: int
    parameters_before: int
    parameters_after: int

    def lines(self) -> list[str]:
        """The report as printed by `swcm trim-vocab`."""
        saved = 1 - self.bytes_after / self.bytes_before
        return [
            f"pieces kept: {self.pieces_kept:,} of {self.pieces_before:,}",
            f"corpus covered: {self.coverage:.2%} of tokens; {self.texts_unchanged:,} of {self.texts:,} texts tokenize as before",
            f"size: {self.bytes_before / 2**20:,.1f} MiB -> {self.bytes_after / 2**20:,.1f} MiB (saved {saved:.1%}); "
            f"parameters {self.parameters_before:,} -> {self.parameters_after:,}",
        ]


def _tokenizer_json(encoder: Path) -> dict:
    path = encoder / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"{encoder}: no {TOKENIZER_FILE}; trim-vocab needs a fast tokenizer (Unigram or WordPiece)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None
    kind = data.get("model", {}).get("type")
    if kind not in ("Unigram", "WordPiece"):
        raise ValueError(f"{path}: a {kind} tokenizer; trim-vocab supports Unigram (SentencePiece) and WordPiece tokenizers")
    return data


def _model_vocab(data: dict) -> list[str]:
    """The model's pieces in id order."""
    if data["model"]["type"] == "Unigram":
        return [piece for piece, _ in data["model"]["vocab"]]
    vocab = data["model"]["vocab"]
    return sorted(vocab, key=vocab.__getitem__)


def kept_ids(data: dict, counts: Counter, characters: set[str], min_count: int = 1, keep: int | None = None) -> list[int]:
    """Sorted ids to keep from tokenizer.json `data`: added/special tokens, byte pieces, the
    single-character pieces of `characters` (the corpus's, normalised), and the used pieces
    (`counts`: id -> uses) with at least `min_count` uses (the `keep` most used ones when given)."""
    pieces = _model_vocab(data)
    index = {piece: i for i, piece in enumerate(pieces)}
    always = {token["id"] for token in data["added_tokens"]}
    always.update(i for i, piece in enumerate(pieces) if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"))
    prefix = data["model"].get("continuing_subword_prefix", "##") if data["model"]["type"] == "WordPiece" else None
    for c in characters:
        for piece in (c, f"{prefix}{c}" if prefix else None):
            if piece in index:
                always.add(index[piece])
    used = [(i, n) for i, n in counts.most_common() if n >= min_count and i not in always]
    if keep is not None:
        used = used[: max(keep, 0)]
    return sorted(always | {i for i, _ in used})


def trimmed_tokenizer_json(data: dict, keep: Sequence[int]) -> dict:
    """A copy of tokenizer.json `data` with only the ids `keep` (sorted), renumbered in order."""
    new_id = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(data))
    model = out["model"]
    if model["type"] == "Unigram":
        n = len(model["vocab"])
        model["vocab"] = [model["vocab"][i] for i in keep if i < n]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        model["vocab"] = {piece: new_id[i] for piece, i in model["vocab"].items() if i in new_id}
    for token in out["added_tokens"]:
        token["id"] = new_id[token["id"]]
    if out.get("post_processor"):
        out["post_processor"] = _renumber_processor(out["post_processor"], new_id)
    return out


def _renumber_processor(processor: dict, new_id: dict[int, int]) -> dict:
    """Special-token ids inside a post-processor (Template, Roberta, Bert, Sequence)."""
    kind = processor.get("type")
    if kind == "Sequence":
        processor["processors"] = [_renumber_processor(p, new_id) for p in processor["processors"]]
    elif kind == "TemplateProcessing":
        for token in processor["special_tokens"].values():
            token["ids"] = [new_id[i] for i in token["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
    return processor


def trimmed_sentencepiece(model_bytes: bytes, kept_pieces: set[str]) -> bytes:
    """A SentencePiece model with its control, unknown and byte pieces and the normal pieces in
    `kept_pieces`, in their old order (the slow tokenizer's file beside a trimmed tokenizer.json)."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    normal = sp_pb2.ModelProto.SentencePiece.NORMAL
    pieces = [p for p in proto.pieces if p.type != normal or p.piece in kept_pieces]
    del proto.pieces[:]
    proto.pieces.extend(pieces)
    proto.trainer_spec.vocab_size = len(pieces)
    return proto.SerializeToString()


def _trimmed_weights(state: dict[str, torch.Tensor], rows: int, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Slice every vocabulary-sized tensor (word embeddings, MLM decoder and bias) to the kept rows."""
    out = {}
    for name, tensor in state.items():
        by_vocab = tensor.ndim >= 1 and tensor.shape[0] == rows and "position" not in name and "token_type" not in name
        out[name] = tensor[keep].contiguous() if by_vocab else tensor
    return out


def trim_vocabulary(
    encoder: str | os.PathLike,
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    min_count: int = 1,
    keep: int | None = None,
) -> TrimReport:
    """Write to `out_dir` a copy of the encoder directory `encoder` whose vocabulary holds only
    what `texts` needs (see the module docstring). Refuses an existing non-empty `out_dir` that
    swcm did not write (see `swcm.io.atomic_directory`). Returns the report (also saved as `out_dir`/trim-vocab.json)."""
    src, out = Path(encoder), Path(out_dir)
    if min_count < 1:
        raise ValueError(f"--min-count must be at least 1, got {min_count}")
    if keep is not None and keep < 0:
        raise ValueError(f"--keep must be >= 0, got {keep}")
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: the output directory must differ from the encoder directory")
    if not (src / "config.json").is_file():
        raise ValueError(f"{src}: no config.json; --encoder must be a Hugging Face encoder directory")
    config = AutoConfig.from_pretrained(src)
    check_encoder_config(config, str(src))
    if not (src / WEIGHTS_FILE).is_file():
        raise ValueError(f"{src}: no {WEIGHTS_FILE}; trim-vocab reads single-file safetensors checkpoints")
    data = _tokenizer_json(src)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("the corpus has no text")

    old = AutoTokenizer.from_pretrained(src)
    old_ids = old(list(texts), add_special_tokens=False)["input_ids"]
    counts = Counter(i for ids in old_ids for i in ids)
    normalizer = old.backend_tokenizer.normalizer
    characters = {c for text in texts for c in (normalizer.normalize_str(text) if normalizer else text)}
    keep_ids = kept_ids(data, counts, characters, min_count, keep)
    kept_set = set(keep_ids)
    total = sum(counts.values())
    coverage = sum(n for i, n in counts.items() if i in kept_set) / total if total else 1.0

    state = load_file(src / WEIGHTS_FILE)
    rows = config.vocab_size
    new_data = trimmed_tokenizer_json(data, keep_ids)
    with atomic_directory(out) as tmp:
        (tmp / TOKENIZER_FILE).write_text(json.dumps(new_data, ensure_ascii=False, indent=2), encoding="utf-8")
        _write_tokenizer_files(src, tmp, data, new_data, keep_ids)
        new_state = _trimmed_weights(state, rows, torch.tensor(keep_ids))
        save_file(new_state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        _write_config(config, tmp, keep_ids)
        for name in _COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        new = AutoTokenizer.from_pretrained(tmp)
        new_ids = new(list(texts), add_special_tokens=False)["input_ids"]
        old_tokens = [old.convert_ids_to_tokens(ids) for ids in old_ids]
        unchanged = sum(new.convert_ids_to_tokens(ids) == tokens for ids, tokens in zip(new_ids, old_tokens))
        report = TrimReport(
            pieces_before=len(old), pieces_kept=len(new), coverage=coverage, texts=len(texts), texts_unchanged=unchanged,
            bytes_before=(src / WEIGHTS_FILE).stat().st_size, bytes_after=(tmp / WEIGHTS_FILE).stat().st_size,
            parameters_before=sum(t.numel() for t in state.values()), parameters_after=sum(t.numel() for t in new_state.values()),
        )
        (tmp / REPORT_FILE).write_text(json.dumps({"source": str(src.resolve()), "min_count": min_count, "keep": keep,
                                                    **report.__dict__}, indent=2) + "\n", encoding="utf-8")
    return report


def _write_tokenizer_files(src: Path, out: Path, data: dict, new_data: dict, keep_ids: Sequence[int]) -> None:
    """tokenizer_config.json with renumbered added tokens, and the slow tokenizer's vocabulary file."""
    new_id = {old: new for new, old in enumerate(keep_ids)}
    config_path = src / "tokenizer_config.json"
    if config_path.is_file():
        tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = tokenizer_config.get("added_tokens_decoder", {})
        tokenizer_config["added_tokens_decoder"] = {str(new_id[int(i)]): token for i, token in decoder.items()}
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=2), encoding="utf-8")
    if (src / SENTENCEPIECE_FILE).is_file():
        kept_pieces = set(_model_vocab(new_data))
        (out / SENTENCEPIECE_FILE).write_bytes(trimmed_sentencepiece((src / SENTENCEPIECE_FILE).read_bytes(), kept_pieces))
    if (src / "vocab.txt").is_file() and data["model"]["type"] == "WordPiece":
        (out / "vocab.txt").write_text("".join(p + "\n" for p in _model_vocab(new_data)), encoding="utf-8")


def _write_config(config, out: Path, keep_ids: Sequence[int]) -> None:
    """The encoder config with the new vocabulary size and renumbered special token ids."""
    new_id = {old: new for new, old in enumerate(keep_ids)}
    config.vocab_size = len(keep_ids)
    for name, value in config.to_dict().items():
        if name.endswith("_token_id") and isinstance(value, int):
            setattr(config, name, new_id.get(value))
    config.save_pretrained(out)
