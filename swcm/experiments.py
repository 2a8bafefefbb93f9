"""Ablation grids → the paper's tables and Figure 4, on any data.

An experiment is a YAML file: an encoder, data, pretraining and fine-tuning settings, and a
grid over `variant` (ws / random / no-normal / duplicate), `insert_every` (X), `objectives`
(dae+mt, dae, mt, none), `train_size` (fine-tuning examples; null = all) and `seed`. Every
grid point is one run: build → pretrain → fine-tune → evaluate, written under
`OUT/runs/<run id>/`. A run whose `result.json` exists is not redone, and stages inside a run
resume from their checkpoints, so a half-finished grid is continued by running it again.
Pretraining does not depend on the fine-tuning set size, so runs that differ only in
`train_size` share one pretrained model.

Results are aggregated over seeds (mean ± std) into tables shaped like the paper's
Tables 3–5 and a Figure-4 plot (ROUGE-L against X, one line per data size).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

GRID_KEYS = ("variant", "insert_every", "objectives", "train_size", "seed")
OBJECTIVES = ("dae+mt", "dae", "mt", "none")


@dataclass(frozen=True)
class RunSpec:
    """One grid point."""

    variant: str = "ws"
    insert_every: int = 3
    objectives: str = "dae+mt"
    train_size: int | None = None
    seed: int = 0

    @property
    def run_id(self) -> str:
        size = "all" if self.train_size is None else str(self.train_size)
        return f"{self.variant}-x{self.insert_every}-{self.objectives.replace('+', '')}-n{size}-s{self.seed}"

    @property
    def pretrain_id(self) -> str:
        """Runs with the same pretrain_id share one pretrained model."""
        return f"{self.variant}-x{self.insert_every}-{self.objectives.replace('+', '')}-s{self.seed}"


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
    source: str = "<config>"


def load_experiment(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML file; one-line ValueError naming the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{line}: malformed YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an experiment file is a mapping with keys name, encoder, data, grid, ...")
    known = {"name", "encoder", "data", "pretrain", "finetune", "generate", "grid", "tables"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for key in ("encoder", "data"):
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r}")
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
        source=str(path),
    )


def _resolve(value, base: Path):
    """Make relative paths inside `value` absolute against `base`; leave keywords alone."""
    if isinstance(value, dict):
        return {k: _resolve(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    if isinstance(value, str) and ("/" in value or value.endswith((".jsonl", ".txt", ".tsv"))) and not os.path.isabs(value):
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
    Returns {(variant, insert_every, objectives, train_size): {lang: (mean, std, n), "avg": ...}}.
    """
    groups: dict[tuple, dict[str, list[float]]] = {}
    for result in results:
        spec = result["spec"]
        key = (spec["variant"], spec["insert_every"], spec["objectives"], spec["train_size"])
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


def _select(agg: dict, **fixed) -> list[tuple[tuple, dict]]:
    fields = ("variant", "insert_every", "objectives", "train_size")
    out = []
    for key, stats in agg.items():
        named = dict(zip(fields, key))
        if all(named[k] == v for k, v in fixed.items()):
            out.append((key, stats))
    return out


def render_tables(agg: dict, metric_name: str = "ROUGE-L F") -> str:
    """Markdown tables shaped like the paper's Tables 3, 4 and 5, from whatever runs exist."""
    langs = _languages(agg)
    parts = []
    objective_label = {"dae+mt": "DAE + MT", "dae": "w/o MT", "mt": "w/o DAE", "none": "w/o DAE & MT"}
    variant_label = {"ws": "XLM-SWCM (ws)", "random": "w/o WS (random decoder)",
                     "no-normal": "BASE-A (no-normal)", "duplicate": "BASE-B (duplicate)"}

    # Table 3: objective ablation, with and without weight sharing.
    rows = []
    for key, stats in sorted(_select(agg), key=lambda kv: (kv[0][0] != "ws", OBJECTIVES.index(kv[0][2]))):
        variant, x, objectives, size = key
        if variant in ("ws", "random"):
            ws = "" if variant == "ws" else ", w/o WS"
            rows.append((f"{objective_label[objectives]}{ws} (X={x}, n={size or 'all'})", stats))
    if len({(k[0], k[2]) for k, _ in _select(agg) if k[0] in ("ws", "random")}) > 1 and \
            len({k[2] for k, _ in _select(agg)}) > 1:
        parts.append(_table(f"Table 3 — objective ablation ({metric_name})", rows, langs))

    # Table 4: weight sharing against a random decoder of the same shape.
    rows = [(f"{variant_label[k[0]]} (X={k[1]}, {k[2]}, n={k[3] or 'all'})", s)
            for k, s in sorted(_select(agg)) if k[0] in ("ws", "random")]
    if {k[0] for k, _ in _select(agg)} >= {"ws", "random"}:
        parts.append(_table(f"Table 4 — weight sharing vs random decoder ({metric_name})", rows, langs))

    # Table 5: BASE-A and BASE-B against the full model.
    rows = [(f"{variant_label[k[0]]} (X={k[1]}, {k[2]}, n={k[3] or 'all'})", s)
            for k, s in sorted(_select(agg)) if k[0] in ("ws", "no-normal", "duplicate")]
    if {k[0] for k, _ in _select(agg)} & {"no-normal", "duplicate"}:
        parts.append(_table(f"Table 5 — decoder structure ({metric_name})", rows, langs))

    # Everything, in one table, so no run is ever left out of the report.
    rows = [(" / ".join(str(v) if v is not None else "all" for v in k), s) for k, s in sorted(agg.items(), key=str)]
    parts.append(_table(f"All settings — variant / X / objectives / train size ({metric_name})", rows, langs))
    return "\n".join(parts)


def plot_figure4(agg: dict, out_png: str | os.PathLike, variant: str = "ws") -> bool:
    """ROUGE-L (language average) against X, one line per training-set size. False if < 2 X values."""
    points: dict[object, list[tuple[int, float, float]]] = {}
    for (v, x, _objectives, size), stats in agg.items():
        if v == variant:
            m, s, _ = stats["avg"]
            points.setdefault(size, []).append((x, m, s))
    if len({x for series in points.values() for x, _, _ in series}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for size, series in sorted(points.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        series.sort()
        xs, ms, ss = zip(*series)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=f"n = {size or 'all'}")
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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)
