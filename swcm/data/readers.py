"""Reading and validating the user's corpora: monolingual text, parallel pairs and task files.

Source specs (the `--mono` / `--parallel` flags):

    mono      LANG=PATH      plain text, one document per line, all in LANG
              PATH           JSONL, one {"text": ..., "lang": ...} per line
    parallel  SRC-TGT=PATH   TSV, one "source<TAB>target" per line
              PATH           JSONL, one {"src", "tgt", "src_lang", "tgt_lang"} per line

PATH is a file, a glob or a directory (every non-hidden file below it, sorted); files ending
in .gz, .bz2 or .xz are decompressed on the fly. Language codes are free-form BCP-47-like
strings ("bo", "zh-Hans", "kk_Arab"); codes containing "-" can be written with "_" when the
SRC-TGT split would be ambiguous.

Every record is validated; a bad one is a `BadRecord`, a ValueError whose message is one line,
`path:line: problem`. With `on_bad_record="skip"` bad records are dropped and counted in a
`Problems`, which the caller reports. Blank lines of a JSONL file hold no record and are
ignored; a blank line of a plain-text or TSV file is an empty record.

Task files (fine-tuning, generation) are JSONL with overridable field names; `read_task_records`
reads them for both uses (the target optional where generation needs none) and `read_task`
gives the complete `TextPair`s that training needs.
Large corpora are read lazily, line by line; `RecordStream` reads one stream's records, a
rank's share of them (every world_size-th record), with a position (file, byte offset) that
resumes by seeking, which is what pretraining reads through. `streaming_dataset` wraps the same
records in a `datasets` IterableDataset (one shard) for use with `datasets` tools.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import datasets

_LANGUAGE_CODE = re.compile(r"(?:[A-Za-z]{2,3}|[A-Za-z]{5,8})(?:[-_][A-Za-z0-9]{1,8})*")

MONO_FIELDS = {"text": "text", "lang": "lang"}
PARALLEL_FIELDS = {"src": "src", "tgt": "tgt", "src_lang": "src_lang", "tgt_lang": "tgt_lang"}
TASK_FIELDS = {
    "sum": {"document": "document", "summary": "summary", "lang": "lang"},
    "mrc": {"question": "question", "context": "context", "answer": "answer", "lang": "lang"},
    "mt": PARALLEL_FIELDS,
}
ON_BAD_RECORD = ("error", "skip")
# Reading comprehension joins question and context with the XLM-R pair separator, so that the
# tokenizer reads "<s> question </s></s> context </s>", exactly its own encoding of a text pair.
MRC_SEPARATOR = "</s></s>"


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


class TextPair(NamedTuple):
    """One seq2seq record: the source and target texts and their languages. Only records read
    for generation (`read_task_records` with require_target / read_source_lang off) may lack
    a target text or source language (None)."""

    source_text: str
    target_text: str | None
    source_lang: str | None
    target_lang: str


@dataclass(frozen=True)
class Source:
    """Parsed source spec: which files, in which format, with which fixed languages.

    kind: "mono" or "parallel". langs: (LANG,) for plain text, (SRC, TGT) for TSV, None for
    JSONL (the languages are in the records). spec: as the user wrote it, for messages.
    """

    kind: str
    files: tuple[str, ...]
    langs: tuple[str, ...] | None
    spec: str

    @property
    def format(self) -> str:
        if self.langs is None:
            return "jsonl"
        return "text" if self.kind == "mono" else "tsv"


# --- specs and paths ---------------------------------------------------------------------


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


def _split_pair(pair: str, langs: Collection[str] | None) -> tuple[str, str]:
    """"zh-bo" → ("zh", "bo"); codes may contain "-" as long as only one split is plausible."""
    pieces = pair.split("-")
    splits = [("-".join(pieces[:i]), "-".join(pieces[i:])) for i in range(1, len(pieces))]
    splits = [(s, t) for s, t in splits if is_language_code(s) and is_language_code(t)]
    if langs is not None and len(splits) > 1:
        splits = [(s, t) for s, t in splits if s in langs and t in langs] or splits
    if not splits:
        raise ValueError(f'"{pair}" is not a language pair SRC-TGT such as zh-bo')
    if len(splits) > 1:
        options = " or ".join(f"{s.replace('-', '_')}-{t.replace('-', '_')}" for s, t in splits)
        raise ValueError(f'language pair "{pair}" is ambiguous; write it as {options}')
    return splits[0]


def parse_source_spec(spec: str, kind: str, langs: Collection[str] | None = None) -> Source:
    """Parse a `--mono` (kind "mono") or `--parallel` (kind "parallel") spec into a `Source`.

    "LANG=PATH" / "SRC-TGT=PATH" name plain text / TSV in fixed languages; a bare PATH is JSONL.
    The languages are checked against the code pattern and `langs` when given; PATH is resolved
    now. Raises ValueError or FileNotFoundError with a one-line message.
    """
    if kind not in ("mono", "parallel"):
        raise ValueError(f'source kind must be "mono" or "parallel", got "{kind}"')
    head, sep, path = spec.partition("=")
    if not sep or "/" in head or os.sep in head or Path(spec).exists():
        return Source(kind, resolve_files(spec), None, spec)
    try:
        if kind == "mono":
            fixed = (check_language(head, langs),)
        else:
            fixed = _split_pair(head, langs)
            for code in fixed:
                check_language(code, langs)
            if fixed[0] == fixed[1]:
                raise ValueError(f'source and target language are both "{fixed[0]}"')
    except ValueError as err:
        raise ValueError(f"{spec}: {err}") from None
    return Source(kind, resolve_files(path), fixed, spec)


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


def _parse(source: Source, line: str, where: str, langs: Collection[str] | None) -> dict[str, str]:
    if source.format == "text":
        if not line.strip():
            raise BadRecord(where, "empty text", "empty text")
        return {"text": line.strip(), "lang": source.langs[0]}
    if source.format == "tsv":
        columns = line.split("\t")
        if len(columns) != 2:
            raise BadRecord(where, "malformed TSV", f"expected 2 tab-separated columns (source, target), found {len(columns)}")
        for name, column in zip(("source", "target"), columns):
            if not column.strip():
                raise BadRecord(where, "empty text", f"empty {name}")
        return {"src": columns[0].strip(), "tgt": columns[1].strip(), "src_lang": source.langs[0], "tgt_lang": source.langs[1]}
    obj = _json_object(line, where)
    if source.kind == "mono":
        return _json_fields(obj, where, MONO_FIELDS, ("lang",), langs)
    record = _json_fields(obj, where, PARALLEL_FIELDS, ("src_lang", "tgt_lang"), langs)
    if record["src_lang"] == record["tgt_lang"]:
        raise BadRecord(where, "same language", f'src_lang and tgt_lang are both "{record["src_lang"]}"')
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


def read_records(
    source: Source,
    *,
    langs: Collection[str] | None = None,
    on_bad_record: str = "error",
    problems: Problems | None = None,
    files: Sequence[str] | None = None,
) -> Iterator[dict[str, str]]:
    """The valid records of `source`, lazily, in file and line order.

    Mono records are {"text", "lang"}, parallel ones {"src", "tgt", "src_lang", "tgt_lang"}.
    A bad record raises its `BadRecord` (on_bad_record="error") or is counted in `problems`
    and dropped ("skip"). `files` restricts reading to some of the source's files.
    """
    def parse(line: str, where: str) -> dict[str, str]:
        return _parse(source, line, where, langs)

    return _handle(_parsed(files or source.files, parse, source.format == "jsonl"), on_bad_record, problems)


def _generate(files: tuple[tuple[Source, str], ...], langs: tuple[str, ...] | None, on_bad_record: str,
              key: tuple[str, ...] | None) -> Iterator[dict[str, str]]:
    # A tuple, not a list: datasets would split a list-valued gen_kwarg into one shard per file.
    for source, path in files:
        for record in read_records(source, langs=langs, on_bad_record=on_bad_record, files=[path]):
            if key is None or stream_key(record) == key:
                yield record


class RecordStream:
    """One stream's records read lazily from (source, file) pairs, in order, with a position
    that seeks: this rank's share (every `world_size`-th record from the `rank`-th, counting the
    valid records of `key` only, as `datasets.distributed.split_dataset_by_node` shares
    `streaming_dataset`), without reading what comes before it.

    Iterating yields the records from the position to the end of the last file (one epoch).
    The position, `state_dict()`, is a few integers: the file, the byte offset and line number
    after the last record yielded, and how many of the stream's records to pass over before
    the next one this rank takes; `load_state_dict()` seeks straight there, so a resumed run
    starts at once whatever the corpus size. Bad records raise (on_bad_record="error") or are
    dropped ("skip"; count them beforehand with `census`).
    """

    def __init__(self, files: Sequence[tuple[Source, str]], *, langs: Collection[str] | None = None,
                 on_bad_record: str = "error", key: tuple[str, ...] | None = None, rank: int = 0, world_size: int = 1):
        _check_on_bad_record(on_bad_record)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.files, self.langs, self.on_bad_record, self.key = list(files), langs, on_bad_record, key
        self.world_size = world_size
        self.start = {"file": 0, "offset": 0, "line": 0, "skip": rank}
        self.position = dict(self.start)

    def state_dict(self) -> dict[str, int]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(state, dict) or set(state) != set(self.start):
            raise ValueError(f"not a record stream position (keys {', '.join(self.start)}): {state!r:.200}; "
                             "was the checkpoint written by an older swcm?")
        self.position = {name: int(state[name]) for name in self.start}

    def __iter__(self) -> Iterator[dict[str, str]]:
        position = self.position  # a later load_state_dict gives a new dict: this iterator is then stale
        while position["file"] < len(self.files):
            source, path = self.files[position["file"]]
            lines = _lines(path, position["offset"], position["line"])
            for n, (where, line, end) in enumerate(lines, position["line"] + 1):
                if isinstance(line, BadRecord):
                    record = line
                elif source.format == "jsonl" and not line.strip():
                    continue
                else:
                    try:
                        record = _parse(source, line, where, self.langs)
                    except BadRecord as err:
                        record = err
                if isinstance(record, BadRecord):
                    if self.on_bad_record == "error":
                        raise record
                    continue
                if self.key is not None and stream_key(record) != self.key:
                    continue
                if position["skip"]:  # another rank's record
                    position["skip"] -= 1
                    continue
                position.update(offset=end, line=n, skip=self.world_size - 1)
                yield record
            position.update(file=position["file"] + 1, offset=0, line=0)


def stream_key(record: Mapping[str, str]) -> tuple[str, ...]:
    """Which stream a record belongs to: (lang,) for mono, the sorted language pair for parallel."""
    if "text" in record:
        return (record["lang"],)
    return tuple(sorted((record["src_lang"], record["tgt_lang"])))


def streaming_dataset(
    sources: Sequence[Source] | Sequence[tuple[Source, str]],
    *,
    langs: Collection[str] | None = None,
    on_bad_record: str = "error",
    key: tuple[str, ...] | None = None,
) -> datasets.IterableDataset:
    """A streaming `datasets.IterableDataset` over the records of `sources`, in one shard.

    `sources` are `Source`s (all their files) or (source, file) pairs. Records are read lazily
    as `read_records` reads them; bad ones raise or are silently dropped (count them beforehand
    with `census`). `key` keeps one stream's records (see `stream_key`). The dataset works with
    `datasets.distributed.split_dataset_by_node` and `state_dict()` / `load_state_dict()`.
    One shard, so that `split_dataset_by_node` gives rank r every world_size-th record from r:
    shards of whole files would give a rank holding a small file that file over and over.
    """
    _check_on_bad_record(on_bad_record)
    files = tuple(pair for s in sources for pair in ([s] if isinstance(s, tuple) else [(s, f) for f in s.files]))
    return datasets.IterableDataset.from_generator(
        _generate,
        gen_kwargs={"files": files, "langs": tuple(langs) if langs is not None else None,
                    "on_bad_record": on_bad_record, "key": key},
    )


def record_texts(record: Mapping[str, str]) -> tuple[str, ...]:
    """The texts of a record: (text,) for mono, (src, tgt) for parallel."""
    return (record["text"],) if "text" in record else (record["src"], record["tgt"])


def census(
    sources: Sequence[Source], *, langs: Collection[str] | None = None, on_bad_record: str = "error",
    problems: Problems | None = None, measure: Callable[[list[str]], list[int]] | None = None,
    batch_size: int = 256,
) -> dict[tuple[str, ...], dict[tuple[Source, str], int]]:
    """Read every record once: {stream key: {(source, file): amount of valid data}}.

    The amount is the number of records, or with `measure` (texts → their sizes, e.g. token
    counts; called on up to `batch_size` records' texts at a time) the total size of the
    records' texts, both sides of a pair. The amounts drive language-balanced sampling and
    tell each stream which files hold its records. Bad records raise (on_bad_record="error"),
    so a run fails before it starts, or are counted in `problems` ("skip"), so the counts are
    exact.
    """
    found: dict[tuple[str, ...], dict[tuple[Source, str], int]] = {}

    def add(where: tuple[Source, str], batch: list[dict]) -> None:
        if not batch:  # an empty file (measure may not take an empty list: fast tokenizers fail on it)
            return
        texts = [text for record in batch for text in record_texts(record)]
        sizes = iter(measure(texts) if measure is not None else [1] * len(texts))
        for record in batch:
            per_file = found.setdefault(stream_key(record), {})
            amount = sum(next(sizes) for _ in record_texts(record))
            per_file[where] = per_file.get(where, 0) + (amount if measure is not None else 1)

    for source in sources:
        for path in source.files:
            batch: list[dict] = []
            for record in read_records(source, langs=langs, on_bad_record=on_bad_record, problems=problems, files=[path]):
                batch.append(record)
                if len(batch) == batch_size:
                    add((source, path), batch)
                    batch = []
            add((source, path), batch)
    return found


# --- task files --------------------------------------------------------------------------


class TaskRoles(NamedTuple):
    """Which fields of a task's records make up a `TextPair`."""

    source: tuple[str, ...]  # what the encoder reads, joined with the pair separator in this order
    target: str
    source_lang: str
    target_lang: str


TASK_ROLES = {
    "sum": TaskRoles(("document",), "summary", "lang", "lang"),
    "mrc": TaskRoles(("question", "context"), "answer", "lang", "lang"),
    "mt": TaskRoles(("src",), "tgt", "src_lang", "tgt_lang"),
}


class TaskRecord(NamedTuple):
    """One record of a task file: `record` the JSON object as read (every field kept), `where`
    "path:line", `task` "sum", "mrc" or "mt", and `pair` its texts and languages."""

    record: dict
    where: str
    task: str
    pair: TextPair


def _check_task(task: str) -> None:
    if task not in TASK_FIELDS:
        raise ValueError(f'unknown task "{task}"; expected one of {", ".join(TASK_FIELDS)}')


def _task_of(obj: dict, names: Mapping[str, Mapping[str, str]], where: str) -> str:
    """The task whose source fields `obj` holds; BadRecord when none or several do."""
    found = [task for task, roles in TASK_ROLES.items() if all(names[task][f] in obj for f in roles.source)]
    if len(found) == 1:
        return found[0]
    wanted = " or ".join(
        f"{' and '.join(repr(names[t][f]) for f in roles.source)} ({t})" for t, roles in TASK_ROLES.items()
    )
    detail = f"fields of several tasks ({', '.join(found)})" if found else f"no source field: expected {wanted}"
    raise BadRecord(where, "unknown task", f"{detail}; name the task with --task")


def read_task_records(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    task: str | None = None,
    *,
    fields: Mapping[str, str] | None = None,
    tgt_lang: str | None = None,
    langs: Collection[str] | None = None,
    separator: str = MRC_SEPARATOR,
    require_target: bool = True,
    read_source_lang: bool = True,
    on_bad_record: str = "error",
    problems: Problems | None = None,
) -> Iterator[TaskRecord]:
    """The records of task files as `TaskRecord`s, lazily, in file and line order.

    Formats (JSONL): sum {"document", "summary", "lang"}, mrc {"question", "context", "answer",
    "lang"}, mt {"src", "tgt", "src_lang", "tgt_lang"}; `fields` renames fields, e.g.
    {"document": "article"}. Each record's pair is: sum (document, summary, lang, lang); mrc
    (question + separator + context, answer, lang, lang); mt (src, tgt, src_lang, tgt_lang).
    `task=None` takes each record's task from the source fields it holds. `tgt_lang` is the
    target language of records without one (lang for sum and mrc, tgt_lang for mt).
    `require_target=False` lets the target text be missing (the pair's target_text is then
    None); `read_source_lang=False` leaves mt's src_lang unread (source_lang None), for
    generation, which needs neither. Language fields are checked against `langs` when given.
    `separator` defaults to XLM-R's pair separator "</s></s>"; for other tokenizers pass
    `swcm.data.examples.pair_separator(tokenizer)`. Each path is a file, glob or directory.
    Validation and `on_bad_record` / `problems` are as in `read_records`; a bad task, field
    name or `tgt_lang` raises a one-line ValueError at once.
    """
    if task is not None:
        _check_task(task)
        unknown = set(fields or {}) - set(TASK_FIELDS[task])
        if unknown:
            raise ValueError(f"unknown field(s) for task {task}: {', '.join(sorted(unknown))}; "
                             f"expected {', '.join(TASK_FIELDS[task])}")
    else:
        known = {name for names in TASK_FIELDS.values() for name in names}
        unknown = set(fields or {}) - known
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}")
    if tgt_lang is not None:
        check_language(tgt_lang, langs)
    names = {t: {name: (fields or {}).get(name, name) for name in TASK_FIELDS[t]} for t in TASK_FIELDS}
    read = {t: {name: actual for name, actual in names[t].items() if read_source_lang or name != "src_lang"}
            for t in TASK_FIELDS}
    files = [f for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths) for f in resolve_files(str(p))]

    def parse(line: str, where: str) -> TaskRecord:
        obj = _json_object(line, where)
        t = task or _task_of(obj, names, where)
        roles = TASK_ROLES[t]
        r = _json_fields(
            obj, where, read[t], (roles.source_lang, roles.target_lang), langs,
            defaults={roles.target_lang: tgt_lang} if tgt_lang is not None else {},
            optional=() if require_target else (roles.target,),
        )
        pair = TextPair(separator.join(r[f] for f in roles.source), r[roles.target], r.get(roles.source_lang),
                        r[roles.target_lang])
        return TaskRecord(obj, where, t, pair)

    return _handle(_parsed(files, parse, skip_blank=True), on_bad_record, problems)


def read_task(
    paths: str | Sequence[str],
    task: str,
    *,
    fields: Mapping[str, str] | None = None,
    lang: str | None = None,
    langs: Collection[str] | None = None,
    separator: str = MRC_SEPARATOR,
    on_bad_record: str = "error",
    problems: Problems | None = None,
) -> Iterator[TextPair]:
    """The records of fine-tuning files for `task` ("sum", "mrc" or "mt") as complete `TextPair`s.

    Formats, `fields`, `langs`, `separator`, `on_bad_record` and `problems` are as in
    `read_task_records`, which reads them; every field is required. `lang` is used for records
    without a language field (sum, mrc).
    """
    _check_task(task)  # read_task_records takes None to mean "each record's own task"
    # An mt record has two languages: one default would only half fill it, so none applies.
    records = read_task_records(paths, task, fields=fields, tgt_lang=lang if task != "mt" else None, langs=langs,
                                separator=separator, on_bad_record=on_bad_record, problems=problems)
    return (r.pair for r in records)
