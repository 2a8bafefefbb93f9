"""Regenerate swcm/resources/libreoffice/ (UI strings) and swcm/resources/libreoffice-help/ (help
pages and a headline-generation task) from Debian 12's LibreOffice translations (MPL-2.0).

    mkdir -p /tmp/lo && cd /tmp/lo && apt-get update && apt-get download \\
        libreoffice-l10n-zh-cn libreoffice-l10n-ug libreoffice-l10n-kk libreoffice-l10n-mn libreoffice-l10n-dz \\
        libreoffice-help-zh-cn libreoffice-help-dz libreoffice-help-en-us
    python tools/vendor_libreoffice.py /tmp/lo

Every package holds gettext catalogues `usr/lib/libreoffice/program/resource/<lang>/LC_MESSAGES/*.mo`
whose msgids are the English source strings behind a context prefix (`context\\x04msgid`), so the
four languages align to English and to each other through (catalogue, context, msgid). The
strings are cleaned (accelerator markers, markup, placeholders, untranslated and empty entries),
merged into one record per English string, and split train / valid / test by English string,
with near-identical English strings and shared translations kept inside one split.
"""

from __future__ import annotations

import collections
import gettext
import gzip
import hashlib
import json
import re
import subprocess
import sys
import html.parser
import tempfile
from pathlib import Path

from swcm.script_tokens import letter_scripts

# project language code -> (Debian package, LibreOffice resource directory)
LANGUAGES = {
    "zh": ("libreoffice-l10n-zh-cn", "zh_CN"),
    "ug": ("libreoffice-l10n-ug", "ug"),
    "kk": ("libreoffice-l10n-kk", "kk"),
    "mn": ("libreoffice-l10n-mn", "mn"),
    "dz": ("libreoffice-l10n-dz", "dz"),  # Dzongkha, written in the Tibetan script
}
# A translation counts only when most of its letters are in the language's script: the dz help
# leaves many paragraphs in English, and a few UI strings too.
SCRIPTS = {"dz": "Tibetan"}
RESOURCE = Path("usr/lib/libreoffice/program/resource")
OUT = Path(__file__).resolve().parent.parent / "swcm" / "resources" / "libreoffice"
LICENSE = Path("/usr/share/common-licenses/MPL-2.0")  # Debian's copy of the text the packages cite
HELD_OUT = 500  # records in each of valid and test
SPLITS = ("train", "valid", "test")

# Accelerator groups the translators append, "保存(~S)", "قوش(_A)"; a space before them goes too.
ACCELERATOR_GROUP = re.compile(r"\s*\([~_]\w\)")
# An in-word mnemonic marks the letter after it: "O~ffset", "_Add", "Ба_с тарту".
MNEMONIC = re.compile(r"[~_](?=\w)")
# Placeholders filled in at run time; an entry holding one is dropped (see SOURCE.md).
PLACEHOLDER = re.compile(r"%\w+|%\{\w+\}|\$|#\d|#\w+#|\{\w*\}")  # %1 %s %NAME %{link} $(ARG1) $1 $name$ #1 #lib# {}
PRODUCT_NAME = ("%PRODUCTNAME", "LibreOffice")  # the one placeholder that is a fixed name
MARKUP = re.compile(r"<[^<>]*>")
LETTER = re.compile(r"[^\W\d_]")


def clean(text: str) -> str | None:
    """A UI string without accelerator markers and with its whitespace collapsed, or None when it
    holds something a translation model should not learn: markup, a placeholder, a stray marker,
    or no letter at all."""
    text = text.replace(*PRODUCT_NAME)
    text = MNEMONIC.sub("", ACCELERATOR_GROUP.sub("", text))
    text = " ".join(text.split())
    if MARKUP.search(text) or PLACEHOLDER.search(text) or "~" in text or "_" in text:
        return None
    return text if LETTER.search(text) else None


def in_script(text: str, lang: str) -> bool:
    """Whether most letters of `text` are in `lang`'s script (always, for a language not in SCRIPTS)."""
    if lang not in SCRIPTS:
        return True
    counts = letter_scripts(text)
    return counts[SCRIPTS[lang]] * 2 > sum(counts.values())


def read_catalogues(root: Path, resource_dir: str) -> dict[tuple[str, str], str]:
    """{(catalogue, context\\x04msgid): translation} of one language; plurals give their singular."""
    entries = {}
    for mo in sorted((root / RESOURCE / resource_dir / "LC_MESSAGES").glob("*.mo")):
        with open(mo, "rb") as f:
            # gettext parses .mo files but offers no public way to list a catalogue's entries.
            catalog = gettext.GNUTranslations(f)._catalog
        for key, translation in catalog.items():
            if isinstance(key, tuple):  # (msgid, plural index)
                key, index = key
                if index != 0:
                    continue
            if key:  # "" is the header
                entries[(mo.stem, key)] = translation
    if not entries:
        raise SystemExit(f"{root / RESOURCE / resource_dir}: no .mo catalogues found")
    return entries


def records(catalogues: dict[str, dict[tuple[str, str], str]]) -> list[dict]:
    """One record per cleaned English string: {"id", "text": {"en", and each language that translates it}}.

    An English string used in several contexts may be translated differently in each; each
    language keeps its most frequent translation (ties: the first context in sorted order).
    """
    votes: dict[str, dict[str, collections.Counter]] = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    for lang, entries in catalogues.items():
        for (_, key), translation in sorted(entries.items()):
            en = clean(key.split("\x04", 1)[-1])
            target = clean(translation)
            if en is None or target is None or target == en or not in_script(target, lang):
                continue  # unusable, or left untranslated
            votes[en][lang][target] += 1
    out = []
    for en in sorted(votes):
        text = {"en": en}
        text.update({lang: votes[en][lang].most_common(1)[0][0] for lang in catalogues if votes[en][lang]})
        out.append({"id": "lo-" + hashlib.sha256(en.encode("utf-8")).hexdigest()[:12], "text": text})
    return out


def _normalised(text: str) -> str:
    """The key under which "Page number:", "Page Number" and "page number…" are one string."""
    return text.casefold().rstrip(" .:…!?").strip()


def leakage_groups(units: list[dict]) -> list[list[int]]:
    """Indices of `units` grouped so that two records sharing a normalised text in any language
    fall in one group (union-find); a held-out record then shares no text with training."""
    parent = list(range(len(units)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, unit in enumerate(units):
        for lang, text in unit["text"].items():
            j = first.setdefault((lang, _normalised(text)), i)
            parent[find(i)] = find(j)
    groups = collections.defaultdict(list)
    for i in range(len(units)):
        groups[find(i)].append(i)
    return list(groups.values())


def split(units: list[dict], held_out: int = HELD_OUT) -> dict[str, list[dict]]:
    """{"train", "valid", "test"}: test and valid take whole groups (see leakage_groups) whose
    records are translated into every language, in the order of a hash of their English text,
    until each has `held_out` records; train takes the rest."""
    langs = {"en", *LANGUAGES}
    groups = leakage_groups(units)
    eligible = [g for g in groups if all(set(units[i]["text"]) == langs for i in g)]

    def order(group: list[int]) -> str:
        return min(hashlib.sha256(units[i]["text"]["en"].encode("utf-8")).hexdigest() for i in group)

    chosen: dict[str, list[int]] = {"test": [], "valid": []}
    for group in sorted(eligible, key=order):
        name = next((n for n in ("test", "valid") if len(chosen[n]) < held_out), None)
        if name is None:
            break
        chosen[name].extend(group)
    held = {i for indices in chosen.values() for i in indices}
    return {
        "train": [u for i, u in enumerate(units) if i not in held],
        "valid": [units[i] for i in sorted(chosen["valid"])],
        "test": [units[i] for i in sorted(chosen["test"])],
    }


def extract(debs: Path, work: Path) -> dict[str, str]:
    """Unpack each package's .deb (UI strings and help) into `work`; return {package: version}."""
    versions = {}
    for package, _ in [*LANGUAGES.values(), *HELP_LANGUAGES.values()]:
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise SystemExit(f"{debs}: no {package}_*.deb (apt-get download {package})")
        deb = found[-1]
        versions[package] = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                           capture_output=True, text=True).stdout.strip()
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work)], check=True)
    return versions


def write_jsonl_gz(path: Path, units: list[dict]) -> None:
    """Byte-for-byte reproducible gzip (no file name, no time stamp in the header)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        for unit in units:
            f.write((json.dumps(unit, ensure_ascii=False) + "\n").encode("utf-8"))


def counts_table(splits: dict[str, list[dict]]) -> str:
    """The Markdown table of SOURCE.md: per split, records, records per language, pairs zh–x,
    and records in all five languages."""
    pairs = [f"zh-{lang}" for lang in LANGUAGES if lang != "zh"]
    columns = ["records", "en", *LANGUAGES, *pairs, "all"]
    lines = ["| split | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, units in splits.items():
        has = [set(u["text"]) for u in units]
        row = [len(units)] + [sum(lang in h for h in has) for lang in ("en", *LANGUAGES)]
        row += [sum({"zh", pair[3:]} <= h for h in has) for pair in pairs]
        row.append(sum(len(h) == len(LANGUAGES) + 1 for h in has))
        lines.append(f"| {name} | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines)


# --- help pages ----------------------------------------------------------------------------

# project language code -> (Debian package, help directory under usr/share/libreoffice/help)
HELP_LANGUAGES = {
    "en": ("libreoffice-help-en-us", "en-US"),
    "zh": ("libreoffice-help-zh-cn", "zh-CN"),
    "dz": ("libreoffice-help-dz", "dz"),
}
HELP = Path("usr/share/libreoffice/help")
HELP_OUT = OUT.parent / "libreoffice-help"
BLOCK_ID = re.compile(r"(hd|par)_id\w+")  # the ids that name the same heading or paragraph in every language
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
HELP_HELD_OUT = 10  # one page in 10 goes to test, one to valid (by a hash of its path)
DOCUMENT_CHARS = 600  # a headline's document: the section's paragraphs up to about this length


class HelpBlocks(html.parser.HTMLParser):
    """The headings and paragraphs of a help page that carry a help id, in page order:
    `blocks` is [(tag, id, text)], the text with its whitespace collapsed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str, str]] = []
        self._open: list | None = None  # [tag, id, pieces, depth] of the block being read

    def handle_starttag(self, tag, attrs):
        if self._open is not None:
            self._open[3] += tag == self._open[0]
            return
        block_id = dict(attrs).get("id") or ""
        if (tag == "p" or tag in HEADINGS) and BLOCK_ID.fullmatch(block_id):
            self._open = [tag, block_id, [], 0]

    def handle_endtag(self, tag):
        if self._open is None or tag != self._open[0]:
            return
        if self._open[3]:
            self._open[3] -= 1
            return
        tag, block_id, pieces, _ = self._open
        self._open = None
        text = " ".join("".join(pieces).split())
        if text:
            self.blocks.append((tag, block_id, text))

    def handle_data(self, data):
        if self._open is not None:
            self._open[2].append(data)


def read_help_page(path: Path) -> list[tuple[str, str, str]]:
    """[(tag, id, text)] of one page; a repeated id keeps its first block."""
    parser = HelpBlocks()
    parser.feed(path.read_text(encoding="utf-8"))
    seen, blocks = set(), []
    for block in parser.blocks:
        if block[1] not in seen:
            seen.add(block[1])
            blocks.append(block)
    return blocks


def help_translation(lang: str, text: str, english: str | None) -> bool:
    """Whether `text` is a usable translation: not the English left in place, in the script."""
    return text != english and in_script(text, lang)


def help_pages(root: Path) -> dict[str, dict[str, list[tuple[str, str, str]]]]:
    """{page path: {lang: blocks}} of every page the English help has."""
    base = root / HELP
    english_dir = base / HELP_LANGUAGES["en"][1]
    pages = {}
    for page in sorted(english_dir.rglob("*.html")):
        rel = page.relative_to(english_dir).as_posix()
        if not rel.startswith("text/"):
            continue
        pages[rel] = {lang: read_help_page(base / directory / rel) for lang, (_, directory) in HELP_LANGUAGES.items()
                      if (base / directory / rel).is_file()}
    if not pages:
        raise SystemExit(f"{english_dir}: no help pages found")
    return pages


def help_records(page: str, langs: dict[str, list[tuple[str, str, str]]]) -> list[dict]:
    """One record per English heading or paragraph of a page that zh or dz translates:
    {"id", "page", "block", "kind", "text": {"en", "zh"?, "dz"?}}."""
    english = langs["en"]
    by_id = {lang: {block_id: text for _, block_id, text in blocks} for lang, blocks in langs.items()}
    out = []
    for tag, block_id, en in english:
        text = {"en": en}
        for lang in ("zh", "dz"):
            translated = by_id.get(lang, {}).get(block_id)
            if translated and help_translation(lang, translated, en):
                text[lang] = translated
        if len(text) > 1:
            key = f"{page}#{block_id}"
            out.append({"id": "loh-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], "page": page,
                        "block": block_id, "kind": "heading" if tag in HEADINGS else "paragraph", "text": text})
    return out


def headlines(page: str, langs: dict[str, list[tuple[str, str, str]]]) -> list[dict]:
    """Headline generation in the Gigaword form: a section's opening text -> its heading.

    A section is a heading with the paragraphs that follow it up to the next heading. For zh and
    dz, a section gives a record when its heading and every one of its paragraphs are translated
    (in the script, not the English left in place); the document is its paragraphs joined, cut
    after the paragraph that passes DOCUMENT_CHARS. {"id", "page", "document", "summary", "lang"}.
    """
    english = {block_id: text for _, block_id, text in langs["en"]}
    out = []
    for lang in ("zh", "dz"):
        sections: list[tuple[str, str, list[str]]] = []  # (heading id, heading, paragraphs)
        usable = True
        for tag, block_id, text in langs.get(lang, []):
            ok = help_translation(lang, text, english.get(block_id))
            if tag in HEADINGS:
                sections.append((block_id, text if ok else "", []))
            elif sections:
                sections[-1][2].append(text if ok else "")
        for block_id, heading, paragraphs in sections:
            if not heading or not paragraphs or not all(paragraphs):
                continue
            document = []
            for paragraph in paragraphs:
                document.append(paragraph)
                if sum(len(p) for p in document) >= DOCUMENT_CHARS:
                    break
            document = " ".join(document)
            if heading == document:
                continue
            key = f"{lang}:{page}#{block_id}"
            out.append({"id": "loh-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], "page": page,
                        "document": document, "summary": heading, "lang": lang})
    return out


def help_split_of(page: str) -> str:
    """test, valid or train, by a hash of the page path: a page is never in two splits."""
    slot = int(hashlib.sha256(page.encode("utf-8")).hexdigest(), 16) % HELP_HELD_OUT
    return {0: "test", 1: "valid"}.get(slot, "train")


def split_help(pages: dict[str, dict]) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(paragraph records, headline records), each {"train", "valid", "test"}, split by page.

    Help pages share boilerplate ("Choose Format - Cells"): a held-out paragraph record whose
    zh or dz text is in train, and a held-out headline record whose document or
    (heading, language) pair is in train, are dropped; within a split, a repeated record
    (the same texts, or the same document and heading) is kept once.
    """
    blocks = {name: [] for name in SPLITS}
    heads = {name: [] for name in SPLITS}
    for page, langs in pages.items():
        name = help_split_of(page)
        blocks[name].extend(help_records(page, langs))
        heads[name].extend(headlines(page, langs))
    train_texts = {(lang, t) for r in blocks["train"] for lang, t in r["text"].items() if lang != "en"}
    train_docs = {(r["lang"], r["document"]) for r in heads["train"]}
    train_heads = {(r["lang"], r["summary"]) for r in heads["train"]}
    for name in ("valid", "test"):
        blocks[name] = [r for r in blocks[name]
                        if not any((lang, t) in train_texts for lang, t in r["text"].items() if lang != "en")]
        heads[name] = [r for r in heads[name]
                       if (r["lang"], r["document"]) not in train_docs and (r["lang"], r["summary"]) not in train_heads]
    for name in SPLITS:
        blocks[name] = _unique(blocks[name], lambda r: tuple(sorted(r["text"].items())))
        heads[name] = _unique(heads[name], lambda r: (r["lang"], r["document"], r["summary"]))
    return blocks, heads


def _unique(records: list[dict], key) -> list[dict]:
    seen, out = set(), []
    for record in records:
        k = key(record)
        if k not in seen:
            seen.add(k)
            out.append(record)
    return out


def help_counts_table(blocks: dict[str, list[dict]], heads: dict[str, list[dict]]) -> str:
    """SOURCE.md's table of the help corpus: pages, records and their languages, headlines per language."""
    columns = ["pages", "records", "zh", "dz", "zh-dz", "dz characters", "headlines zh", "headlines dz"]
    lines = ["| split | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in SPLITS:
        records = blocks[name]
        row = [len({r["page"] for r in records}), len(records), sum("zh" in r["text"] for r in records),
               sum("dz" in r["text"] for r in records), sum({"zh", "dz"} <= set(r["text"]) for r in records),
               sum(len(r["text"].get("dz", "")) for r in records),
               sum(r["lang"] == "zh" for r in heads[name]), sum(r["lang"] == "dz" for r in heads[name])]
        lines.append(f"| {name} | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines)


def main(debs_dir: str) -> None:
    debs = Path(debs_dir)
    with tempfile.TemporaryDirectory() as work:
        versions = extract(debs, Path(work))
        catalogues = {lang: read_catalogues(Path(work), resource) for lang, (_, resource) in LANGUAGES.items()}
        blocks, heads = split_help(help_pages(Path(work)))
    splits = split(records(catalogues))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, units in splits.items():
        write_jsonl_gz(OUT / f"{name}.jsonl.gz", units)
    (OUT / "LICENSE").write_text(LICENSE.read_text(encoding="utf-8"), encoding="utf-8")
    HELP_OUT.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_jsonl_gz(HELP_OUT / f"{name}.jsonl.gz", blocks[name])
        write_jsonl_gz(HELP_OUT / f"headlines-{name}.jsonl.gz", heads[name])
    (HELP_OUT / "LICENSE").write_text(LICENSE.read_text(encoding="utf-8"), encoding="utf-8")
    # SOURCE.md states these; the tests check the vendored files against it.
    print("\n".join(f"{package} {version}" for package, version in versions.items()))
    print(counts_table(splits))
    print(help_counts_table(blocks, heads))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/vendor_libreoffice.py DIR_WITH_DEBS")
    main(sys.argv[1])
