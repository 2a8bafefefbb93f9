"""The docs cannot go stale: their commands run, the flags they name exist, their links resolve,
and the generated pages (CLI reference, benchmark records) are what the code and records give.

Command blocks are the ```bash blocks of README.md and docs/tutorial/README.md, run in order, one
shell per file, in a fresh directory holding a copy of docs/tutorial/data. A block is not run
when the line before it is a marker:

    <!-- docs-test: skip (why) -->          e.g. the demo itself, a server, paths of your own
    <!-- docs-test: in docs/tutorial/README.md -->
                                           each of its commands must appear, verbatim, in a block
                                           of that page that does run

Every other docs page's blocks are not run, but the flags they give `swcm` subcommands are checked.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = [ROOT / "README.md", ROOT / "docs" / "tutorial" / "README.md"]
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|in)\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")

sys.path.insert(0, str(ROOT / "tools"))


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks(path: Path) -> list[dict]:
    """The fenced blocks of a Markdown file: language, text, first line, and the docs-test marker
    on the line before the fence (None, ("skip", why) or ("in", page))."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(before)
        blocks.append({"lang": match.group(1), "text": "\n".join(body), "line": start + 1,
                       "marker": (marker.group(1), marker.group(2)) if marker else None})
        i += 1
    return blocks


def commands(text: str) -> list[str]:
    """Shell commands of a block, continuation lines joined, comments and blank lines left out."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((current + line).strip())
        current = ""
    return out


def subcommand_flags() -> dict[str, set[str]]:
    from swcm.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in subs.items()}


def swcm_invocations(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, flags) of every `swcm SUB ...` (or `-m swcm.cli SUB`) in a command text."""
    found = []
    for command in commands(text) if "\n" in text else [text]:
        for segment in re.split(r"&&|\|\||;|\|", command):
            try:
                words = shlex.split(segment, comments=True)
            except ValueError:
                words = segment.split()
            for k, word in enumerate(words):
                if word in ("swcm", "swcm.cli") or word.endswith("/swcm"):
                    rest = [w for w in words[k + 1:] if w not in ("-v", "--verbose")]
                    if rest and not rest[0].startswith("-"):
                        found.append((rest[0], [w.split("=", 1)[0] for w in rest[1:] if w.startswith("--")]))
                    break
    return found


def test_every_flag_has_help():
    from swcm.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"swcm {name} {a.option_strings or a.dest}" for name, p in subs.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"flags without help text: {missing}"


def test_cli_reference_is_generated_and_current():
    import cli_reference

    text = cli_reference.render()
    assert "## swcm build" in text and "`--insert-every`" in text
    assert cli_reference.main(["--check"]) == 0, "run python tools/cli_reference.py"


def test_records_pages_are_current():
    import render_records

    assert render_records.main(["--check"]) == 0, "run python tools/render_records.py"


def test_flags_the_docs_name_exist():
    flags = subcommand_flags()
    problems = []
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        snippets = [b["text"] for b in code_blocks(page) if b["lang"] in ("bash", "sh", "")]
        snippets += re.findall(r"`((?:\S*/)?swcm [a-z][^`\n]*|[^`\n]*-m swcm\.cli [^`\n]*)`", text)
        for snippet in snippets:
            for sub, named in swcm_invocations(snippet):
                if sub not in flags:
                    problems.append(f"{page.relative_to(ROOT)}: no subcommand `swcm {sub}`")
                    continue
                problems += [f"{page.relative_to(ROOT)}: `swcm {sub}` has no {flag}" for flag in named
                             if flag not in flags[sub]]
    assert not problems, "\n".join(problems)


def test_relative_links_resolve():
    broken = []
    for page in doc_pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short_and_names_no_commit():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", h) and re.search(r"\d", h)]
    assert not hashes, f"README quotes commit hashes: {hashes}"


def test_marked_blocks_are_run_elsewhere():
    for page in RUN:
        for block in code_blocks(page):
            if block["marker"] and block["marker"][0] == "in":
                other = ROOT / block["marker"][1]
                ran = {c for b in code_blocks(other) if b["lang"] == "bash" and not b["marker"] for c in commands(b["text"])}
                missing = [c for c in commands(block["text"]) if c not in ran]
                assert not missing, f"{page.relative_to(ROOT)}:{block['line']}: not run in {block['marker'][1]}: {missing}"


def test_markers_are_known():
    for page in doc_pages():
        for line in page.read_text(encoding="utf-8").splitlines():
            if "docs-test:" in line:
                assert MARKER.search(line), f"{page.relative_to(ROOT)}: unknown docs-test marker {line.strip()!r}"


@pytest.mark.parametrize("page", RUN, ids=lambda p: str(p.relative_to(ROOT)))
def test_command_blocks_run(page, tmp_path):
    """Every unmarked bash block of the page, in order, in one shell (`set -euo pipefail`)."""
    blocks = [b for b in code_blocks(page) if b["lang"] == "bash" and not b["marker"]]
    if not blocks:
        pytest.skip(f"{page.name}: no command block to run")
    shutil.copytree(ROOT / "docs" / "tutorial" / "data", tmp_path / "docs" / "tutorial" / "data")
    script = "set -euo pipefail\n" + "\n".join(f"# {page.name}:{b['line']}\n{b['text']}" for b in blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "SWCM_RECORDS_DIR": str(tmp_path / "records")}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{page.name}: a command block failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_demo_sentence_from_a_live_and_a_backfilled_record(tmp_path, monkeypatch):
    import render_records
    from swcm.records import append_record

    monkeypatch.setattr(render_records, "RECORDS", tmp_path)
    assert "No demo run has been recorded" in render_records.demo_sentence()
    chrf = {"ws": {"ug": 17.0, "dz": 3.0}, "random": {"ug": 6.0, "dz": 5.0}}
    append_record("demo", {"seconds_with_install": 999, "install_seconds": 129, "chrf": chrf}, precision="bf16",
                  directory=tmp_path)
    assert "the command above took 16 min 39 s, 2 min 9 s of it the install" in render_records.demo_sentence()
    append_record("demo", {"seconds": 754, "fresh": True, "chrf": chrf}, precision="fp32", directory=tmp_path)
    sentence = render_records.demo_sentence()  # the newest record
    assert "in fp32, `swcm demo` took 12 min 34 s; test chrF++ on ug, dz: `ws` 17.0, 3.0; `random` 6.0, 5.0" in sentence
    assert "docs/results/benchmarks.md#demo" in sentence
