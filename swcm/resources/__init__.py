"""Vendored data, aligned across languages: the Universal Declaration of Human Rights,
LibreOffice's user-interface strings, and LibreOffice's help pages with a headline-generation
task made from them (see each directory's SOURCE.md)."""

from __future__ import annotations

import gzip
import json
from importlib import resources

UDHR_LANGS = ("zh", "bo", "ug", "kk", "mn", "en")
LIBREOFFICE_LANGS = ("zh", "ug", "kk", "mn", "dz", "en")
LIBREOFFICE_HELP_LANGS = ("zh", "dz", "en")
SPLITS = ("train", "valid", "test")


def _units(corpus: str, split: str, file_name: str) -> list[dict]:
    """The JSON lines of one vendored file (gzip-compressed when its name ends in .gz)."""
    if split not in SPLITS:
        raise ValueError(f"unknown {corpus} split {split!r}; expected one of {', '.join(SPLITS)}")
    data = resources.files(__package__).joinpath(corpus, file_name).read_bytes()
    if file_name.endswith(".gz"):
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def udhr(split: str) -> list[dict]:
    """The aligned units of one split: [{"id": ..., "text": {lang: text}}, ...], every language present."""
    return _units("udhr", split, f"{split}.jsonl")


def libreoffice(split: str) -> list[dict]:
    """The LibreOffice UI strings of one split: [{"id": ..., "text": {"en": ..., lang: ...}}, ...].

    Every record has English and at least one of zh, ug, kk, mn, dz; valid and test records have all six.
    """
    return _units("libreoffice", split, f"{split}.jsonl.gz")


def libreoffice_help(split: str) -> list[dict]:
    """The headings and paragraphs of LibreOffice's help pages in one split, aligned by page and id:
    [{"id", "page", "block", "kind": "heading"|"paragraph", "text": {"en": ..., "zh"?: ..., "dz"?: ...}}].

    Every record has English and zh or dz (dz only where it is Tibetan script); no page is in two splits.
    """
    return _units("libreoffice-help", split, f"{split}.jsonl.gz")


def libreoffice_headlines(split: str) -> list[dict]:
    """Headline generation from the help pages, in swcm's summarisation format: a section's
    opening text -> its heading, [{"id", "page", "document", "summary", "lang": "zh"|"dz"}]."""
    return _units("libreoffice-help", split, f"headlines-{split}.jsonl.gz")


# name (an experiment's `data:` keyword) -> (languages, reader of one split)
CORPORA = {"udhr": (UDHR_LANGS, udhr), "libreoffice": (LIBREOFFICE_LANGS, libreoffice),
           "libreoffice-help": (LIBREOFFICE_HELP_LANGS, libreoffice_help)}
