"""Vendored data: the Universal Declaration of Human Rights, aligned across languages."""

from __future__ import annotations

import json
from importlib import resources

UDHR_LANGS = ("zh", "bo", "ug", "kk", "mn", "en")
SPLITS = ("train", "valid", "test")


def udhr(split: str) -> list[dict]:
    """The aligned units of one split: [{"id": ..., "text": {lang: text}}, ...]."""
    if split not in SPLITS:
        raise ValueError(f"unknown UDHR split {split!r}; expected one of {', '.join(SPLITS)}")
    text = resources.files(__package__).joinpath("udhr", f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
