"""The language census of a pretraining run, computed once and kept beside the run.

The census (`swcm.data.readers.census`: every record read and tokenised once, for the
per-language token counts that language-balanced sampling needs) costs one tokenisation pass
over the corpus: minutes to hours on gigabytes. Its result is kept in a JSON file
(OUT/census.json in `swcm pretrain`) keyed by everything it depends on:

- the data: every source's kind, fixed languages and files, each file by absolute path, size
  and modification time; the allowed languages and `on_bad_record`;
- the tokenizer: a hash of its whole definition (vocabulary, normaliser, added tokens such as
  the language tags).

A later start over the same files with the same tokenizer (`--resume`, or a new run into the
same directory) reads the file instead of the corpus; any change recomputes it. The file also
holds the bad records skipped, so that their report is the same either way. `PretrainingStream`
writes it (`write_census`) only once the data have passed its checks, so a refused run leaves
nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .readers import Problems, Source

CENSUS_FILE = "census.json"
_VERSION = 1


def data_fingerprint(sources: Mapping[str, Sequence[Source]], langs: Collection[str] | None,
                     on_bad_record: str) -> dict:
    """What the census reads, as plain values: {objective: [source: kind, languages, files with
    size and modification time]}, the allowed languages and `on_bad_record`."""
    def files(source: Source) -> list:
        return [[os.path.abspath(f), (st := os.stat(f)).st_size, st.st_mtime_ns] for f in source.files]

    return {
        "sources": {o: [{"kind": s.kind, "langs": s.langs and list(s.langs), "files": files(s)} for s in found]
                    for o, found in sources.items()},
        "langs": sorted(langs) if langs is not None else None,
        "on_bad_record": on_bad_record,
    }


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides how `tokenizer` cuts text: a fast tokenizer's whole
    serialised definition, else its class and vocabulary (added tokens included)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{definition}".encode()).hexdigest()


def _read(path: Path, data: dict) -> dict | None:
    """The cache file's content when it is for `data`, else None."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("version") != _VERSION or cached.get("data") != data:
        return None
    return cached


def cached_languages(path: str | os.PathLike, sources: Mapping[str, Sequence[Source]],
                     langs: Collection[str] | None, on_bad_record: str) -> list[str] | None:
    """Every language of the data, sorted, from the census file at `path` when it was computed
    over these very files (whatever the tokenizer); None when there is none."""
    cached = _read(Path(path), data_fingerprint(sources, langs, on_bad_record))
    if cached is None:
        return None
    return sorted({lang for entry in cached["census"] for lang in entry[1]})


def census_key(sources: Mapping[str, Sequence[Source]], tokenizer: PreTrainedTokenizerBase,
               langs: Collection[str] | None, on_bad_record: str) -> dict:
    """What a census depends on: {"data": `data_fingerprint`, "tokenizer": `tokenizer_fingerprint`}.
    Take it before reading the corpus: a file changed meanwhile then shows on the next start."""
    return {"data": data_fingerprint(sources, langs, on_bad_record), "tokenizer": tokenizer_fingerprint(tokenizer)}


def read_census(path: str | os.PathLike, key: dict, sources: Mapping[str, Sequence[Source]],
                problems: Problems | None = None) -> dict | None:
    """The census ({objective: {stream key: {(source, file): tokens}}}) kept at `path` for `key`
    (`census_key`) over `sources`, its skipped bad records added to `problems`; None when the
    file is missing or for another key."""
    cached = _read(Path(path), key["data"])
    if cached is None or cached["tokenizer"] != key["tokenizer"]:
        return None
    found: dict = {o: {} for o in sources}
    for objective, stream, index, file, amount in cached["census"]:
        found[objective].setdefault(tuple(stream), {})[sources[objective][index], file] = amount
    if problems is not None:
        for kind, count in cached["problems"]["counts"].items():
            problems.counts[kind] += count
            problems.first.setdefault(kind, cached["problems"]["first"][kind])
    return found


def write_census(path: str | os.PathLike, key: dict, sources: Mapping[str, Sequence[Source]], found: dict,
                 problems: Problems) -> None:
    """Keep `found` (a census over `sources`, with the bad records it skipped in `problems`) at
    `path` for `key`, atomically: a reader sees the old file or the new one."""
    index = {(o, s): i for o, listed in sources.items() for i, s in enumerate(listed)}
    entries = [[o, list(stream), index[o, source], file, amount]
               for o, streams in found.items() for stream, files in streams.items()
               for (source, file), amount in files.items()]
    record = {"version": _VERSION, **key, "census": entries,
              "problems": {"counts": dict(problems.counts), "first": problems.first}}
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record), encoding="utf-8")
    os.replace(temporary, path)
