"""What both kinds of file share: language codes, bad records and their count, paths, lines
(decompressed, with their place for messages) and JSON fields, checked."""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path

_LANGUAGE_CODE = re.compile(r"(?:[A-Za-z]{2,3}|[A-Za-z]{5,8})(?:[-_][A-Za-z0-9]{1,8})*")

ON_BAD_RECORD = ("error", "skip")


def is_language_code(code: str) -> bool:
    """Whether `code` looks like a language code: "bo", "zh-Hans", "kk_Arab", "yue", "zh-Hant-TW"."""
    return isinstance(code, str) and _LANGUAGE_CODE.fullmatch(code) is not None


def check_language(code: str, langs: Collection[str] | None = None) -> str:
    """Return `code`, or raise a one-line ValueError when it is malformed or not in `langs`."""
    if not is_language_code(code):
        raise ValueError(f'bad language code "{code}"')
    if langs is not None and code not in langs:
        raise ValueError(f'language "{code}" is not in the allowed languages ({", ".join(langs)})')
    return code


class BadRecord(ValueError):
    """A malformed input record. str() is one line, `path:line: problem`; `kind` names the problem."""

    def __init__(self, where: str, kind: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.where, self.kind = where, kind


class Problems:
    """Skipped bad records: a count per kind of problem and where each kind was first seen."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, err: BadRecord) -> None:
        self.counts[err.kind] += 1
        self.first.setdefault(err.kind, err.where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. "skipped 3 bad records: 2 empty text (first at a.txt:4), 1 malformed JSON (…)"."""
        if not self.counts:
            return "no bad records"
        parts = [f"{n} {kind} (first at {self.first[kind]})" for kind, n in self.counts.most_common()]
        return f"skipped {self.total} bad record{'s' * (self.total != 1)}: " + ", ".join(parts)


def resolve_files(path: str) -> tuple[str, ...]:
    """The files PATH names: itself, a glob's matches, or every non-hidden file below a directory."""
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"{path}: no files match")
        return tuple(files)
    p = Path(path)
    if p.is_dir():
        files = sorted(
            str(f) for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise FileNotFoundError(f"{path}: directory holds no files")
        return tuple(files)
    if p.is_file():
        return (path,)
    raise FileNotFoundError(f"{path}: no such file or directory")


# --- records -----------------------------------------------------------------------------


def _open(path: str):
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(Path(path).suffix, open)
    return opener(path, "rb")


def _lines(path: str, offset: int = 0, line_number: int = 0) -> Iterator[tuple[str, str | BadRecord, int]]:
    """(where, line, end) for every line of `path` after byte `offset` (the start of line
    `line_number` + 1), without its line break; a BadRecord for bad UTF-8. `end` is the byte
    offset just after the line (in the decompressed text for compressed files), where reading
    can start again."""
    with _open(path) as f:
        if offset:
            f.seek(offset)  # compressed files decompress up to it, but nothing before it is parsed
        for n, raw in enumerate(f, line_number + 1):
            offset += len(raw)
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, BadRecord(
                    where, "not UTF-8", f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)"
                ), offset
                continue
            if n == 1:
                line = line.removeprefix("\ufeff")
            yield where, line.rstrip("\r\n"), offset


def _json_object(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadRecord(where, "malformed JSON", f"malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise BadRecord(where, "malformed JSON", f"expected a JSON object, found {type(obj).__name__}")
    return obj


def _text_field(obj: dict, name: str, where: str) -> str:
    if name not in obj:
        raise BadRecord(where, "missing field", f'missing field "{name}"')
    value = obj[name]
    if not isinstance(value, str):
        raise BadRecord(where, "wrong type", f'field "{name}" must be a string, found {type(value).__name__}')
    if not value.strip():
        raise BadRecord(where, "empty text", f'empty "{name}"')
    return value.strip()


def _language(code: str, where: str, langs: Collection[str] | None, field: str | None = None) -> str:
    try:
        return check_language(code, langs)
    except ValueError as err:
        kind = "bad language code" if not is_language_code(code) else "language not allowed"
        raise BadRecord(where, kind, f'{err} in field "{field}"' if field else str(err)) from None


def _json_fields(obj: dict, where: str, fields: Mapping[str, str], lang_fields: Collection[str],
                 langs: Collection[str] | None, defaults: Mapping[str, str] = {},
                 optional: Collection[str] = ()) -> dict[str, str | None]:
    """The named fields of one JSON record, {canonical name: value}; language fields checked.

    A missing field takes its value from `defaults`, or is None when `optional` names it.
    """
    record = {}
    for name, actual in fields.items():
        if actual not in obj and (name in defaults or name in optional):
            record[name] = defaults.get(name)
            continue
        record[name] = _text_field(obj, actual, where)
        if name in lang_fields:
            _language(record[name], where, langs, actual)
    return record


def _parsed(files: Iterable[str], parse: Callable[[str, str], object], skip_blank: bool) -> Iterator:
    """parse(line, where) for every line of `files`, or the line's BadRecord; blank lines optional."""
    for path in files:
        for where, line, _ in _lines(path):
            if isinstance(line, BadRecord):
                yield line
            elif not (skip_blank and not line.strip()):
                try:
                    yield parse(line, where)
                except BadRecord as err:
                    yield err


def _check_on_bad_record(on_bad_record: str) -> None:
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f'on_bad_record must be "error" or "skip", got "{on_bad_record}"')


def _handle(items: Iterable[dict | BadRecord], on_bad_record: str, problems: Problems | None) -> Iterator:
    _check_on_bad_record(on_bad_record)
    for item in items:
        if isinstance(item, BadRecord):
            if on_bad_record == "error":
                raise item
            if problems is not None:
                problems.add(item)
        else:
            yield item
