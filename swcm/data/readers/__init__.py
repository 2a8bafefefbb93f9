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

The package reads by kind of file: `sources` (monolingual text and parallel pairs, their
streams and census), `tasks` (task files); `common` holds what both share.
"""

from .common import (
    ON_BAD_RECORD, is_language_code, check_language, BadRecord, Problems, resolve_files,
)
from .sources import (
    MONO_FIELDS, PARALLEL_FIELDS, Source, parse_source_spec, read_records, RecordStream, stream_key,
    streaming_dataset, record_texts, census,
)
from .tasks import (
    TASK_FIELDS, MRC_SEPARATOR, TextPair, TaskRoles, TASK_ROLES, TaskRecord, read_task_records, read_task,
)

__all__ = [
    "ON_BAD_RECORD", "is_language_code", "check_language", "BadRecord", "Problems", "resolve_files", "MONO_FIELDS",
    "PARALLEL_FIELDS", "Source", "parse_source_spec", "read_records", "RecordStream", "stream_key",
    "streaming_dataset", "record_texts", "census", "TASK_FIELDS", "MRC_SEPARATOR", "TextPair", "TaskRoles",
    "TASK_ROLES", "TaskRecord", "read_task_records", "read_task",
]
