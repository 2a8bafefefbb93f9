"""Metrics that work for any script: ROUGE-L, chrF++, BLEU, spBLEU and script rate.

chrF++ and BLEU are sacrebleu's standard corpus scores on the raw text, so they sit beside
published FLORES/NLLB figures: chrF++ is `CHRF(word_order=2)`; BLEU tokenizes with sacrebleu's
choice for the target, "zh" for Chinese (Han script) and its default "13a" otherwise. Each
row records sacrebleu's signature of both. spBLEU is BLEU on FLORES-200 SentencePiece pieces.

ROUGE-L has no standard for these scripts: Google's `rouge-score` tokenizer keeps only
[a-z0-9], so Chinese, Tibetan, Uyghur, Kazakh and Mongolian text all score 0. Here it is
computed by `rouge-score` on a tokenisation chosen by the Unicode script of the text itself,
so a language the tool has never heard of still scores correctly:

- Scripts written without spaces between words are split into characters, one token per
  letter with the combining marks (vowel signs, tone marks) that follow it: Han (character-level ROUGE
  is the field's usual choice for Chinese), Japanese kana, Thai, Lao, Khmer, Myanmar, and Yi,
  whose characters are syllables.
- Everything else is split into runs of letters, combining marks and digits, dropping
  punctuation and symbols as `rouge-score` does. This is "whitespace words" for Arabic-script,
  Cyrillic and Mongolian text (marks and the joiners ZWNJ/ZWJ and the Mongolian vowel
  separator stay inside a word) and Tibetan syllables for Tibetan, whose syllable and
  sentence delimiters, tsheg ་ and shad །, are Unicode punctuation.
- Text is NFKC-normalised and lower-cased, so case, full-width forms and Arabic
  presentation forms do not count as errors. On plain English the tokens are exactly
  `rouge-score`'s own.

The same tokens give the script-aware variants `chrf_script` and `bleu_script`: chrF++ and
BLEU with words that mean something in unspaced scripts (Tibetan syllables, characters),
punctuation left out. They are not comparable with published chrF++/BLEU and carry their own
names.

All scores are on 0-100.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import regex

# Scripts written without spaces between words: one token per character.
CHARACTER_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar", "Yi")
_CHARACTER_CLASS = "".join(rf"\p{{Script={name}}}" for name in CHARACTER_SCRIPTS)
# A character token (a word character of a character script with the combining marks after it,
# so that Thai, Khmer or Myanmar vowel signs and tone marks stay with their consonant; symbols
# of those scripts, such as the CJK radicals ⺀…, are not tokens), or a run
# of word characters (letters, marks, digits, joiners, and the Mongolian vowel separator
# U+180E, which sits inside a word before its final vowel); underscore and other connector
# punctuation split, as they do for rouge-score.
_TOKEN_RE = regex.compile(
    rf"[[{_CHARACTER_CLASS}]&&\w]\p{{M}}*|[[\w\u180E]--[\p{{Pc}}{_CHARACTER_CLASS}]]+", regex.V1
)

# Scripts whose text has no usable word spacing: the script-aware BLEU and chrF++ take their
# words from the metric tokens (Tibetan syllables, characters) joined by spaces.
_UNSPACED_SCRIPTS = frozenset({"Tibetan", *CHARACTER_SCRIPTS})

# ISO 15924 code → Unicode script name (the Script property values of Scripts.txt, Unicode
# 16), Common, Inherited and Unknown left out: the names `regex`'s \p{Script=…} knows.
_SCRIPT_CODES = dict(item.split("=") for item in """
Adlm=Adlam Aghb=Caucasian_Albanian Ahom=Ahom Arab=Arabic Armi=Imperial_Aramaic Armn=Armenian
Avst=Avestan Bali=Balinese Bamu=Bamum Bass=Bassa_Vah Batk=Batak Beng=Bengali Berf=Beria_Erfe
Bhks=Bhaiksuki Bopo=Bopomofo Brah=Brahmi Brai=Braille Bugi=Buginese Buhd=Buhid Cakm=Chakma
Cans=Canadian_Aboriginal Cari=Carian Cham=Cham Cher=Cherokee Chrs=Chorasmian Copt=Coptic
Cpmn=Cypro_Minoan Cprt=Cypriot Cyrl=Cyrillic Deva=Devanagari Diak=Dives_Akuru Dogr=Dogra
Dsrt=Deseret Dupl=Duployan Egyp=Egyptian_Hieroglyphs Elba=Elbasan Elym=Elymaic Ethi=Ethiopic
Gara=Garay Geor=Georgian Glag=Glagolitic Gong=Gunjala_Gondi Gonm=Masaram_Gondi Goth=Gothic
Gran=Grantha Grek=Greek Gujr=Gujarati Gukh=Gurung_Khema Guru=Gurmukhi Hang=Hangul Hani=Han
Hano=Hanunoo Hatr=Hatran Hebr=Hebrew Hira=Hiragana Hluw=Anatolian_Hieroglyphs
Hmng=Pahawh_Hmong Hmnp=Nyiakeng_Puachue_Hmong Hung=Old_Hungarian Ital=Old_Italic
Java=Javanese Jurc=Jurchen Kali=Kayah_Li Kana=Katakana Kawi=Kawi Khar=Kharoshthi Khmr=Khmer
Khoj=Khojki Kits=Khitan_Small_Script Knda=Kannada Krai=Kirat_Rai Kthi=Kaithi Lana=Tai_Tham
Laoo=Lao Latn=Latin Lepc=Lepcha Limb=Limbu Lina=Linear_A Linb=Linear_B Lisu=Lisu Lyci=Lycian
Lydi=Lydian Mahj=Mahajani Maka=Makasar Mand=Mandaic Mani=Manichaean Marc=Marchen
Medf=Medefaidrin Mend=Mende_Kikakui Merc=Meroitic_Cursive Mero=Meroitic_Hieroglyphs
Mlym=Malayalam Modi=Modi Mong=Mongolian Mroo=Mro Mtei=Meetei_Mayek Mult=Multani Mymr=Myanmar
Nagm=Nag_Mundari Nand=Nandinagari Narb=Old_North_Arabian Nbat=Nabataean Newa=Newa Nkoo=Nko
Nshu=Nushu Ogam=Ogham Olck=Ol_Chiki Onao=Ol_Onal Orkh=Old_Turkic Orya=Oriya Osge=Osage
Osma=Osmanya Ougr=Old_Uyghur Palm=Palmyrene Pauc=Pau_Cin_Hau Pcun=Proto_Cuneiform
Perm=Old_Permic Phag=Phags_Pa Phli=Inscriptional_Pahlavi Phlp=Psalter_Pahlavi
Phnx=Phoenician Plrd=Miao Prti=Inscriptional_Parthian Rjng=Rejang Rohg=Hanifi_Rohingya
Runr=Runic Samr=Samaritan Sarb=Old_South_Arabian Saur=Saurashtra Seal=Seal Sgnw=SignWriting
Shaw=Shavian Shrd=Sharada Sidd=Siddham Sidt=Sidetic Sind=Khudawadi Sinh=Sinhala Sogd=Sogdian
Sogo=Old_Sogdian Sora=Sora_Sompeng Soyo=Soyombo Sund=Sundanese Sunu=Sunuwar
Sylo=Syloti_Nagri Syrc=Syriac Tagb=Tagbanwa Takr=Takri Tale=Tai_Le Talu=New_Tai_Lue
Taml=Tamil Tang=Tangut Tavt=Tai_Viet Tayo=Tai_Yo Telu=Telugu Tfng=Tifinagh Tglg=Tagalog
Thaa=Thaana Thai=Thai Tibt=Tibetan Tirh=Tirhuta Tnsa=Tangsa Todr=Todhri Tols=Tolong_Siki
Toto=Toto Tutg=Tulu_Tigalari Ugar=Ugaritic Vaii=Vai Vith=Vithkuqi Wara=Warang_Citi
Wcho=Wancho Xpeo=Old_Persian Xsux=Cuneiform Yezi=Yezidi Yiii=Yi Zanb=Zanabazar_Square
""".split())

# Languages whose script is not in doubt. Kazakh (Cyrillic or Arabic) and Mongolian
# (Cyrillic or traditional) are left to the text; a script subtag ("kk-Arab") decides too.
_LANG_SCRIPTS = {"zh": "Han", "yue": "Han", "bo": "Tibetan", "dz": "Tibetan", "ug": "Arabic"}
# ISO 15924 codes that Scripts.txt does not use but language tags do.
_SCRIPT_SUBTAGS = {"hans": "Han", "hant": "Han"}

NO_SCRIPT = "Common"  # what dominant_script returns for text without letters


# --- scripts -----------------------------------------------------------------------------


# One named group per script: the group a letter matches names its script. Most used first.
_FIRST_SCRIPTS = ("Han", "Latin", "Tibetan", "Arabic", "Cyrillic", "Mongolian")
_SCRIPT_RE = regex.compile("|".join(
    rf"(?P<{name}>\p{{Script={name}}})"
    for name in dict.fromkeys([*_FIRST_SCRIPTS, *_SCRIPT_CODES.values()])
))
_LETTER_RE = regex.compile(r"\p{L}")


@functools.lru_cache(maxsize=1 << 16)
def char_script(ch: str) -> str | None:
    """The Unicode script name of one character ("Tibetan"), None for Common, Inherited or unassigned."""
    match = _SCRIPT_RE.match(ch)
    return match.lastgroup if match else None  # None: Common, Inherited or unassigned


def letter_scripts(text: str) -> Counter:
    """Count the letters of `text` by Unicode script name ("Han", "Tibetan", ...).

    Letters shared by several scripts (Common, Inherited) are not counted.
    """
    counts = Counter(char_script(ch) for ch in _LETTER_RE.findall(text))
    counts.pop(None, None)
    return counts


def dominant_script(text: str) -> str:
    """The Unicode script most of the letters of `text` are written in.

    Returns the Unicode script name: "Han", "Tibetan", "Arabic", "Cyrillic", "Mongolian",
    "Latin", ... or "Common" when `text` has no letters. Ties go to the script met first.
    """
    counts = letter_scripts(text)
    return counts.most_common(1)[0][0] if counts else NO_SCRIPT


def script_for_lang(lang: str | None) -> str | None:
    """The script a language code implies, or None when only the text can tell.

    A script subtag wins ("kk-Arab", "mn_Mong", "zh-Hant"); otherwise a small map of
    languages written in one script (zh, yue → Han; bo, dz → Tibetan; ug → Arabic).
    """
    if not lang:
        return None
    subtags = regex.split(r"[-_]", lang.strip())
    for subtag in subtags[1:]:
        if len(subtag) == 4 and subtag.isalpha():
            name = _SCRIPT_SUBTAGS.get(subtag.lower()) or _SCRIPT_CODES.get(subtag.title())
            if name is not None:
                return name
    return _LANG_SCRIPTS.get(subtags[0].lower())


def target_script(references: Sequence[str], lang: str | None = None) -> str:
    """The script a corpus is scored in: from `lang` when it says, else the references' text."""
    return script_for_lang(lang) or dominant_script(" ".join(references))


# --- tokenisation ------------------------------------------------------------------------


def tokenize_for_metrics(text: str) -> list[str]:
    """Split `text` into the tokens ROUGE-L is computed on (see the module docstring).

    "人人生而自由" → ["人", "人", "生", "而", "自", "由"];
    "དོན་ཚན་བདུན་པ།" → ["དོན", "ཚན", "བདུན", "པ"]; "All human beings." → ["all", "human", "beings"].
    """
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


class MetricTokenizer:
    """The `tokenize(text)` object `rouge_score.rouge_scorer.RougeScorer` accepts."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_for_metrics(text)


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
    if script in _UNSPACED_SCRIPTS:
        return "none"
    return "13a" if script in ("Latin", NO_SCRIPT) else "intl"


def _words_for_sacrebleu(texts: Sequence[str], script: str) -> list[str]:
    # The script-aware chrF++ word n-grams and BLEU need words; for unspaced scripts they are
    # the metric tokens (characters, syllables). chrF's character n-grams ignore spaces, so
    # this only drops the punctuation from them.
    if script in _UNSPACED_SCRIPTS:
        return [" ".join(tokenize_for_metrics(t)) for t in texts]
    return list(texts)


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


def _chrf(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
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
    chrf, chrf_signature = _chrf(predictions, references)
    bleu, bleu_signature = _bleu(predictions, references, bleu_tokenize(script))
    tokenize = script_bleu_tokenize(script)
    hyps, refs = _words_for_sacrebleu(predictions, script), _words_for_sacrebleu(references, script)
    bleu_script, script_signature = _bleu(*((predictions, references) if tokenize == "zh" else (hyps, refs)), tokenize)
    sp = spbleu(predictions, references)
    signatures = {"chrf": chrf_signature, "bleu": bleu_signature, "bleu_script": script_signature}
    if sp is not None:
        signatures["spbleu"] = sp[1]
    return {
        "chrf": chrf,
        "bleu": bleu,
        "spbleu": None if sp is None else sp[0],
        "chrf_script": _chrf(hyps, refs)[0],
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
