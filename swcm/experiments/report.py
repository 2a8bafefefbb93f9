"""Results → the report: aggregation over seeds, the paper-shaped tables, Figure 4, training curves,
learning curves (validation scores against step, the seeds of a setting as a band).

Each run's result is {"spec": RunSpec fields, "rows": per-language scores, "logs": its
log.jsonl files}; `aggregate` groups them by everything but the seed, `render_tables` lays
them out as the paper's Tables 3–5 and `write_report` writes OUT/report.md with the plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from ..io import atomic_text_file, write_json
from .grid import OBJECTIVES, ExperimentConfig, RunSpec

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
    in an experiment that adapts its encoder the key ends with `adapted` (True or False), and
    with the adaptation level (`adapt_steps`) where the grid has that axis.
    """
    groups: dict[tuple, dict[str, list[float]]] = {}
    for result in results:
        spec = result["spec"]
        key = (spec["variant"], spec["insert_every"], spec["objectives"], spec["train_size"])
        if spec.get("adapted") is not None:
            key += (spec["adapted"],) + ((spec["adapt_steps"],) if spec.get("adapt_steps") is not None else ())
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
    """", adapted encoder" / ", plain encoder" for a key of an experiment that adapts its encoder
    (", encoder adapted N steps" on an adaptation level), else ""."""
    if len(key) < 5:
        return ""
    if len(key) > 5:
        return separator + f"encoder adapted {key[5]} steps"
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


@contextlib.contextmanager
def figure(out_png: str | os.PathLike, *grid: int, figsize: tuple[float, float]):
    """The axes of a new matplotlib figure (`grid`: rows, columns; default one axes), drawn
    without a display; saved to `out_png` at 120 dpi when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, figsize=figsize)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(out_png, dpi=120)
    finally:
        plt.close(fig)


def log_points(path: str | os.PathLike, key: str) -> list[tuple[int, float]]:
    """(step, value) of every record of a log.jsonl that holds `key`; [] when the file cannot be read."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = (json.loads(line) for line in lines if line.strip())
    return [(record["step"], record[key]) for record in records if key in record]


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
    with figure(out_png, figsize=(5, 3.5)) as ax:
        for (objectives, size), series in sorted(points.items(), key=lambda kv: setting_order(kv[0])):
            xs, ms, ss = zip(*series)
            label = f"n = {size or 'all'}" + (f", {objectives}" if several_objectives else "")
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
        ax.set_xticks(sorted({x for series in points.values() for x, _, _ in series}))
        ax.set_xlabel("insertion frequency X")
        ax.set_ylabel("ROUGE-L F (avg over languages)")
        ax.set_title("Figure 4 — ROUGE-L against X")
        ax.legend()
    return True


def plot_curves(results: list[dict], out_png: str | os.PathLike) -> bool:
    """Training-loss curves of every run's pretraining and fine-tuning, side by side."""
    series = {"pretrain": {}, "finetune": {}}
    for result in results:
        for stage, path in result.get("logs", {}).items():
            spec = RunSpec(**result["spec"])
            points = log_points(path, "loss")
            if points:  # runs sharing a pretrained model share its curve
                series[stage][spec.pretrain_id if stage == "pretrain" else spec.run_id] = points
    if not any(series.values()):
        return False
    with figure(out_png, 1, 2, figsize=(10, 3.8)) as axes:
        for ax, (stage, lines) in zip(axes, series.items()):
            for label, points in sorted(lines.items()):
                steps, losses = zip(*points)
                ax.plot(steps, losses, label=label)
            ax.set_title(f"{stage} loss")
            ax.set_xlabel("step")
            ax.set_ylabel("cross-entropy")
            if lines:
                ax.legend(fontsize=7)
    return True


# Fine-tuning's validation records in log.jsonl: (key, what it measures), each a learning curve.
VALIDATION_CURVES = (("eval_loss", "validation cross-entropy"), ("eval_chrf", "validation chrF++"))


def seed_bands(results: list[dict], key: str) -> dict[str, list[tuple[int, float, float, float]]]:
    """Fine-tuning's `key` (e.g. "eval_chrf") against step, the seeds of a setting together:
    {setting: [(step, mean, min, max) over the seeds that logged that step]}. A setting is a
    run's grid point but its seed, named by the grid axes whose values differ between settings
    (the variant alone when nothing else does)."""
    per_setting: dict[tuple, dict[int, list[float]]] = {}
    for result in results:
        spec = RunSpec(**result["spec"]).__dict__  # every axis, also in results written before it existed
        setting = tuple((axis, value) for axis, value in spec.items() if axis != "seed")
        for step, value in log_points(result.get("logs", {}).get("finetune", ""), key):
            per_setting.setdefault(setting, {}).setdefault(step, []).append(value)
    varying = {axis for setting in per_setting for axis, value in setting
               if len({dict(other).get(axis) for other in per_setting}) > 1} or {"variant"}

    def name(setting: tuple) -> str:
        return ", ".join(str(value) if axis == "variant" else f"{axis} {value}" for axis, value in setting if axis in varying)

    return {name(setting): [(step, sum(v) / len(v), min(v), max(v)) for step, v in sorted(steps.items())]
            for setting, steps in per_setting.items()}


def plot_learning_curves(results: list[dict], out_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """One figure per validation curve (`VALIDATION_CURVES`) in `out_dir`, learning-<key>.png: each
    setting's mean over its seeds as a line, their min–max as a band. Returns [(file name, what
    it shows)] of the figures written (none where the runs logged no validation)."""
    written = []
    for key, label in VALIDATION_CURVES:
        bands = seed_bands(results, key)
        if not bands:
            continue
        name = f"learning-{key.removeprefix('eval_')}.png"
        with figure(Path(out_dir) / name, figsize=(6, 4)) as ax:
            for setting, points in sorted(bands.items()):
                steps, means, lows, highs = zip(*points)
                line, = ax.plot(steps, means, marker="o", markersize=3, label=setting)
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_xlabel("fine-tuning step")
            ax.set_ylabel(label)
            ax.set_title(f"{label[0].upper()}{label[1:]} (mean over seeds, band: min–max)")
            ax.legend(fontsize=7)
        written.append((name, label))
    return written


def describe_data(data: str | dict) -> str:
    """An experiment's `data:` section in words: the vendored corpora (with their languages) or
    the files of each kind."""
    if isinstance(data, str):
        data = {"corpus": data}
    parts = []
    if data.get("corpus"):
        corpora = data["corpus"] if isinstance(data["corpus"], list) else [data["corpus"]]
        from .corpora import PIVOT as pivot

        targets = ", ".join(data.get("targets") or ["every language"])
        parts.append(" + ".join(f"`{c}`" for c in corpora) + f" (vendored, swcm/resources/; {pivot} → {targets}"
                     + (f", task {data['task']})" if data.get("task") else ")"))
    for key in ("mono", "parallel", "train", "valid", "test"):
        values = data.get(key)
        if values and not data.get("corpus"):
            values = values if isinstance(values, list) else [values]
            parts.append(f"{key} " + ", ".join(f"`{v}`" for v in values))
    if data.get("task") and not data.get("corpus"):
        parts.append(f"task {data['task']}")
    return "; ".join(parts) or "none given"


def write_report(config: ExperimentConfig, results: list[dict], agg: dict, out: Path) -> Path:
    """OUT/report.md: per-run results, the paper-shaped tables, Figure 4 and training curves."""
    from ..evaluating import RESULT_COLUMNS
    from ..metrics import markdown_table

    parts = [f"# {config.name}", "",
             f"Encoder: `{config.encoder}`. Data: {describe_data(config.data)}. "
             f"{len(results)} runs. Scores on 0–100, measured on the test files; mean ± std over seeds "
             "where there are several.", ""]
    parts.append(render_tables(agg))
    if plot_figure4(agg, out / "figure4.png"):
        parts += ["### Figure 4", "", "![ROUGE-L against X](figure4.png)", ""]
    if plot_curves(results, out / "curves.png"):
        parts += ["### Training curves", "", "![training curves](curves.png)", ""]
    learning = plot_learning_curves(results, out)
    if learning:
        parts += ["### Learning curves", "", "Fine-tuning's validation scores against step, every run's log.jsonl; "
                  "a setting's seeds as a band (min–max) around their mean.", ""]
        parts += [f"![{label} against step]({name})" for name, label in learning] + [""]
    parts += ["## Every run", ""]
    for result in results:
        parts += [f"### {RunSpec(**result['spec']).run_id}", "",
                  markdown_table(result["rows"], RESULT_COLUMNS)]
    path = out / "report.md"
    with atomic_text_file(path) as f:
        f.write("\n".join(parts))
    write_json(out / "results.json", results)
    return path
