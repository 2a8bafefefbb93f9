"""Pretraining start-up on a large corpus: time to the first optimiser step and peak RSS.

Builds a monolingual corpus of about `--size-mb` MB (default 1024) from the vendored text (the
UDHR, LibreOffice's UI strings and help pages, in one language; documents of several units
each, shuffled and repeated until the size is reached), a tiny SWCM model (over the stand-in
encoder: SentencePiece tokenizer trained on the UDHR, hidden 32), and then runs
`swcm pretrain` on it in subprocesses:

- first start: a fresh OUT, two steps, a checkpoint after each;
- resume: `--resume` from that checkpoint, two steps more.

For each it prints the seconds from the process start to its first optimiser step (the first
line the run appends to OUT/log.jsonl) and the peak resident memory of the process, then the
ratio resume / first start. Nothing is written outside `--work` (default: a temporary
directory, removed at the end; a given one is kept and its corpus reused).

    python benchmarks/startup.py [--size-mb 1024] [--lang zh] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from swcm.records import append_record
from swcm.resources import libreoffice, libreoffice_help, udhr

UNITS_PER_DOCUMENT = 8


def write_corpus(path: Path, lang: str, size_mb: float, seed: int = 0) -> int:
    """`path`: plain text in `lang`, one document a line, of at least `size_mb` MB; returns its bytes."""
    texts = [u["text"][lang] for read in (udhr, libreoffice, libreoffice_help) for split in ("train", "valid", "test")
             for u in read(split) if u["text"].get(lang, "").strip()]
    texts = [" ".join(t.split()) for t in texts]
    rng, target, written = random.Random(seed), int(size_mb * 2**20), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(texts)
            for i in range(0, len(texts), UNITS_PER_DOCUMENT):
                line = " ".join(texts[i : i + UNITS_PER_DOCUMENT]) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    return written


def build_tiny_model(out: Path) -> Path:
    """A built SWCM model over the stand-in encoder (hidden 32, 2 layers, a 1000-piece
    SentencePiece vocabulary trained on the UDHR, a few MLM steps); returns its directory."""
    from swcm.building import build_model_dir
    from swcm.encoders.tiny_encoder import train_tiny_encoder

    texts = [t for unit in udhr("train") for t in unit["text"].values()]
    encoder = train_tiny_encoder(texts, out / "encoder", vocab_size=1000, hidden=32, layers=2, steps=2,
                                 max_positions=130, progress=False)
    model = out / "model"
    build_model_dir(encoder, model, 3, "ws", "auto", None, None, None)
    return model


def run(args: list[str], log: Path, steps_before: int) -> tuple[float, float, float]:
    """Run `swcm` with `args`; returns (seconds to the first new line of `log`, peak RSS in MB,
    seconds to the end). RSS is sampled every 20 ms over the process and its children."""
    start = time.perf_counter()
    # Run from `log`'s directory: `-m` puts the working directory first on sys.path, and a
    # checkout there would shadow the installed swcm.
    errors = open(log.parent.parent / "stderr.txt", "w+b")  # a pipe left unread could fill and block the run
    proc = subprocess.Popen([sys.executable, "-m", "swcm.cli", *args], stdout=subprocess.DEVNULL, stderr=errors,
                            cwd=log.parent.parent)
    ps, peak, first = psutil.Process(proc.pid), 0, None
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        if first is None and log.is_file() and len(log.read_text(encoding="utf-8").splitlines()) > steps_before:
            first = time.perf_counter() - start
        time.sleep(0.02)
    end = time.perf_counter() - start
    errors.seek(0)
    message = errors.read().decode(errors="replace")[-3000:]
    errors.close()
    if proc.returncode != 0:
        sys.exit(f"swcm {' '.join(args)} failed:\n{message}")
    if first is None:  # the run ended between two polls
        first = end
    return first, peak / 2**20, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="corpus size in MB (default 1024)")
    parser.add_argument("--lang", default="zh", help="the corpus language (default zh)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / f"{args.lang}-{args.size_mb:g}mb.txt"
        if not corpus.is_file():
            t = time.perf_counter()
            write_corpus(corpus, args.lang, args.size_mb)
            print(f"corpus: {corpus.stat().st_size / 2**20:.0f} MB written in {time.perf_counter() - t:.0f} s")
        model = work / "model" if (work / "model" / "config.json").is_file() else build_tiny_model(work)
        out = work / "run"
        common = ["pretrain", "--model", str(model), "--mono", f"{args.lang}={corpus}", "--out", str(out),
                  "--batch-size", str(args.batch_size), "--log-every", "1", "--save-every", "1", "--no-progress",
                  "--mixed-precision", "no"]
        log = out / "log.jsonl"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        first = run([*common, "--max-steps", "2"], log, 0)
        resume = run([*common, "--max-steps", "4", "--resume"], log, 2)
        steps = [json.loads(line)["step"] for line in log.read_text(encoding="utf-8").splitlines()]
        assert steps == [1, 2, 3, 4], steps

        size = corpus.stat().st_size / 2**20
        print(f"corpus {size:.0f} MB ({args.lang}, plain text); CPU: {_cpu_name()}")
        print(f"{'':<12} {'first step s':>12} {'peak RSS MB':>12} {'total s':>8}")
        for name, (t, rss, end) in (("first start", first), ("resume", resume)):
            print(f"{name:<12} {t:>12.1f} {rss:>12.0f} {end:>8.1f}")
        print(f"resume / first start: time {resume[0] / first[0]:.3f}, peak RSS {resume[1] / first[1]:.2f}")
        append_record("startup", {"settings": {**vars(args), "work": str(args.work) if args.work else None},
                                  "corpus MB": round(size), "first start: first step s": round(first[0], 1),
                                  "first start: peak RSS MB": round(first[1]), "resume: first step s": round(resume[0], 1),
                                  "resume: peak RSS MB": round(resume[1])}, precision="fp32")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
