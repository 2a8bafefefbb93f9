"""HTML in, HTML out: the text between the tags is translated, the markup kept as it was.

`split_html` cuts a document into markup and text runs; `join_html` puts it back together with
each text run replaced (escaped). Text inside <script>, <style>, <code>, <pre> and <textarea>
is left untranslated, as are runs of whitespace, digits and punctuation.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser

import regex

_KEPT_AS_IS = {"script", "style", "code", "pre", "textarea"}
_LETTER = regex.compile(r"\p{L}")


class _Splitter(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[bool, str]] = []  # (translate?, text)
        self.kept_depth = 0

    def _markup(self, text: str) -> None:
        self.parts.append((False, text))

    def handle_starttag(self, tag, attrs):
        self._markup(self.get_starttag_text())
        if tag in _KEPT_AS_IS:
            self.kept_depth += 1

    def handle_startendtag(self, tag, attrs):
        self._markup(self.get_starttag_text())

    def handle_endtag(self, tag):
        self._markup(f"</{tag}>")
        if tag in _KEPT_AS_IS and self.kept_depth:
            self.kept_depth -= 1

    def handle_data(self, data):
        if self.kept_depth or not _LETTER.search(data):
            self._markup(html.escape(data, quote=False) if not self.kept_depth else data)
            return
        stripped = data.strip()
        start = data.index(stripped)
        self._markup(html.escape(data[:start], quote=False))
        self.parts.append((True, stripped))
        self._markup(html.escape(data[start + len(stripped):], quote=False))

    def handle_comment(self, data):
        self._markup(f"<!--{data}-->")

    def handle_decl(self, decl):
        self._markup(f"<!{decl}>")

    def handle_pi(self, data):
        self._markup(f"<?{data}>")

    def unknown_decl(self, data):
        self._markup(f"<![{data}]>")


def split_html(document: str) -> list[tuple[bool, str]]:
    """The document as (translate, text) runs in order: markup runs as written (False), text
    runs with letters (True) as plain text, entities decoded."""
    splitter = _Splitter()
    splitter.feed(document)
    splitter.close()
    return [part for part in splitter.parts if part[1]]


def join_html(parts: list[tuple[bool, str]], translations: list[str]) -> str:
    """The runs of `split_html` back into a document, the i-th text run replaced by the i-th
    translation (HTML-escaped)."""
    texts = iter(translations)
    return "".join(html.escape(next(texts), quote=False) if translate else text for translate, text in parts)
