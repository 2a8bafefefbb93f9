"""What the page generators (cli_reference.py, render_records.py) share: write the pages whose
text changed, or with --check only say which are stale."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_or_check(outputs: dict[Path, str], check: bool, command: str) -> int:
    """Write each changed page of `outputs` ({path: text}); with `check`, write nothing and return
    1 if any page differs from its text, naming it and the `command` that regenerates it."""
    stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run {command}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0
