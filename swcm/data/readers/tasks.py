"""Task files (fine-tuning, generation): JSONL records of summarisation, reading comprehension or
translation, with overridable field names, as `TextPair`s."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import NamedTuple

from .common import BadRecord, Problems, _handle, _json_fields, _json_object, _parsed, check_language, resolve_files
from .sources import PARALLEL_FIELDS

TASK_FIELDS = {
    "sum": {"document": "document", "summary": "summary", "lang": "lang"},
    "mrc": {"question": "question", "context": "context", "answer": "answer", "lang": "lang"},
    "mt": PARALLEL_FIELDS,
}
# Reading comprehension joins question and context with the XLM-R pair separator, so that the
# tokenizer reads "<s> question </s></s> context </s>", exactly its own encoding of a text pair.
MRC_SEPARATOR = "</s></s>"


class TextPair(NamedTuple):
    """One seq2seq record: the source and target texts and their languages. Only records read
    for generation (`read_task_records` with require_target / read_source_lang off) may lack
    a target text or source language (None)."""

    source_text: str
    target_text: str | None
    source_lang: str | None
    target_lang: str


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
