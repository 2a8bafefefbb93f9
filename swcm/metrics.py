"""Metrics that work for any script: ROUGE-L, chrF++, BLEU, spBLEU and script rate.

chrF++ and BLEU are sacrebleu's standard corpus scores on the raw text, so they sit beside
published FLORES/NLLB figures: chrF++ is `CHRF(word_order=2)`; BLEU tokenizes with sacrebleu's
choice for the target, "zh" for Chinese (Han script) and its default "13a" otherwise. Each
row records sacrebleu's signature of both. spBLEU is BLEU on FLORES-200 SentencePiece pieces.

ROUGE-L has no standard for these scripts (`rouge-score`'s tokenizer keeps only [a-z0-9]): here
it is computed by `rouge-score` on tokens chosen by the Unicode script of the text itself
(`swcm.script_tokens`: characters for Han and other scripts without word spacing, Tibetan
syllables, words elsewhere; punctuation dropped).

The same tokens give the script-aware variants `chrf_script` and `bleu_script`: chrF++ and
BLEU with words that mean something in unspaced scripts (Tibetan syllables, characters),
punctuation left out. They are not comparable with published chrF++/BLEU and carry their own
names.

All scores are on 0-100.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from .script_tokens import (NO_SCRIPT, UNSPACED_SCRIPTS, MetricTokenizer, dominant_script, letter_scripts,
                            script_for_lang, spaced_words, target_script)


# --- metrics -----------------------------------------------------------------------------


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("nothing to score: no segments")


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ROUGE-L: the mean over segments of F, precision and recall, on 0-100.

    Returns {"f": ..., "p": ..., "r": ...}. A segment whose prediction or reference has no
    tokens scores 0, as in `rouge-score`.
    """
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(predictions, references)
    scorer = RougeScorer(["rougeL"], tokenizer=MetricTokenizer())
    totals = {"f": 0.0, "p": 0.0, "r": 0.0}
    for prediction, reference in zip(predictions, references):
        s = scorer.score(reference, prediction)["rougeL"]
        totals["f"] += s.fmeasure
        totals["p"] += s.precision
        totals["r"] += s.recall
    return {k: 100 * v / len(predictions) for k, v in totals.items()}


def bleu_tokenize(script: str) -> str:
    """The sacrebleu tokenizer of the standard BLEU for text in `script`: "zh" for Han (what
    sacrebleu picks for Chinese targets), else its default "13a". (For Japanese and Korean
    sacrebleu picks "ja-mecab" / "ko-mecab", which need MeCab; swcm does not install it, so
    compare spBLEU there.)"""
    return "zh" if script == "Han" else "13a"


def script_bleu_tokenize(script: str) -> str:
    """The sacrebleu tokenizer of the script-aware BLEU (`bleu_script`) for a script.

    Han: "zh" on the raw text, as the standard BLEU. Other scripts without word spacing
    (Tibetan, kana, Thai, ...): "none", on text pre-split by `tokenize_for_metrics`. Latin or no
    letters: "13a". Every other script: "intl", which also splits off non-ASCII punctuation
    such as the Arabic comma ، that "13a" would glue to words.
    """
    if script == "Han":
        return "zh"
    if script in UNSPACED_SCRIPTS:
        return "none"
    return "13a" if script in ("Latin", NO_SCRIPT) else "intl"


def spbleu_model_path() -> str:
    """Where sacrebleu keeps the FLORES-200 SentencePiece model spBLEU tokenises with
    ($SACREBLEU/models, ~/.sacrebleu/models by default)."""
    from sacrebleu.tokenizers import tokenizer_spm

    return os.path.join(tokenizer_spm.SACREBLEU_DIR, "models", os.path.basename(tokenizer_spm.SPM_MODELS["flores200"]["url"]))


def spbleu(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str] | None:
    """Corpus spBLEU: sacrebleu's BLEU on FLORES-200 SentencePiece pieces (tokenize="flores200"),
    the BLEU that low-resource MT papers report, one tokenisation for every language.
    Returns (score, sacrebleu's signature).

    None when the model is not in sacrebleu's cache (`spbleu_model_path()`): sacrebleu would
    download it, and nothing here downloads at run time. Fetch it once where you are online:
    `python -c "from sacrebleu.tokenizers.tokenizer_spm import Flores200Tokenizer as T; T()"`.
    """
    _check_pairs(predictions, references)
    if not os.path.isfile(spbleu_model_path()):
        return None
    return _bleu(predictions, references, "flores200")


def _bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str) -> tuple[float, str]:
    """sacrebleu's corpus BLEU and its signature."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize)
    # exp(log p) puts a perfect BLEU a rounding error above 100.
    score = min(100.0, metric.corpus_score(list(predictions), [list(references)]).score)
    return score, metric.get_signature().format()


def chrf_plus_plus(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacrebleu's corpus chrF++ (character 6-grams and word bigrams) and its signature."""
    from sacrebleu.metrics import CHRF

    metric = CHRF(word_order=2)
    return metric.corpus_score(list(predictions), [list(references)]).score, metric.get_signature().format()


def chrf_bleu(predictions: Sequence[str], references: Sequence[str], script: str) -> dict:
    """Corpus chrF++, BLEU and spBLEU (sacrebleu) for text in `script`, with their signatures:
    {"chrf", "bleu", "spbleu" (None, see `spbleu`), "chrf_script", "bleu_script",
    "signatures": {"chrf", "bleu", "spbleu" (where scored), "bleu_script"}}.

    "chrf" and "bleu" are the standard scores on the raw text (see the module docstring);
    "chrf_script" and "bleu_script" the script-aware ones, on the metric tokens."""
    _check_pairs(predictions, references)
    chrf, chrf_signature = chrf_plus_plus(predictions, references)
    bleu, bleu_signature = _bleu(predictions, references, bleu_tokenize(script))
    tokenize = script_bleu_tokenize(script)
    hyps, refs = spaced_words(predictions, script), spaced_words(references, script)
    bleu_script, script_signature = _bleu(*((predictions, references) if tokenize == "zh" else (hyps, refs)), tokenize)
    sp = spbleu(predictions, references)
    signatures = {"chrf": chrf_signature, "bleu": bleu_signature, "bleu_script": script_signature}
    if sp is not None:
        signatures["spbleu"] = sp[1]
    return {
        "chrf": chrf,
        "bleu": bleu,
        "spbleu": None if sp is None else sp[0],
        "chrf_script": chrf_plus_plus(hyps, refs)[0],
        "bleu_script": bleu_script,
        "signatures": signatures,
    }


def script_rate(predictions: Sequence[str], references: Sequence[str], lang: str | None = None) -> float:
    """How much of the output is in the target script, on 0-100 (mean over segments).

    A segment's rate is the share of the prediction's letters written in the target
    script: the script `lang` implies, else the reference's dominant script. A prediction
    without letters scores 100 when its reference has none either, else 0 (an empty answer
    is not an answer in the target language); with no `lang` and a reference without
    letters, any letters are off-script.
    """
    _check_pairs(predictions, references)
    fixed = script_for_lang(lang)
    total = 0.0
    for prediction, reference in zip(predictions, references):
        letters = letter_scripts(prediction)
        n = sum(letters.values())
        if n == 0:
            total += 0.0 if letter_scripts(reference) else 1.0
        else:
            total += letters[fixed or dominant_script(reference)] / n
    return 100 * total / len(predictions)


def score(predictions: Sequence[str], references: Sequence[str], lang: str | None = None) -> dict:
    """Score predictions against references (one reference per segment).

    `lang` (optional) fixes the target script where the code implies one (see
    `script_for_lang`); otherwise it comes from the references. Returns
    {"script", "rougeL": {"f", "p", "r"}, "chrf", "bleu", "spbleu", "chrf_script", "bleu_script",
    "signatures", "script_rate", "n"}, "script" the script scored in (`target_script`), scores on 0-100 (spbleu None when its SentencePiece model
    is not at hand, see `spbleu`; the rest as `chrf_bleu`).
    Raises ValueError when the lists differ in length or are empty.
    """
    predictions, references = list(predictions), list(references)
    _check_pairs(predictions, references)
    script = target_script(references, lang)
    return {
        "script": script,
        "rougeL": rouge_l(predictions, references),
        **chrf_bleu(predictions, references, script),
        "script_rate": script_rate(predictions, references, lang),
        "n": len(predictions),
    }


# --- files, languages and tables ---------------------------------------------------------


def read_segments(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, one segment each, without line ends.

    Only "\\n" (and a "\\r" before it) ends a line, so text holding U+2028 or NEL stays one
    segment; a leading byte-order mark is dropped. Raises ValueError "FILE:LINE: not UTF-8"
    on a bad byte.
    """
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    segments = []
    for number, line in enumerate(lines, 1):
        try:
            # utf-8-sig on the first line drops a byte-order mark some editors write.
            segments.append(line.decode("utf-8-sig" if number == 1 else "utf-8").removesuffix("\r"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}:{number}: not UTF-8") from None
    return segments


def flatten_scores(scores: dict) -> dict:
    """`score()`'s result as one flat row: "rougeL" becomes rougeL_f, rougeL_p, rougeL_r in its place."""
    row = {}
    for key, value in scores.items():
        row.update({f"rougeL_{k}": v for k, v in value.items()} if key == "rougeL" else {key: value})
    return row


def evaluate_predictions(
    records: Iterable[dict],
    *,
    reference_field: str,
    lang_field: str,
    prediction_field: str = "prediction",
    source: str | None = None,
) -> list[dict]:
    """Score generated records one language at a time.

    `records` are dicts holding a prediction, a reference and a language code (e.g. the
    `swcm generate` output of a task file). Returns one row per language, in order of first
    appearance: {"lang", "script", "rougeL_f", "rougeL_p", "rougeL_r", "chrf", "bleu", "spbleu",
    "chrf_script", "bleu_script", "signatures", "script_rate", "n"}, where "script" is the script
    the language was scored in and "signatures" sacrebleu's signatures (see `chrf_bleu`). A record
    missing a field raises ValueError naming `source` (a file name) and its line.
    """
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for number, record in enumerate(records, 1):
        for field in (prediction_field, reference_field, lang_field):
            if field not in record:
                raise ValueError(f"{source or 'record'}:{number}: missing field \"{field}\"")
        predictions, references = groups.setdefault(str(record[lang_field]), ([], []))
        predictions.append(record[prediction_field])
        references.append(record[reference_field])
    if not groups:
        raise ValueError(f"{source or 'records'}: nothing to evaluate")
    return [
        {"lang": lang, **flatten_scores(score(preds, refs, lang))}
        for lang, (preds, refs) in groups.items()
    ]


COLUMN_HEADERS = {
    "lang": "language",
    "script": "script",
    "rougeL_f": "ROUGE-L F",
    "rougeL_p": "ROUGE-L P",
    "rougeL_r": "ROUGE-L R",
    "chrf": "chrF++",
    "bleu": "BLEU",
    "spbleu": "spBLEU",
    "chrf_script": "script-aware chrF++",
    "bleu_script": "script-aware BLEU",
    "script_rate": "script rate",
    "n": "n",
}
# The paper's table shape: ROUGE-L F/P/R, then the translation metrics (sacrebleu's, then the
# script-aware variants) and script rate.
METRIC_COLUMNS = tuple(COLUMN_HEADERS)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] = METRIC_COLUMNS) -> str:
    """Render rows as a markdown table with the given columns (keys of the rows).

    Headers come from COLUMN_HEADERS (the key itself otherwise); numbers are right-aligned
    with two decimals; a missing value is shown as "–".
    """
    numeric = [any(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]
    lines = [
        "| " + " | ".join(COLUMN_HEADERS.get(c, c) for c in columns) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
