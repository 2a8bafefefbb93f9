"""How a seq2seq model is told which language to read and to write: swcm's own language tags and
the conventions of the baselines a researcher compares against.

| family   | models                 | output language                         | source language       |
| -------- | ---------------------- | --------------------------------------- | --------------------- |
| swcm     | SWCM                   | forced first token `__bo__`             | —                     |
| nllb     | NLLB-200               | forced first token `bod_Tibt`           | tokenizer `src_lang`  |
| m2m100   | M2M-100                | forced first token `__bo__`             | tokenizer `src_lang`  |
| mbart50  | mBART-50               | forced first token `kk_KZ`              | tokenizer `src_lang`  |
| prefix   | mT5, Marian, any other | none, or a source prefix (`>>bod<< `)   | —                     |

The family comes from the model and its tokenizer. swcm's language codes (zh, bo, ug, kk, mn, en)
are mapped to the family's codes by `DEFAULT_CODES`, which a user map overrides or extends.

`language_name` and `detect_languages` (which language a text is in, from the Unicode scripts of
its letters, with an honest confidence where a script is shared) serve `swcm serve`'s
`GET /languages` and `POST /detect`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .script_tokens import letter_scripts, script_for_lang
from .tokenization import language_tag, language_tag_id

FAMILIES = ("swcm", "nllb", "m2m100", "mbart50", "prefix")

# The paper's languages in each family's codes. NLLB-200 and mBART-50 have no Mongolian or Kazakh
# in the scripts used in China (traditional Mongolian, Arabic-script Kazakh): their codes here are
# the Cyrillic ones, and the script rate of the results shows the mismatch. mBART-50 and M2M-100
# lack Tibetan and Uyghur.
DEFAULT_CODES: dict[str, dict[str, str]] = {
    "nllb": {"zh": "zho_Hans", "bo": "bod_Tibt", "ug": "uig_Arab", "kk": "kaz_Cyrl", "mn": "khk_Cyrl", "en": "eng_Latn"},
    "mbart50": {"zh": "zh_CN", "kk": "kk_KZ", "mn": "mn_MN", "en": "en_XX"},
    "m2m100": {"zh": "zh", "kk": "kk", "mn": "mn", "en": "en"},
}
_SOURCE_LANG_FAMILIES = ("nllb", "m2m100", "mbart50")


def model_family(model, tokenizer) -> str:
    """The family whose language convention `model` and `tokenizer` follow (see the module table)."""
    if getattr(model.config, "model_type", None) == "swcm":
        return "swcm"
    name = type(tokenizer).__name__
    for prefix, family in (("Nllb", "nllb"), ("M2M100", "m2m100"), ("MBart50", "mbart50")):
        if name.startswith(prefix):
            return family
    return "prefix"


@dataclass(frozen=True)
class LanguageConvention:
    """How one model family is told the languages of a generation.

    family: one of `FAMILIES`; codes: swcm language code → the family's code (defaults for the
    family, then the user's map); source_prefix: a template put before every source text, with
    {code} (the target language's code) and {lang} (swcm's code), e.g. ">>{code}<< " for a
    multi-target Marian model or "summarize: " for a T5 fine-tuned with that prefix.
    """

    family: str = "swcm"
    codes: Mapping[str, str] = field(default_factory=dict)
    source_prefix: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {', '.join(FAMILIES)}")

    def code(self, lang: str) -> str:
        """The family's code for swcm language code `lang` (ValueError when the map lacks it)."""
        if self.family in ("swcm", "prefix"):
            return self.codes.get(lang, lang)
        if lang not in self.codes:
            raise ValueError(f"no {self.family} language code for {lang!r}; give one with --lang-code {lang}=CODE")
        return self.codes[lang]

    def _token(self, lang: str) -> str:
        return f"__{self.code(lang)}__" if self.family == "m2m100" else self.code(lang)

    def forced_bos_token_id(self, tokenizer, lang: str | None) -> int | None:
        """The token forced as the first output token for target language `lang`, or None."""
        if lang is None or self.family == "prefix":
            return None
        if self.family == "swcm":
            return language_tag_id(tokenizer, self.code(lang))
        token = self._token(lang)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the model has no language code {token} (for {lang!r})")
        return token_id

    def check(self, tokenizer, langs: Iterable[str], source_langs: Iterable[str | None] = ()) -> None:
        """Raise a one-line ValueError unless every target language (and, where the family reads
        one, every source language) has a code the tokenizer knows."""
        for lang in dict.fromkeys(langs):
            if self.family == "swcm":
                try:
                    language_tag_id(tokenizer, self.code(lang))
                except ValueError:
                    tags = [t for t in tokenizer.all_special_tokens if language_tag(t[2:-2]) == t]
                    raise ValueError(f"the model has no language tag {language_tag(self.code(lang))} for {lang!r}; "
                                     f"it has {', '.join(tags) or 'none'}") from None
            else:
                self.forced_bos_token_id(tokenizer, lang)
        if self.family in _SOURCE_LANG_FAMILIES:
            for lang in dict.fromkeys(l for l in source_langs if l is not None):
                self.forced_bos_token_id(tokenizer, lang)

    def set_source_language(self, tokenizer, lang: str | None) -> None:
        """Make `tokenizer` mark sources as `lang` (NLLB, M2M-100, mBART-50 prefix the source with its code)."""
        if self.family in _SOURCE_LANG_FAMILIES and lang is not None:
            tokenizer.src_lang = self.code(lang)

    def source_text(self, text: str, target_lang: str | None) -> str:
        """`text` behind the source prefix, if any, filled in for `target_lang`."""
        if not self.source_prefix or target_lang is None:
            return text
        return self.source_prefix.format(code=self.code(target_lang), lang=target_lang) + text

    def describe(self) -> dict:
        """What results.json records about the convention."""
        return {"family": self.family, "codes": dict(self.codes), "source_prefix": self.source_prefix}


def language_convention(model, tokenizer, codes: Mapping[str, str] | None = None,
                        source_prefix: str | None = None) -> LanguageConvention:
    """The convention of `model`'s family, its default codes updated with the user's `codes`."""
    family = model_family(model, tokenizer)
    if source_prefix is not None:
        try:
            source_prefix.format(code="", lang="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"--source-prefix {source_prefix!r}: only {{code}} and {{lang}} may be filled in ({err})") from None
    return LanguageConvention(family, {**DEFAULT_CODES.get(family, {}), **(codes or {})}, source_prefix)


def read_language_codes(path: str | os.PathLike) -> dict[str, str]:
    """A language-code map from a file: a JSON object {"bo": "bod_Tibt", …} or TSV lines `bo<TAB>bod_Tibt`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        try:
            codes = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None
        if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in codes.items()):
            raise ValueError(f"{path}: expected a JSON object of language code → model code strings")
        return codes
    codes = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected LANG<TAB>CODE, e.g. bo\tbod_Tibt")
        codes[parts[0]] = parts[1]
    return codes



# --- names and detection ---------------------------------------------------------------------

# English names of the languages swcm's corpora and baselines use (what `GET /languages` shows).
LANGUAGE_NAMES = {
    "zh": "Chinese", "bo": "Tibetan", "dz": "Dzongkha", "ug": "Uyghur", "kk": "Kazakh", "mn": "Mongolian",
    "en": "English", "ii": "Nuosu (Yi)", "ko": "Korean", "ja": "Japanese", "ru": "Russian", "ar": "Arabic",
}

# The scripts each language is written in. Kazakh is Cyrillic in Kazakhstan and Arabic-script in
# China; Mongolian Cyrillic in Mongolia and traditional in China; so their script does not decide.
LANGUAGE_SCRIPTS = {
    "zh": ("Han",), "yue": ("Han",), "bo": ("Tibetan",), "dz": ("Tibetan",), "ug": ("Arabic",),
    "kk": ("Cyrillic", "Arabic"), "mn": ("Cyrillic", "Mongolian"), "en": ("Latin",), "ii": ("Yi",),
    "ko": ("Hangul",), "ja": ("Han", "Hiragana", "Katakana"), "ru": ("Cyrillic",), "ar": ("Arabic",),
}

# Cyrillic letters of Kazakh that Mongolian (and Russian) Cyrillic lack: one of them tells Kazakh.
_KAZAKH_CYRILLIC = frozenset("әғқңұһіӘҒҚҢҰҺІ")


def language_name(code: str) -> str:
    """The English name of a language code ("ug" → "Uyghur"; a script subtag is named too:
    "kk-Arab" → "Kazakh (Arabic script)"); the code itself when swcm does not know it."""
    base, _, rest = code.replace("_", "-").partition("-")
    name = LANGUAGE_NAMES.get(base.lower(), code)
    script = script_for_lang(code) if rest else None
    return f"{name} ({script} script)" if script and name != code else name


def language_scripts(code: str) -> tuple[str, ...]:
    """The Unicode scripts `code` is written in: its script subtag's ("mn-Mong" → Mongolian),
    else `LANGUAGE_SCRIPTS`; () for a language swcm does not know."""
    if "-" in code or "_" in code:
        script = script_for_lang(code)
        if script:
            return (script,)
    return LANGUAGE_SCRIPTS.get(code.lower(), ())


def detect_languages(text: str, candidates: Iterable[str]) -> list[dict]:
    """Which of the `candidates` `text` is in, from the Unicode scripts of its letters:
    [{"language": code, "confidence": 0–100}, …], most likely first (LibreTranslate's /detect).

    Each letter's script is shared among the candidates written in it, each counting
    1 / (the number of scripts it is written in): Han text is Chinese (100), Arabic-script text
    Uyghur 67 / Kazakh 33 (Kazakh is written in Arabic script in China only), Tibetan text
    Dzongkha 50 / Tibetan 50. Cyrillic with a letter only Kazakh has (ә ғ қ ң ұ һ і) is Kazakh;
    other Cyrillic is split between Kazakh and Mongolian, since the script cannot tell them
    apart. A language none of whose scripts appear scores 0; so do all without letters.
    """
    candidates = list(dict.fromkeys(candidates))
    counts = letter_scripts(text)
    total = sum(counts.values())
    kazakh_letters = any(ch in _KAZAKH_CYRILLIC for ch in text)
    scores = dict.fromkeys(candidates, 0.0)
    for script, n in counts.items():
        weights = {}
        for lang in candidates:
            scripts = language_scripts(lang)
            if script in scripts:
                weights[lang] = 1 / len(scripts)
        if script == "Cyrillic" and kazakh_letters and any(l.split("-")[0] == "kk" for l in weights):
            weights = {l: w for l, w in weights.items() if l.split("-")[0] == "kk"}
        for lang, weight in weights.items():
            scores[lang] += 100 * n / total * weight / sum(weights.values())
    ranked = sorted(candidates, key=lambda lang: -scores[lang])  # stable: ties keep the candidates' order
    return [{"language": lang, "confidence": round(scores[lang], 1)} for lang in ranked]
