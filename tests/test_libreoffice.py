"""The vendored LibreOffice UI strings: clean, aligned, split without overlap, as SOURCE.md states,
and ready for the experiment runner."""

import importlib.util
import re
from importlib import resources
from pathlib import Path

import pytest

from swcm.data.readers import parse_source_spec, read_records, read_task
from swcm.experiments import prepare_vendored_data
from swcm.resources import LIBREOFFICE_LANGS, SPLITS, libreoffice

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


def _stated_counts():
    """{split: {column: n}} from the table in SOURCE.md."""
    text = resources.files("swcm.resources").joinpath("libreoffice", "SOURCE.md").read_text(encoding="utf-8")
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
    assert len(list(read_task(data["valid"], "mt"))) == 4 * len(splits["valid"])
    for path in data["test"]:
        test = list(read_task(path, "mt"))
        assert len(test) == len(splits["test"]) and len({p.target_lang for p in test}) == 1
        assert [p.source_text for p in test] == [u["text"]["zh"] for u in splits["test"]]
