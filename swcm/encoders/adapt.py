"""Encoder adaptation: vocabulary extension and continued masked-LM training on new languages.

What CINO's authors did to XLM-R by hand, for any language: `extend_vocabulary`
(`swcm.encoders.vocabulary`) trains a SentencePiece model on the new text, appends the pieces
the encoder's tokenizer lacks to its SentencePiece unigram model, and gives each new embedding
row the mean of the encoder's embeddings of the piece's decomposition under the old tokenizer,
or FOCUS's mix of similar shared pieces (`swcm.encoders.focus`); `continue_mlm` trains the
masked LM further on the text through the shared training loop (balanced language sampling,
checkpoints, log.jsonl). `adapt_encoder` runs both and writes an encoder directory that
`swcm build` takes, MLM head included (so `--lm-head mlm` works).

Supported tokenizers: XLM-R style (a SentencePiece unigram model in `sentencepiece.bpe.model`,
ids shifted by one behind <s> <pad> </s> <unk>, <mask> last). The SentencePiece pieces keep
their ids and embeddings; <mask> and any added token stay last, so their ids move up by the
number of new pieces (their embeddings move with them).
"""

from __future__ import annotations

import os
import sys
import tempfile
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..configuration import check_encoder_config
from ..data.readers import parse_source_spec, read_records
from ..data.sampling import language_sampling_probs
from ..distributed import on_main_process
from ..io import save_model_dir, write_json
from ..training import TrainingConfig, TrainingResult, checkpoint_dirs, latest_checkpoint, train
from .tiny_encoder import masked_lm_loss, mlm_head, mlm_windows
from .vocabulary import extend_vocabulary

REPORT_FILE = "adapt.json"


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
        for parameter in mlm_head(model).parameters():
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
    train_parts: str = "new-rows",
    replay: Sequence[str] = (),
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
    `train_parts`: `new-rows` (default: only the new pieces' rows, and the MLM head where the
    checkpoint had none: `train_only_new_rows`) or `all` (CINO: the whole masked LM). `replay`
    (`--mono`-style specs) is text of languages the encoder already reads, trained on beside
    `mono` (languages sampled alike) so that training the whole encoder does not make it forget
    them; no new pieces are learnt from it.
    Writes OUT/adapt.json, the returned report: per language <unk> rate, characters per token
    and round-trip shares before and after, pieces added, whether an MLM head was added, the
    MLM losses.
    """
    out = Path(config.out_dir if config is not None else out_dir)
    if config is not None and not config.resume and checkpoint_dirs(out):
        # Checked before anything is written: OUT/extended must stay the one those checkpoints grew from.
        raise ValueError(f"{out} already holds checkpoints; resume them or choose another output directory")
    texts = read_monolingual(mono)
    replayed = read_monolingual(replay) if replay else {}
    held_out = read_monolingual(valid) if valid else {}
    scored = held_out or texts  # the statistics: on held-out text where there is some
    model, head_added = load_masked_lm(encoder)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    report: dict = {"encoder": str(encoder), "mlm_head_added": head_added, "init": init, "replay": sorted(replayed),
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
            def extend() -> None:
                all_texts = [t for lang_texts in texts.values() for t in lang_texts]
                with tempfile.TemporaryDirectory() as tmp:
                    grown, _ = extend_vocabulary(model, tokenizer, all_texts, extend_vocab, tmp, str(encoder), init)
                    save_model_dir(model, grown, extended)  # while its SentencePiece file exists

            # Under accelerate launch the main process extends and saves; every process then reads it.
            on_main_process(extend)
            model, tokenizer = AutoModelForMaskedLM.from_pretrained(extended), AutoTokenizer.from_pretrained(extended)
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
        trained = {lang: texts.get(lang, []) + replayed.get(lang, []) for lang in {**texts, **replayed}}
        result, probs = continue_mlm(model, tokenizer, trained, config, max_length, alpha, valid=held_out)
        if held_out:
            report["mlm_valid_loss"]["adapted"] = valid_losses()
        report["sampling"] = probs
        training = [record["loss"] for record in result.history if "loss" in record]  # not the validation records
        if training:
            report["mlm_loss"] = {"first": training[0], "last": training[-1]}
        report["steps"] = result.step
    else:
        on_main_process(save_model_dir, model, tokenizer, out / "final")
    report["adapted_encoder"] = str(out / "final")
    on_main_process(write_json, out / REPORT_FILE, report)
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
