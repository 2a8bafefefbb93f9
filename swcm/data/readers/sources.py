"""Monolingual text and parallel pairs (the `--mono` / `--parallel` source specs): their
records, read lazily, a rank's share of a stream of them with a resumable position, and the
census of their tokens."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (BadRecord, Problems, _check_on_bad_record, _handle, _json_fields, _json_object, _lines, _parsed,
                     check_language, is_language_code, resolve_files)

if TYPE_CHECKING:
    import datasets

MONO_FIELDS = {"text": "text", "lang": "lang"}
PARALLEL_FIELDS = {"src": "src", "tgt": "tgt", "src_lang": "src_lang", "tgt_lang": "tgt_lang"}


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
    import datasets  # ~0.3 s (with pandas and pyarrow) that training, which reads `RecordStream`s, does without

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
