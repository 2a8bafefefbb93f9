"""The vendored LibreOffice UI strings: clean, aligned, split without overlap, as SOURCE.md states,
and ready for the experiment runner; and the help corpus with its headline task: aligned by page
and id, dz only in the Tibetan script, split by page without overlap."""

import importlib.util
import re
from importlib import resources
from pathlib import Path

import pytest

from swcm.data.readers import parse_source_spec, read_records, read_task
from swcm.experiments import prepare_vendored_data
from swcm.script_tokens import letter_scripts
from swcm.resources import LIBREOFFICE_LANGS, SPLITS, libreoffice, libreoffice_headlines, libreoffice_help

ROOT = Path(__file__).resolve().parent.parent
OTHERS = [lang for lang in LIBREOFFICE_LANGS if lang != "en"]


def _tool():
    """tools/vendor_libreoffice.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("vendor_libreoffice", ROOT / "tools" / "vendor_libreoffice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def splits():
    return {split: libreoffice(split) for split in SPLITS}


def _normalised(text):
    return text.casefold().rstrip(" .:…!?").strip()


def test_splits_do_not_overlap_by_english_source_or_by_any_text(splits):
    english = {split: [u["text"]["en"] for u in units] for split, units in splits.items()}
    for split, texts in english.items():
        assert len(set(texts)) == len(texts), f"an English string repeats inside {split}"
    assert not set(english["train"]) & set(english["valid"])
    assert not set(english["train"]) & set(english["test"])
    assert not set(english["valid"]) & set(english["test"])
    # Held-out text, in any language, is not in train even up to case and final punctuation.
    seen = {(lang, _normalised(t)) for u in splits["train"] for lang, t in u["text"].items()}
    for split in ("valid", "test"):
        held = {(lang, _normalised(t)) for u in splits[split] for lang, t in u["text"].items()}
        assert not held & seen, split
    ids = [u["id"] for units in splits.values() for u in units]
    assert len(set(ids)) == len(ids)


def test_every_record_has_english_and_another_language(splits):
    for split, units in splits.items():
        assert units, split
        for unit in units:
            assert "en" in unit["text"] and len(unit["text"]) >= 2, unit
            assert set(unit["text"]) <= set(LIBREOFFICE_LANGS), unit
            for lang, text in unit["text"].items():
                assert text == " ".join(text.split()) and text, (lang, text)
                if lang != "en":
                    assert text != unit["text"]["en"], f"untranslated {lang} in {unit['id']}"
    for split in ("valid", "test"):  # held-out records are complete, so each test pair has the same sources
        assert all(set(u["text"]) == set(LIBREOFFICE_LANGS) for u in splits[split])


LEFTOVERS = {  # what the cleaning removes or drops, written independently of the tool's patterns
    "accelerator group": re.compile(r"\([~_]\w\)"),
    "mnemonic": re.compile(r"[~_]"),
    "markup": re.compile(r"<[^>]*>"),
    "numbered placeholder": re.compile(r"%\d|\$\d|#\d"),
    "named placeholder": re.compile(r"%[A-Za-z]|\$\(|\$\w+\$|%\{|#\w+#"),
    "brace placeholder": re.compile(r"\{\w*\}"),
    "dollar": re.compile(r"\$"),
}


def test_no_markers_markup_or_placeholders_remain(splits):
    for units in splits.values():
        for unit in units:
            for lang, text in unit["text"].items():
                for name, pattern in LEFTOVERS.items():
                    assert not pattern.search(text), f"{name} in {unit['id']} {lang}: {text!r}"
    # the product name placeholder is kept as the name, in every language alike
    product = [u for u in splits["train"] if u["text"]["en"] == "LibreOffice Help"]
    assert product and all("LibreOffice" in t for t in product[0]["text"].values())


@pytest.mark.parametrize("raw, cleaned", [
    ("O~ffset", "Offset"),
    ("偏移(~F)", "偏移"),
    ("列格式(~F)...", "列格式..."),
    ("قوش(_A)", "قوش"),
    ("Ба_с тарту", "Бас тарту"),
    ("_Add", "Add"),
    ("You will have to restart the program after this edit.\nContinue?",
     "You will have to restart the program after this edit. Continue?"),
    ("%PRODUCTNAME Help", "LibreOffice Help"),
    ("Page %1 of %2", None),
    ("第 %1 页，共 %2 页", None),
    ("Convert $(ARG1)", None),
    ("No $1$ exists.", None),
    ("Click to open hyperlink: %{link}", None),
    ("Wildcards such as ?,* are not allowed in #1.", None),
    ("An XML filter with the name '%s' already exists.", None),
    ("<All>", None),
    ("enter a tilde (~) before the letter", None),
    ("...", None),
])
def test_clean_on_real_catalogue_strings(raw, cleaned):
    assert _tool().clean(raw) == cleaned


def test_split_keeps_groups_sharing_a_text_together(splits):
    tool = _tool()
    units = splits["train"][:3000]
    parts = tool.split(units, held_out=40)
    assert [len(parts[s]) >= 40 for s in ("valid", "test")] == [True, True]
    assert sum(len(p) for p in parts.values()) == len(units)
    train = {(lang, _normalised(t)) for u in parts["train"] for lang, t in u["text"].items()}
    for split in ("valid", "test"):
        held = {(lang, _normalised(t)) for u in parts[split] for lang, t in u["text"].items()}
        assert not held & train
    assert tool.split(units, held_out=40) == parts  # deterministic


def _stated_counts(corpus="libreoffice"):
    """{split: {column: n}} from the table in the corpus' SOURCE.md."""
    text = resources.files("swcm.resources").joinpath(corpus, "SOURCE.md").read_text(encoding="utf-8")
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| split |") or line.startswith(tuple(f"| {s} |" for s in SPLITS))]
    header, body = rows[0], rows[1:]
    return {row[0]: dict(zip(header[1:], map(int, row[1:]))) for row in body}


def test_loader_returns_the_counts_source_md_states(splits):
    stated = _stated_counts()
    assert set(stated) == set(SPLITS)
    for split, units in splits.items():
        has = [set(u["text"]) for u in units]
        measured = {"records": len(units), **{lang: sum(lang in h for h in has) for lang in LIBREOFFICE_LANGS}}
        measured.update({f"zh-{x}": sum({"zh", x} <= h for h in has) for x in OTHERS if x != "zh"})
        measured["all"] = sum(h == set(LIBREOFFICE_LANGS) for h in has)
        assert measured == stated[split], split


def test_experiment_data_preparation_writes_readable_files(tmp_path, splits):
    data = prepare_vendored_data("libreoffice", tmp_path)
    assert data["langs"] == list(LIBREOFFICE_LANGS) and data["task"] == "mt"
    for spec in data["mono"]:
        lang = spec.split("=")[0]
        texts = [r["text"] for r in read_records(parse_source_spec(spec, "mono"))]
        assert texts == [u["text"][lang] for u in splits["train"] if lang in u["text"]]
    for spec in data["parallel"]:
        tgt = spec.split("=")[0].split("-")[1]
        records = list(read_records(parse_source_spec(spec, "parallel")))
        assert len(records) == sum({"zh", tgt} <= set(u["text"]) for u in splits["train"]) > 0
        assert {(r["src_lang"], r["tgt_lang"]) for r in records} == {("zh", tgt)}
    pairs = list(read_task(data["train"], "mt"))
    assert len(pairs) == sum(len(set(u["text"]) - {"zh"}) for u in splits["train"] if "zh" in u["text"])
    assert len(list(read_task(data["valid"], "mt"))) == (len(LIBREOFFICE_LANGS) - 1) * len(splits["valid"])
    for path in data["test"]:
        test = list(read_task(path, "mt"))
        assert len(test) == len(splits["test"]) and len({p.target_lang for p in test}) == 1
        assert [p.source_text for p in test] == [u["text"]["zh"] for u in splits["test"]]


# --- the help pages and the headline task ---------------------------------------------------


@pytest.fixture(scope="module")
def blocks():
    return {split: libreoffice_help(split) for split in SPLITS}


@pytest.fixture(scope="module")
def heads():
    return {split: libreoffice_headlines(split) for split in SPLITS}


def _tibetan(text):
    counts = letter_scripts(text)
    return counts["Tibetan"] * 2 > sum(counts.values())


def test_no_page_is_in_two_splits(blocks, heads):
    pages = {split: {r["page"] for r in blocks[split]} | {r["page"] for r in heads[split]} for split in SPLITS}
    assert not pages["train"] & pages["valid"] and not pages["train"] & pages["test"] and not pages["valid"] & pages["test"]
    tool = _tool()
    for split, names in pages.items():
        assert all(tool.help_split_of(page) == split for page in names)


def test_records_are_translations_in_their_script(blocks):
    for split, records in blocks.items():
        assert records
        for r in records:
            assert set(r["text"]) <= {"en", "zh", "dz"} and "en" in r["text"] and len(r["text"]) >= 2
            for lang in ("zh", "dz"):
                if lang in r["text"]:
                    assert r["text"][lang] != r["text"]["en"]
            if "dz" in r["text"]:
                assert _tibetan(r["text"]["dz"]), r
            assert r["kind"] in ("heading", "paragraph") and r["block"].startswith(("hd_id", "par_id"))


def test_held_out_text_is_not_in_train(blocks, heads):
    train = {(lang, t) for r in blocks["train"] for lang, t in r["text"].items() if lang != "en"}
    train_docs = {(r["lang"], r["document"]) for r in heads["train"]}
    for split in ("valid", "test"):
        assert not {(lang, t) for r in blocks[split] for lang, t in r["text"].items() if lang != "en"} & train
        assert not {(r["lang"], r["document"]) for r in heads[split]} & train_docs


def test_headlines_are_a_sections_heading_and_its_text(heads, blocks):
    headings = {(r["page"], lang, t) for split in SPLITS for r in blocks[split] if r["kind"] == "heading"
                for lang, t in r["text"].items()}
    for split, records in heads.items():
        assert {r["lang"] for r in records} == {"zh", "dz"}
        for r in records:
            assert r["summary"] and r["document"] and r["summary"] != r["document"]
            if r["lang"] == "dz":
                assert _tibetan(r["summary"]) and _tibetan(r["document"])
        # Most summaries are headings of the paragraph corpus (the rest were deduplicated away there).
        found = sum((r["page"], r["lang"], r["summary"]) in headings for r in records)
        assert found > 0.6 * len(records)


def test_help_page_parser_on_real_markup():
    page = ('<h1 id="hd_id3157557" dir="auto">Section</h1>\n<p id="par_id3145420" class="paragraph" dir="auto">'
            '<span class="avis">输入新区域的名称。</span>在默认情况下，LibreOffice 将自动为新区域指定名称「区域 X」。</p>'
            '<p class="x">no id</p><h2 id="hd_id3151170" dir="auto">དབྱེ་ཚན་གསརཔ།</h2>'
            '<p id="par_id3143280" class="paragraph" dir="auto">&lt;Server&gt; <p>nested</p> ཨིན།</p>')
    parser = _tool().HelpBlocks()
    parser.feed(page)
    assert parser.blocks == [
        ("h1", "hd_id3157557", "Section"),
        ("p", "par_id3145420", "输入新区域的名称。在默认情况下，LibreOffice 将自动为新区域指定名称「区域 X」。"),
        ("h2", "hd_id3151170", "དབྱེ་ཚན་གསརཔ།"),
        ("p", "par_id3143280", "<Server> nested ཨིན།"),
    ]


def test_loaders_return_the_counts_source_md_states(blocks, heads):
    stated = _stated_counts("libreoffice-help")
    for split in SPLITS:
        records = blocks[split]
        measured = {"pages": len({r["page"] for r in records}), "records": len(records),
                    "zh": sum("zh" in r["text"] for r in records), "dz": sum("dz" in r["text"] for r in records),
                    "zh-dz": sum({"zh", "dz"} <= set(r["text"]) for r in records),
                    "dz characters": sum(len(r["text"].get("dz", "")) for r in records),
                    "headlines zh": sum(r["lang"] == "zh" for r in heads[split]),
                    "headlines dz": sum(r["lang"] == "dz" for r in heads[split])}
        assert measured == stated[split], split


def test_experiment_data_from_both_corpora_and_the_headline_task(tmp_path, blocks, heads):
    mt = prepare_vendored_data(["libreoffice", "libreoffice-help"], tmp_path / "mt", targets=["dz"])
    assert mt["langs"] == ["zh", "dz"] and len(mt["test"]) == 1
    pairs = list(read_task(mt["test"][0], "mt"))
    help_pairs = sum({"zh", "dz"} <= set(r["text"]) for r in blocks["test"])
    assert len(pairs) == 500 + help_pairs and {p.target_lang for p in pairs} == {"dz"}
    headlines = prepare_vendored_data(["libreoffice", "libreoffice-help"], tmp_path / "sum", targets=["dz"], task="sum")
    assert headlines["task"] == "sum"
    test = list(read_task(headlines["test"][0], "sum"))
    assert len(test) == sum(r["lang"] == "dz" for r in heads["test"])
    train = list(read_task(headlines["train"], "sum"))
    assert len(train) == sum(r["lang"] == "dz" for r in heads["train"])
