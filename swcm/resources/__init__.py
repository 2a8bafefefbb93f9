"""Vendored data, aligned across languages: the Universal Declaration of Human Rights, and
LibreOffice's user-interface strings (see each directory's SOURCE.md)."""

from __future__ import annotations

import gzip
import json
from importlib import resources

UDHR_LANGS = ("zh", "bo", "ug", "kk", "mn", "en")
LIBREOFFICE_LANGS = ("zh", "ug", "kk", "mn", "en")
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

    Every record has English and at least one of zh, ug, kk, mn; valid and test records have all five.
    """
    return _units("libreoffice", split, f"{split}.jsonl.gz")


# name (an experiment's `data:` keyword) -> (languages, reader of one split)
CORPORA = {"udhr": (UDHR_LANGS, udhr), "libreoffice": (LIBREOFFICE_LANGS, libreoffice)}
