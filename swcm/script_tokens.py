"""The Unicode scripts of text, and its tokenisation by script for the metrics.

ROUGE-L has no standard for the scripts swcm targets: Google's `rouge-score` tokenizer keeps
only [a-z0-9], so Chinese, Tibetan, Uyghur, Kazakh and Mongolian text all score 0.
`tokenize_for_metrics` tokenises by the Unicode script of the text itself, so a language the
tool has never heard of still scores correctly:

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

The same tokens are the words of the script-aware chrF++ and BLEU (`spaced_words`). Which
script a text or a language is in: `char_script`, `letter_scripts`, `dominant_script`,
`script_for_lang`, `target_script`. `swcm.metrics` scores with all of these.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from collections.abc import Sequence

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
UNSPACED_SCRIPTS = frozenset({"Tibetan", *CHARACTER_SCRIPTS})

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


def spaced_words(texts: Sequence[str], script: str) -> list[str]:
    """`texts` with words sacrebleu can split, for the script-aware chrF++ word n-grams and BLEU:
    in a script without word spacing (`UNSPACED_SCRIPTS`), the metric tokens (characters,
    syllables) joined by spaces; other texts as they are. chrF's character n-grams ignore
    spaces, so for them this only drops the punctuation."""
    if script in UNSPACED_SCRIPTS:
        return [" ".join(tokenize_for_metrics(t)) for t in texts]
    return list(texts)
