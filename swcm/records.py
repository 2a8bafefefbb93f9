"""Measurements as records: one JSON line per run, stamped with what produced it.

Benchmarks and the demo append a record — the code's commit, the date, the CPU's model name,
the precision, the package versions and the figures — to `benchmarks/records/NAME.jsonl` in
the swcm checkout they run from (or to `$SWCM_RECORDS_DIR/NAME.jsonl`). Docs render the newest
record of each kind; the file keeps the history.

    from swcm.records import append_record
    append_record("train", {"steps_per_s": 2.1, "speedup": 1.6}, precision="bf16")
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from swcm.precision import cpu_name

PACKAGES = ("swcm", "torch", "transformers", "accelerate")


def checkout_root() -> Path | None:
    """The git checkout swcm runs from (an editable install or a clone on the path); None otherwise."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / ".git").exists() and (root / "pyproject.toml").is_file() else None


def records_dir() -> Path | None:
    """Where records go: $SWCM_RECORDS_DIR, else `benchmarks/records` of the checkout, else None."""
    if os.environ.get("SWCM_RECORDS_DIR"):
        return Path(os.environ["SWCM_RECORDS_DIR"])
    root = checkout_root()
    return root / "benchmarks" / "records" if root is not None else None


def _git(*args: str) -> str | None:
    root = checkout_root()
    if root is None:
        return None
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def stamp(precision: str | None = None) -> dict:
    """What produced a measurement: commit (with `dirty` when the work tree had changes), UTC
    date, CPU model name and core count, precision, Python and package versions."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "commit": commit, "dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(), "cores": os.cpu_count(), "precision": precision,
        "python": platform.python_version(), "versions": versions,
    }


def append_record(name: str, figures: dict, *, precision: str | None = None,
                  directory: str | os.PathLike | None = None) -> Path | None:
    """Append one stamped record `{..stamp.., "name": name, "figures": figures}` to NAME.jsonl in
    `directory` (default `records_dir()`); returns the file, or None where there is nowhere to
    write (an installed package outside a checkout, without $SWCM_RECORDS_DIR)."""
    target = Path(directory) if directory is not None else records_dir()
    if target is None:
        return None
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.jsonl"
    record = {"name": name, **stamp(precision), "figures": figures}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")
    return path


def read_records(name: str, directory: str | os.PathLike | None = None) -> list[dict]:
    """Every record of NAME.jsonl, oldest first ([] where there is none). ValueError naming the
    file and line of a line that is not a JSON object."""
    target = Path(directory) if directory is not None else records_dir()
    path = target / f"{name}.jsonl" if target is not None else None
    if path is None or not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: a record must be a JSON object")
            records.append(record)
    return records
