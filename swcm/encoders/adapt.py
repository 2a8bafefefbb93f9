"""Encoder adaptation: vocabulary extension and continued masked-LM training on new languages.

What CINO's authors did to XLM-R by hand, for any language: `extend_vocabulary` trains a
SentencePiece model on the new text, appends the pieces the encoder's tokenizer lacks to its
SentencePiece unigram model, and gives each new embedding row the mean of the encoder's
embeddings of the piece's decomposition under the old tokenizer; `continue_mlm` trains the
masked LM further on the text through the shared training loop (balanced language sampling,
checkpoints, log.jsonl). `adapt_encoder` runs both and writes an encoder directory that
`swcm build` takes, MLM head included (so `--lm-head mlm` works).

Supported tokenizers: XLM-R style (a SentencePiece unigram model in `sentencepiece.bpe.model`,
ids shifted by one behind <s> <pad> </s> <unk>, <mask> last). The SentencePiece pieces keep
their ids and embeddings; <mask> and any added token stay last, so their ids move up by the
number of new pieces (their embeddings move with them).
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import regex
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from ..configuration import check_encoder_config
from ..metrics import char_script
from ..data.readers import parse_source_spec, read_records
from ..data.sampling import language_sampling_probs
from ..io import save_model_dir, save_tokenizer
from ..training import TrainingConfig, TrainingResult, checkpoint_dirs, latest_checkpoint, train
from .tiny_encoder import SENTENCEPIECE_FILE, masked_lm_loss, mlm_windows, write_xlmr_tokenizer

REPORT_FILE = "adapt.json"
NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL
UNIGRAM = sp_pb2.TrainerSpec.UNIGRAM
# Normalisation rules SentencePiece's trainer knows by name; a custom rule trains as identity.
NAMED_NORMALIZATIONS = ("identity", "nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf")


# --- reading -------------------------------------------------------------------------------


def read_monolingual(specs: Iterable[str]) -> dict[str, list[str]]:
    """Texts per language from `--mono` specs ("bo=bo.txt", or JSONL {text, lang})."""
    specs = list(specs)
    texts: dict[str, list[str]] = defaultdict(list)
    for spec in specs:
        for record in read_records(parse_source_spec(spec, "mono")):
            texts[record["lang"]].append(record["text"])
    if not texts:
        raise ValueError(f"no monolingual text in {', '.join(specs)}: give --mono LANG=PATH with text")
    return dict(texts)


def tokenizer_statistics(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> dict:
    """How well `tokenizer` covers `texts`: {"unk_rate", "chars_per_token", "round_trip"}.

    unk_rate: share of tokens that are <unk>; chars_per_token: characters per token;
    round_trip: share of texts that decode back to themselves exactly (whitespace runs as one
    space); round_trip_normalised: the same, compared with the text as the tokenizer's own
    normaliser writes it (XLM-R's NFKC turns a fullwidth "，" into ","): what the tokenizer
    loses beyond the normalisation it was built with.
    """
    texts = list(texts)
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    tokens = sum(map(len, ids))
    unknown = sum(i == tokenizer.unk_token_id for seq in ids for i in seq)
    decoded = [tokenizer.decode(seq, clean_up_tokenization_spaces=False) for seq in ids]
    normalise = _normaliser(tokenizer)
    return {
        "unk_rate": unknown / max(tokens, 1),
        "chars_per_token": sum(map(len, texts)) / max(tokens, 1),
        "round_trip": sum(d == " ".join(t.split()) for d, t in zip(decoded, texts)) / max(len(texts), 1),
        "round_trip_normalised": sum(" ".join(d.split()) == " ".join(normalise(t).split())
                                     for d, t in zip(decoded, texts)) / max(len(texts), 1),
    }


def _normaliser(tokenizer: PreTrainedTokenizerBase):
    """The tokenizer's own text normalisation (a fast tokenizer's normaliser; else NFKC, what
    SentencePiece's default nmt_nfkc applies), without its space marker."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = backend.normalizer if backend is not None else None
    if normalizer is None:
        return lambda text: unicodedata.normalize("NFKC", text)
    return lambda text: normalizer.normalize_str(text).replace("\u2581", " ")


# --- vocabulary extension --------------------------------------------------------------------


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
def auxiliary_embeddings(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], dim: int = 64, window: int = 4,
                         max_tokens: int = 12_000) -> tuple[dict[int, int], torch.Tensor]:
    """Static token embeddings learnt from `texts` under `tokenizer`, as FOCUS's auxiliary fastText
    model is, here by a truncated SVD of the positive PMI of co-occurrences within `window` tokens.

    Returns ({token id: row}, unit-length rows) for the `max_tokens` most frequent tokens.
    """
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    counts = np.bincount(np.fromiter((i for seq in ids for i in seq), dtype=np.int64), minlength=len(tokenizer))
    kept = np.argsort(-counts)[:max_tokens]
    kept = kept[counts[kept] > 1]
    row = np.full(len(counts), -1, dtype=np.int64)
    row[kept] = np.arange(len(kept))
    pairs = []
    for seq in ids:
        r = row[np.asarray(seq, dtype=np.int64)] if seq else np.empty(0, dtype=np.int64)
        for offset in range(1, window + 1):
            a, b = r[:-offset], r[offset:]
            both = (a >= 0) & (b >= 0)
            pairs.append(np.stack([a[both], b[both]]))
    pairs = torch.from_numpy(np.concatenate(pairs, axis=1))
    pairs = torch.cat([pairs, pairs.flip(0)], dim=1)  # symmetric window
    n = len(kept)
    cooc = torch.sparse_coo_tensor(pairs, torch.ones(pairs.shape[1]), (n, n)).coalesce()
    (i, j), c = cooc.indices(), cooc.values()
    marginal = torch.sparse.sum(cooc, dim=1).to_dense()
    pmi = torch.log(c * c.sum() / (marginal[i] * marginal[j]))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(torch.stack([i[keep], j[keep]]), pmi[keep], (n, n)).coalesce()
    with torch.random.fork_rng():  # svd_lowrank's random projection: the same embeddings every run
        torch.manual_seed(0)
        u, singular, _ = torch.svd_lowrank(ppmi, q=min(dim, n - 1), niter=4)
    vectors = torch.nn.functional.normalize(u * singular.sqrt(), dim=1)
    return {int(token): k for k, token in enumerate(kept)}, vectors


def sparsemax(scores: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dimension (Martins & Astudillo, 2016): the Euclidean projection
    onto the simplex, which gives most entries exactly zero weight."""
    z, _ = scores.sort(dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cumulative = z.cumsum(-1)
    support = (1 + k * z > cumulative).sum(dim=-1, keepdim=True)
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return (scores - tau).clamp(min=0)


@torch.no_grad()
def focus_rows(old: torch.Tensor, rows: torch.Tensor, new_vocab: Mapping[str, int], old_vocab: Mapping[str, int],
               new_tokenizer: PreTrainedTokenizerBase, auxiliary: tuple[dict[int, int], torch.Tensor]) -> int:
    """FOCUS (Dobler & de Melo, 2023) for the new pieces that occur in the text behind
    `auxiliary` (`auxiliary_embeddings`): each becomes a sparsemax-weighted mean of the old rows
    of the pieces both vocabularies share, weighted by the similarity of their auxiliary
    embeddings. Writes into `rows` (indexed by new id); returns how many rows it set."""
    index, vectors = auxiliary
    special = set(new_tokenizer.all_special_tokens)
    shared = [(new_id, old_vocab[t]) for t, new_id in new_vocab.items()
              if t in old_vocab and t not in special and new_id in index]
    new = [(t, new_id) for t, new_id in new_vocab.items() if t not in old_vocab and new_id in index]
    if not shared or not new:
        return 0
    shared_vectors = vectors[[index[new_id] for new_id, _ in shared]]
    shared_rows = old[[old_id for _, old_id in shared]]
    for start in range(0, len(new), 1024):
        chunk = new[start : start + 1024]
        weights = sparsemax(vectors[[index[new_id] for _, new_id in chunk]] @ shared_vectors.T)
        rows[[new_id for _, new_id in chunk]] = (weights @ shared_rows.float()).to(rows.dtype)
    return len(new)


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


# --- masked-LM training --------------------------------------------------------------------------


def load_masked_lm(encoder: str | os.PathLike) -> tuple[PreTrainedModel, bool]:
    """The encoder as a masked LM, and whether its MLM head was added (randomly initialised,
    its decoder tied to the input embeddings as in BERT and XLM-R) because the checkpoint had none."""
    where = str(encoder)
    check_encoder_config(AutoConfig.from_pretrained(encoder), where)
    # fp32 whatever it is stored in: these are the weights adaptation trains
    model, info = AutoModelForMaskedLM.from_pretrained(encoder, dtype=torch.float32, output_loading_info=True)
    head_added = any(k.startswith(("lm_head", "cls.")) for k in info["missing_keys"])
    return model, head_added


def mlm_examples(
    tokenizer: PreTrainedTokenizerBase,
    texts: Mapping[str, Sequence[str]],
    count: int,
    max_length: int,
    alpha: float = 0.3,
    seed: int = 0,
) -> tuple[list[dict], dict[str, float]]:
    """`count` masked-LM examples {"input_ids"}, each a window of one language's packed text
    (`mlm_windows`), languages drawn with p ∝ q^alpha over their window counts.
    Returns (examples, sampling probabilities)."""
    windows = {lang: mlm_windows(tokenizer, list(lang_texts), max_length) for lang, lang_texts in texts.items()}
    probs = language_sampling_probs({lang: len(w) for lang, w in windows.items()}, alpha)
    langs = list(probs)
    rng = np.random.default_rng(seed)
    examples = []
    for lang_index in rng.choice(len(langs), size=count, p=list(probs.values())):
        lang_windows = windows[langs[lang_index]]
        examples.append({"input_ids": lang_windows[rng.integers(len(lang_windows))]})
    return examples, probs


@torch.no_grad()
def mlm_validation_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                        max_length: int = 128, mlm_probability: float = 0.15, batch_size: int = 16) -> float:
    """The masked-LM loss per masked token on held-out `texts`, packed into windows
    (`mlm_windows`) and masked the same way at every call (a fixed seed), so that losses of one
    tokenizer compare across models and steps. A loss under another tokenizer predicts other
    tokens and does not compare."""
    windows = mlm_windows(tokenizer, list(texts), max_length)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.random.fork_rng():  # the masks from a fixed seed (transformers 4's collator masks with torch's RNG)
        torch.manual_seed(0)
        batches = [collator([{"input_ids": w} for w in windows[start : start + batch_size]])
                   for start in range(0, len(windows), batch_size)]
    for batch in batches:
        masked = int((batch["labels"] != -100).sum())
        if masked:
            total += float(masked_lm_loss(model, batch)) * masked
            count += masked
    model.train(was_training)
    return total / max(count, 1)


TRAINED_PARTS = ("all", "new-rows")


def train_only_new_rows(model: PreTrainedModel, new_ids: Sequence[int], head_added: bool) -> None:
    """Freeze `model` but for the input-embedding rows `new_ids` (a gradient hook zeroes the
    others' gradient) and, where the MLM head was just added, that head: the encoder's layers and
    its old rows stay as they were, so the languages it already read keep their representations."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(True)
    keep = torch.zeros(embeddings.shape[0], 1, dtype=embeddings.dtype)
    keep[list(new_ids)] = 1
    embeddings.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))
    if head_added:
        output = model.get_output_embeddings()
        head = next(module for module in model.children() if any(m is output for m in module.modules()))
        for parameter in head.parameters():
            parameter.requires_grad_(True)


def continue_mlm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Mapping[str, Sequence[str]],
    config: TrainingConfig,
    max_length: int = 128,
    alpha: float = 0.3,
    mlm_probability: float = 0.15,
    valid: Mapping[str, Sequence[str]] | None = None,
) -> tuple[TrainingResult, dict[str, float]]:
    """Continue masked-LM training of `model` on `texts` ({lang: texts}) with `swcm.training.train`.

    With `valid` ({lang: held-out texts}), the masked-LM loss on each language's held-out text
    (`mlm_validation_loss`) is computed every `config.eval_every` steps and at the end, logged as
    `loss_<lang>` beside their mean over languages, `loss` (which selects OUT/best). Writes what `train` writes to
    `config.out_dir` (log.jsonl, checkpoints, final/).
    Returns (the training result, the language sampling probabilities)."""
    count = config.max_steps * config.batch_size * config.grad_accum
    examples, probs = mlm_examples(tokenizer, texts, count, max_length, alpha, config.seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    evaluate = None
    if valid:
        def evaluate(model) -> dict:
            losses = {f"loss_{lang}": mlm_validation_loss(model, tokenizer, texts, max_length)
                      for lang, texts in valid.items()}
            return {"loss": sum(losses.values()) / len(losses), **losses}
    return train(model, tokenizer, examples, config, collator, evaluate, loss_fn=masked_lm_loss), probs


# --- the whole step ------------------------------------------------------------------------------


def adapt_encoder(
    encoder: str | os.PathLike,
    mono: Sequence[str],
    config: TrainingConfig | None,
    extend_vocab: int | None = None,
    max_length: int = 128,
    alpha: float = 0.3,
    out_dir: str | os.PathLike | None = None,
    init: str = "mean",
    valid: Sequence[str] = (),
    train_parts: str = "all",
) -> dict:
    """Adapt `encoder` to the monolingual text of `mono` (`--mono` specs).

    With `extend_vocab`, up to that many pieces are added first (the grown model and tokenizer
    go to OUT/extended, which a resumed run reuses). With a training `config`, masked-LM
    training continues into config.out_dir; the adapted encoder is OUT/final. Without one,
    OUT/final is the extended encoder untrained (`out_dir` names OUT). `init` initialises the
    new rows (`extend_vocabulary`). `valid` (`--mono`-style specs of held-out text) is scored
    before and after: the tokenizer statistics, and the masked-LM loss per language of the
    extended model before training and of the adapted one (`mlm_validation_loss`), beside the
    original encoder's under its own tokenizer (another token sequence: not comparable).
    `train_parts`: `all` (CINO: the whole masked LM) or `new-rows` (only the new pieces' rows,
    and the MLM head where the checkpoint had none: `train_only_new_rows`).
    Writes OUT/adapt.json, the returned report: per language <unk> rate, characters per token
    and round-trip shares before and after, pieces added, whether an MLM head was added, the
    MLM losses.
    """
    out = Path(config.out_dir if config is not None else out_dir)
    if config is not None and not config.resume and checkpoint_dirs(out):
        # Checked before anything is written: OUT/extended must stay the one those checkpoints grew from.
        raise ValueError(f"{out} already holds checkpoints; resume them or choose another output directory")
    texts = read_monolingual(mono)
    held_out = read_monolingual(valid) if valid else {}
    scored = held_out or texts  # the statistics: on held-out text where there is some
    model, head_added = load_masked_lm(encoder)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    report: dict = {"encoder": str(encoder), "mlm_head_added": head_added, "init": init,
                    "mlm_head_tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
                    "scored_on": "valid" if held_out else "train",
                    "before": {lang: tokenizer_statistics(tokenizer, t) for lang, t in scored.items()}}

    def valid_losses() -> dict[str, float]:
        return {lang: mlm_validation_loss(model, tokenizer, t, max_length) for lang, t in held_out.items()}

    if held_out:
        report["mlm_valid_loss"] = {"original_tokenizer": valid_losses()}
    if extend_vocab:
        extended = out / "extended"
        report["vocab_before"] = len(tokenizer)
        resumable = config is not None and config.resume and latest_checkpoint(out) is not None
        if resumable and (extended / "config.json").is_file():
            model, tokenizer = AutoModelForMaskedLM.from_pretrained(extended), AutoTokenizer.from_pretrained(extended)
        else:
            all_texts = [t for lang_texts in texts.values() for t in lang_texts]
            with tempfile.TemporaryDirectory() as tmp:
                tokenizer, _ = extend_vocabulary(model, tokenizer, all_texts, extend_vocab, tmp, str(encoder), init)
                save_model_dir(model, tokenizer, extended)  # while its SentencePiece file exists
            tokenizer = AutoTokenizer.from_pretrained(extended)
        report["pieces_added"] = len(tokenizer) - report["vocab_before"]
        report["vocab_after"] = len(tokenizer)
        report["after"] = {lang: tokenizer_statistics(tokenizer, t) for lang, t in scored.items()}
        if held_out:
            report["mlm_valid_loss"]["extended_untrained"] = valid_losses()
    if train_parts not in TRAINED_PARTS:
        raise ValueError(f"unknown part to train {train_parts!r} (known: {', '.join(TRAINED_PARTS)})")
    report["trained"] = train_parts
    if config is not None:
        if train_parts == "new-rows":
            old_vocab = AutoTokenizer.from_pretrained(encoder).get_vocab()
            train_only_new_rows(model, [i for t, i in tokenizer.get_vocab().items() if t not in old_vocab], head_added)
        result, probs = continue_mlm(model, tokenizer, texts, config, max_length, alpha, valid=held_out)
        if held_out:
            report["mlm_valid_loss"]["adapted"] = valid_losses()
        report["sampling"] = probs
        training = [record["loss"] for record in result.history if "loss" in record]  # not the validation records
        if training:
            report["mlm_loss"] = {"first": training[0], "last": training[-1]}
        report["steps"] = result.step
    else:
        save_model_dir(model, tokenizer, out / "final")
    report["adapted_encoder"] = str(out / "final")
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def print_report(report: dict, file=None) -> None:
    """The adaptation report as a few readable lines (on `file`, default stdout)."""
    file = file or sys.stdout

    def coverage(stats: dict) -> str:
        return (f"<unk> {stats['unk_rate']:.1%}, {stats['chars_per_token']:.2f} chars/token, round trip "
                f"{stats['round_trip_normalised']:.0%} modulo the tokenizer's normalisation ({stats['round_trip']:.0%} exact)")

    print(f"on the {report['scored_on']} text:", file=file)
    for lang, before in report["before"].items():
        after = report.get("after", {}).get(lang)
        print(f"{lang}: {coverage(before)}" + (f" -> {coverage(after)}" if after else ""), file=file)
    if "pieces_added" in report:
        print(f"vocabulary {report['vocab_before']:,} -> {report['vocab_after']:,} ({report['pieces_added']:,} pieces added)", file=file)
    if report["mlm_head_added"]:
        print("the checkpoint had no MLM head: a new one was added" + (", tied to the input embeddings" if report["mlm_head_tied"] else ""), file=file)
    if "mlm_loss" in report:
        print(f"MLM loss {report['mlm_loss']['first']:.3f} -> {report['mlm_loss']['last']:.3f} in {report['steps']} steps", file=file)
    for lang in report.get("mlm_valid_loss", {}).get("original_tokenizer", {}):
        losses = report["mlm_valid_loss"]
        stages = [(name, losses[key][lang]) for key, name in (("extended_untrained", "extended, untrained"),
                                                              ("adapted", "adapted")) if key in losses]
        print(f"{lang} held-out MLM loss: " + ", ".join(f"{name} {value:.3f}" for name, value in stages)
              + f" (the original encoder: {losses['original_tokenizer'][lang]:.3f} on its own tokens, not comparable)", file=file)
    print(f"adapted encoder: {report['adapted_encoder']} (swcm build --encoder {report['adapted_encoder']} --lm-head mlm)", file=file)
