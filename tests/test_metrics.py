"""Metrics on real UDHR text: script detection and tokens (`swcm.script_tokens`), script-aware
ROUGE-L, sacrebleu's chrF++/BLEU and the script-aware variants, script rate, `swcm score`."""

from __future__ import annotations

import json
import unicodedata

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from swcm.cli import main
from swcm.metrics import (
    METRIC_COLUMNS,
    evaluate_predictions,
    flatten_scores,
    markdown_table,
    read_segments,
    rouge_l,
    score,
    script_rate,
    spbleu,
    spbleu_model_path,
)
from swcm.script_tokens import dominant_script, script_for_lang, target_script, tokenize_for_metrics
from swcm.resources import UDHR_LANGS, udhr

UNITS = udhr("train") + udhr("valid") + udhr("test")
BY_ID = {unit["id"]: unit["text"] for unit in UNITS}
SCRIPTS = {"zh": "Han", "bo": "Tibetan", "ug": "Arabic", "kk": "Cyrillic", "mn": "Cyrillic", "en": "Latin"}


def texts(lang: str, split: str = "test") -> list[str]:
    return [unit["text"][lang] for unit in udhr(split)]


# --- scripts -----------------------------------------------------------------------------


@pytest.mark.parametrize("lang", UDHR_LANGS)
def test_dominant_script_of_every_udhr_text(lang):
    assert {dominant_script(unit["text"][lang]) for unit in UNITS} == {SCRIPTS[lang]}


def test_dominant_script_of_other_scripts_and_of_text_without_letters():
    assert dominant_script("ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ") == "Mongolian"  # traditional Mongolian: "Mongolian language"
    assert dominant_script("Ελληνικά") == "Greek"
    assert dominant_script("第7条 Article 7") == "Latin"  # 7 Latin letters against 2 Han
    assert dominant_script("1948. —") == "Common"


@pytest.mark.parametrize(
    "lang, script",
    [("zh", "Han"), ("zh-Hant", "Han"), ("bo", "Tibetan"), ("ug", "Arabic"), ("kk-Arab", "Arabic"),
     ("kk_Arab", "Arabic"), ("mn-Mong", "Mongolian"), ("uz-Latn", "Latin"), ("kk", None), ("mn", None),
     ("xyz", None), (None, None)],
)
def test_script_for_lang(lang, script):
    assert script_for_lang(lang) == script


def test_target_script_reads_the_text_when_the_code_does_not_say():
    kk = texts("kk")
    assert target_script(kk, "kk") == "Cyrillic"
    assert target_script(kk, "kk-Arab") == "Arabic"
    assert target_script(texts("ug"), "never-heard-of") == "Arabic"


# --- tokenisation and ROUGE-L ------------------------------------------------------------


def test_tokens_per_script_on_udhr_titles():
    title = BY_ID["article-07.0"]
    assert tokenize_for_metrics(title["zh"]) == ["第", "七", "条"]
    assert tokenize_for_metrics(title["bo"]) == ["དོན", "ཚན", "བདུན", "པ"]
    assert tokenize_for_metrics(title["ug"]) == ["7", "ماددا"]
    assert tokenize_for_metrics(title["kk"]) == ["7", "бап"]
    assert tokenize_for_metrics(title["mn"]) == ["долдугаар", "зүйл"]
    assert tokenize_for_metrics(title["en"]) == ["article", "7"]


def test_words_keep_their_marks_joiners_and_vowel_separator():
    # Tibetan vowel signs and subjoined letters are combining marks, not boundaries.
    assert tokenize_for_metrics("སྐྱེ་བོ་རེ་རེར་") == ["སྐྱེ", "བོ", "རེ", "རེར"]
    # Uyghur hyphenated compound, Arabic comma dropped.
    assert tokenize_for_metrics("ئىززەت-ھۆرمەت ۋە ئەركىن،") == ["ئىززەت", "ھۆرمەت", "ۋە", "ئەركىن"]
    # Mongolian vowel separator U+180E stays inside "qar-a" (black).
    assert tokenize_for_metrics("ᠬᠠᠷ\u180eᠠ ᠮᠣᠷᠢ") == ["ᠬᠠᠷ\u180eᠠ", "ᠮᠣᠷᠢ"]
    # Latin words inside a Chinese sentence stay words; full-width forms fold to ASCII.
    assert tokenize_for_metrics("联合国UN大会，ＵＤＨＲ") == ["联", "合", "国", "un", "大", "会", "udhr"]


def test_english_rouge_equals_rouge_scores_own():
    english = [unit["text"]["en"] for unit in UNITS]
    for text in english:
        assert tokenize_for_metrics(text) == rouge_tokenize.tokenize(text, None)
    predictions = english[1:] + english[:1]  # each reference against its neighbour: partial overlaps
    predictions += [text[: len(text) // 2] for text in english]
    references = english + english
    default = rouge_scorer.RougeScorer(["rougeL"])
    segments = [default.score(ref, pred)["rougeL"] for pred, ref in zip(predictions, references)]
    expected = {
        "f": 100 * sum(s.fmeasure for s in segments) / len(segments),
        "p": 100 * sum(s.precision for s in segments) / len(segments),
        "r": 100 * sum(s.recall for s in segments) / len(segments),
    }
    assert 0 < expected["f"] < 100
    assert rouge_l(predictions, references) == expected


def test_chinese_rouge_is_the_lcs_of_characters():
    reference = BY_ID["article-03.1"]["zh"]  # 人人有权享有生命、自由和人身安全。
    prediction = BY_ID["article-20.1"]["zh"]  # 人人有权享有和平集会和结社的自由。
    assert tokenize_for_metrics(reference) == list("人人有权享有生命自由和人身安全")
    assert tokenize_for_metrics(prediction) == list("人人有权享有和平集会和结社的自由")
    # LCS: 人人有权享有 + 自由 = 8 (the later 和 of the reference comes after its 自由).
    p, r = 8 / 16, 8 / 15
    assert rouge_l([prediction], [reference]) == pytest.approx(
        {"f": 100 * 2 * p * r / (p + r), "p": 100 * p, "r": 100 * r})
    # The bug this fixes: rouge-score's own tokenizer sees no tokens in Chinese at all.
    assert rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure == 0


def test_tibetan_rouge_is_the_lcs_of_syllables():
    reference = BY_ID["article-17.2"]["bo"]
    prediction = BY_ID["article-20.2"]["bo"]
    assert tokenize_for_metrics(reference) == [
        "སུ", "གང", "གིས", "གང", "ཞིག", "གི", "མཁར", "དབང", "བཙན", "འཕྲོག", "བྱེད", "པའི", "རིགས", "མི", "ཆོག"]
    assert tokenize_for_metrics(prediction) == [
        "སུ", "ཡིན", "ཡང", "སྐྱིད", "སྡུག", "གཅིག", "ཏུ", "ཨུ", "ཚུགས", "མཐའ", "ནན", "གྱིས", "བདགཉར",
        "བྱེད", "པའི", "རིགས", "མི", "ཆོག"]
    # LCS: སུ + བྱེད པའི རིགས མི ཆོག = 6 of 18 predicted and 15 reference syllables.
    p, r = 6 / 18, 6 / 15
    assert rouge_l([prediction], [reference]) == pytest.approx(
        {"f": 100 * 2 * p * r / (p + r), "p": 100 * p, "r": 100 * r})
    assert rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure == 0


# UDHR Article 1 (its opening) in scripts written without spaces between words, and Yi,
# "ꆈꌠꁱꂷ ꆈꌠꉙ" (Nuosu script, Nuosu language): (text, its characters).
UNSPACED = {
    "th": ("มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอกันในเกียรติศักดิ์และสิทธิ", "Thai"),
    "lo": ("ມະນຸດເກີດມາມີສິດເສລີພາບ ແລະ ສະເໝີພາບກັນ ໃນທາງກຽດຕິສັກ ແລະ ສິດທິ", "Lao"),
    "km": ("មនុស្សទាំងអស់កើតមកមានសេរីភាព និងសមភាព ក្នុងផ្នែកសេចក្ដីថ្លៃថ្នូរ និងសិទ្ធិ", "Khmer"),
    "my": ("လူတိုင်းသည် တူညီလွတ်လပ်သော ဂုဏ်သိက္ခာဖြင့်လည်းကောင်း", "Myanmar"),
    "ja": ("すべてのにんげんは、うまれながらにしてじゆうであり、かつ、そんげんとけんりとについてびょうどうである。", "Hiragana"),
    "ii": ("ꆈꌠꁱꂷ ꆈꌠꉙ", "Yi"),
}


@pytest.mark.parametrize("lang", UNSPACED)
def test_scripts_without_spaces_are_split_into_characters(lang):
    text, script = UNSPACED[lang]
    tokens = tokenize_for_metrics(text)
    assert dominant_script(text) == script
    # Each token is one letter of the script with the combining marks (vowel signs, tone
    # marks) after it; together they are the text without spaces and punctuation.
    assert all(regex.fullmatch(r"\p{L}\p{M}*", t) for t in tokens)
    normal = unicodedata.normalize("NFKC", text)  # Lao ໝ is ຫ + ມ
    assert "".join(tokens) == regex.sub(r"[\s\p{P}]", "", normal)
    assert len(tokens) == len(regex.findall(r"\p{L}", normal)) > 3
    # A near-perfect prediction, one character short, scores its LCS: P = 1, R = (n - 1) / n.
    cut = normal.index(tokens[len(tokens) // 2])
    prediction = normal[:cut] + normal[cut + len(tokens[len(tokens) // 2]):]
    n = len(tokens)
    assert rouge_l([prediction], [text]) == pytest.approx(
        {"f": 100 * 2 * (n - 1) / (2 * n - 1), "p": 100.0, "r": 100 * (n - 1) / n})
    result = score([text], [text], lang)
    assert result["chrf"] == result["chrf_script"] == pytest.approx(100.0) and result["bleu_script"] == pytest.approx(100.0)
    # sacrebleu's BLEU reads a sentence without spaces as a few long "words": under four, no 4-grams, 0.
    assert result["bleu"] == (pytest.approx(100.0) if len(text.split()) >= 4 else 0.0)


def test_thai_and_myanmar_marks_stay_with_their_letter():
    assert tokenize_for_metrics("กินข้าว") == ["กิ", "น", "ข้", "า", "ว"]
    assert tokenize_for_metrics("မြန်မာ") == ["မြ", "န်", "မာ"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_tokens_are_words_and_a_space_separates_them(a, b):
    tokens = tokenize_for_metrics(a)
    assert all(regex.fullmatch(r"[\w\u180E]+", t) and "_" not in t for t in tokens)
    # A token holding a character of an unspaced script is that character and its marks.
    unspaced = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Yi}]"
    assert all(regex.fullmatch(unspaced + r"\p{M}*", t) for t in tokens if regex.search(unspaced, t))
    assert tokenize_for_metrics(a + " " + b) == tokens + tokenize_for_metrics(b)


# --- chrF++, BLEU, script rate, score ----------------------------------------------------


@pytest.mark.parametrize("lang", UDHR_LANGS)
def test_a_perfect_prediction_scores_100_on_every_metric(lang):
    refs = texts(lang)
    result = score(refs, refs, lang)
    assert result["rougeL"] == {"f": 100.0, "p": 100.0, "r": 100.0}
    assert result["chrf"] == pytest.approx(100.0)
    assert result["bleu"] == pytest.approx(100.0)
    assert result["script_rate"] == 100.0
    assert result["n"] == len(refs)


@pytest.mark.parametrize("lang", ["zh", "bo", "ug"])
def test_a_wrong_prediction_scores_below_a_partly_right_one(lang):
    refs = texts(lang)
    shifted = refs[1:] + refs[:1]
    halves = [ref[: len(ref) // 2] + shifted[i][len(shifted[i]) // 2:] for i, ref in enumerate(refs)]
    wrong, partly = score(shifted, refs, lang), score(halves, refs, lang)
    for metric in ("chrf", "bleu"):
        assert 0 <= wrong[metric] < partly[metric] < 100
    assert wrong["rougeL"]["f"] < partly["rougeL"]["f"] < 100


def half_right(refs: list[str]) -> list[str]:
    """Predictions whose first half is the reference's and second half another reference's."""
    shifted = refs[1:] + refs[:1]
    return [ref[: len(ref) // 2] + shifted[i][len(shifted[i]) // 2:] for i, ref in enumerate(refs)]


@pytest.mark.parametrize("lang, tokenize", [("bo", "13a"), ("zh", "zh"), ("ug", "13a")])
def test_chrf_and_bleu_are_sacrebleus_standard_scores_on_the_raw_text(lang, tokenize):
    from sacrebleu.metrics import BLEU, CHRF

    refs = texts(lang)
    predictions = half_right(refs)
    chrf, bleu = CHRF(word_order=2), BLEU(tokenize=tokenize)
    result = score(predictions, refs, lang)
    assert result["chrf"] == chrf.corpus_score(predictions, [refs]).score
    assert result["bleu"] == bleu.corpus_score(predictions, [refs]).score
    assert result["signatures"]["chrf"] == chrf.get_signature().format()  # nrefs:1|case:mixed|...|nw:2|...
    assert result["signatures"]["bleu"] == bleu.get_signature().format() and f"tok:{tokenize}|" in result["signatures"]["bleu"]
    assert "spbleu" not in result["signatures"]  # not scored: no FLORES-200 model here


@pytest.mark.parametrize("lang, tokenize", [("bo", "none"), ("zh", "zh")])
def test_the_script_aware_variants_have_names_of_their_own(lang, tokenize):
    """Unspaced scripts: on syllables / characters without punctuation, not sacrebleu's chrF++."""
    refs = texts(lang)
    predictions = half_right(refs)
    result = score(predictions, refs, lang)
    words = lambda lines: [" ".join(tokenize_for_metrics(line)) for line in lines]  # noqa: E731
    from sacrebleu.metrics import CHRF

    assert result["chrf_script"] == CHRF(word_order=2).corpus_score(words(predictions), [words(refs)]).score
    assert result["chrf_script"] != pytest.approx(result["chrf"])
    assert f"tok:{tokenize}|" in result["signatures"]["bleu_script"]
    if lang == "bo":  # Tibetan: syllable BLEU, far from 13a's whitespace "words" (whole phrases)
        assert result["bleu_script"] > result["bleu"] + 5
    else:  # Chinese: BLEU on characters either way
        assert result["bleu_script"] == result["bleu"]


@pytest.fixture
def flores200_stand_in(tmp_path, monkeypatch):
    """sacrebleu's cache holding a SentencePiece model where its FLORES-200 model would be: the
    real model is not shipped by any package and nothing here downloads. Trained on UDHR text."""
    import sentencepiece as spm
    from sacrebleu.tokenizers import tokenizer_spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(text for unit in UNITS for text in unit["text"].values()), encoding="utf-8")
    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path / "sacrebleu"))
    path = spbleu_model_path()
    assert path.startswith(str(tmp_path)) and not __import__("os").path.exists(path)
    assert spbleu(["a"], ["a"]) is None and score(["a"], ["a"])["spbleu"] is None  # no model: no score
    (tmp_path / "sacrebleu" / "models").mkdir(parents=True)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm"), vocab_size=1000,
                                   character_coverage=1.0, minloglevel=2)
    (tmp_path / "spm.model").rename(path)
    return spm.SentencePieceProcessor(model_file=path)


@pytest.mark.parametrize("lang", ["zh", "bo", "ug"])
def test_spbleu_is_bleu_on_the_sentencepiece_pieces(flores200_stand_in, lang):
    from sacrebleu.metrics import BLEU

    refs = texts(lang)
    shifted = refs[1:] + refs[:1]
    halves = [ref[: len(ref) // 2] + shifted[i][len(shifted[i]) // 2:] for i, ref in enumerate(refs)]
    pieces = lambda lines: [" ".join(flores200_stand_in.encode(line, out_type=str)) for line in lines]  # noqa: E731
    expected = BLEU(tokenize="none").corpus_score(pieces(halves), [pieces(refs)]).score
    result = score(halves, refs, lang)
    assert result["spbleu"] == pytest.approx(expected) and 0 < expected < 100
    assert "tok:flores200|" in result["signatures"]["spbleu"]
    assert score(shifted, refs, lang)["spbleu"] < result["spbleu"] < score(refs, refs, lang)["spbleu"] == 100.0
    assert evaluate_predictions(
        [{"p": h, "r": r, "l": lang} for h, r in zip(halves, refs)], reference_field="r", lang_field="l",
        prediction_field="p")[0]["spbleu"] == pytest.approx(expected)


def test_script_rate():
    bo, zh = texts("bo"), texts("zh")
    assert script_rate(bo, bo) == 100.0
    assert script_rate(texts("bo", "train")[: len(bo)], bo) == 100.0  # other sentences, same script
    assert script_rate(zh, bo) == 0.0  # answering in Chinese, the paper's LLM baseline failure
    # Tibetan letters ད ན ཚ ན (the vowel ོ is a mark) against Han 第 七 条: 4 of 7.
    assert script_rate(["དོན་ཚན་ 第七条"], [bo[0]]) == pytest.approx(100 * 4 / 7)
    assert script_rate(["", "1948"], [bo[0], "1948"]) == 50.0  # empty answer 0; nothing to write 100
    assert script_rate(texts("kk"), texts("mn"), lang="kk-Arab") == 0.0  # --lang fixes the target


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="^2 predictions but 1 references$"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no segments"):
        score([], [])


# --- per-language evaluation and tables --------------------------------------------------


def test_evaluate_predictions_one_row_per_language_in_order():
    records = []
    for unit in udhr("test"):
        for lang in ("bo", "zh", "kk"):
            records.append({"tgt": unit["text"][lang], "tgt_lang": lang, "prediction": unit["text"]["zh"]})
    rows = evaluate_predictions(records, reference_field="tgt", lang_field="tgt_lang")
    assert [row["lang"] for row in rows] == ["bo", "zh", "kk"]
    assert [row["script"] for row in rows] == ["Tibetan", "Han", "Cyrillic"]
    for row in rows:
        refs = texts(row["lang"])
        assert row == {"lang": row["lang"], "script": row["script"], **flatten_scores(score(texts("zh"), refs, row["lang"]))}
    assert rows[1]["rougeL_f"] == 100.0 and rows[0]["script_rate"] == 0.0

    table = markdown_table(rows)
    lines = table.splitlines()
    assert lines[0] == ("| language | script | ROUGE-L F | ROUGE-L P | ROUGE-L R | chrF++ | BLEU | spBLEU "
                        "| script-aware chrF++ | script-aware BLEU | script rate | n |")
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"  # spBLEU: no model here
    assert lines[3] == "| zh | Han | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | – | 100.00 | 100.00 | 100.00 | 9 |"
    assert len(lines) == 2 + len(rows) and len(METRIC_COLUMNS) == 12

    with pytest.raises(ValueError, match='^test.jsonl:2: missing field "tgt_lang"$'):
        evaluate_predictions([records[0], {"tgt": "x", "prediction": "y"}], reference_field="tgt",
                             lang_field="tgt_lang", source="test.jsonl")


# --- files and the CLI -------------------------------------------------------------------


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_read_segments_keeps_line_separators_inside_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffa\u2028b\r\nc\x85d\n\n".encode())
    assert read_segments(path) == ["a\u2028b", "c\x85d", ""]


def test_cli_score_json(tmp_path, capsys):
    pred = write_lines(tmp_path / "pred.txt", texts("zh"))
    ref = write_lines(tmp_path / "ref.txt", texts("bo"))
    assert main(["score", "--pred", pred, "--ref", ref, "--lang", "bo", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    printed = json.loads(out)
    expected = score(texts("zh"), texts("bo"), "bo")
    assert printed == {k: v for k, v in expected.items() if k != "n"}
    assert printed["script_rate"] == 0.0 and printed["script"] == "Tibetan" and "nw:2" in printed["signatures"]["chrf"]

    assert main(["score", "--pred", ref, "--ref", ref]) == 0
    out = capsys.readouterr().out
    assert "ROUGE-L F" in out and "100.00" in out and "script Tibetan" in out
    assert "script-aware chrF++" in out and "tok:13a|" in out


def test_cli_score_errors(tmp_path, capsys):
    pred = write_lines(tmp_path / "pred.txt", texts("bo")[:3])
    ref = write_lines(tmp_path / "ref.txt", texts("bo"))
    assert main(["score", "--pred", pred, "--ref", ref]) == 2
    assert capsys.readouterr().err.strip() == f"swcm score: error: {pred} has 3 lines but {ref} has 9"

    (tmp_path / "bad.txt").write_bytes(b"fine\nbad \xff byte\n")
    assert main(["score", "--pred", str(tmp_path / "bad.txt"), "--ref", ref]) == 2
    assert capsys.readouterr().err.strip() == f"swcm score: error: {tmp_path / 'bad.txt'}:2: not UTF-8"
