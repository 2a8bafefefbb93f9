"""Regenerate swcm/resources/libreoffice/ from Debian 12's LibreOffice UI translations (MPL-2.0).

    mkdir -p /tmp/lo && cd /tmp/lo && apt-get update && apt-get download \\
        libreoffice-l10n-zh-cn libreoffice-l10n-ug libreoffice-l10n-kk libreoffice-l10n-mn
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
import tempfile
from pathlib import Path

# project language code -> (Debian package, LibreOffice resource directory)
LANGUAGES = {
    "zh": ("libreoffice-l10n-zh-cn", "zh_CN"),
    "ug": ("libreoffice-l10n-ug", "ug"),
    "kk": ("libreoffice-l10n-kk", "kk"),
    "mn": ("libreoffice-l10n-mn", "mn"),
}
RESOURCE = Path("usr/lib/libreoffice/program/resource")
OUT = Path(__file__).resolve().parent.parent / "swcm" / "resources" / "libreoffice"
LICENSE = Path("/usr/share/common-licenses/MPL-2.0")  # Debian's copy of the text the packages cite
HELD_OUT = 500  # records in each of valid and test

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
            if en is None or target is None or target == en:  # unusable, or left untranslated
                continue
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
    """Unpack each language's .deb into `work`; return {package: version}."""
    versions = {}
    for package, _ in LANGUAGES.values():
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


def main(debs_dir: str) -> None:
    debs = Path(debs_dir)
    with tempfile.TemporaryDirectory() as work:
        versions = extract(debs, Path(work))
        catalogues = {lang: read_catalogues(Path(work), resource) for lang, (_, resource) in LANGUAGES.items()}
    splits = split(records(catalogues))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, units in splits.items():
        write_jsonl_gz(OUT / f"{name}.jsonl.gz", units)
    (OUT / "LICENSE").write_text(LICENSE.read_text(encoding="utf-8"), encoding="utf-8")
    # SOURCE.md states these; the tests check the vendored files against it.
    print("\n".join(f"{package} {version}" for package, version in versions.items()))
    print(counts_table(splits))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/vendor_libreoffice.py DIR_WITH_DEBS")
    main(sys.argv[1])
