"""An experiment file and its grid: the sections' settings, the grid points and their run ids.

`load_experiment` reads and checks a YAML file into an `ExperimentConfig`; `expand_grid` turns
its grid into `RunSpec`s (one run each, named by `run_id`; runs differing only in `train_size`
share `pretrain_id`; runs on the same adaptation level, `adapt_steps`, share one adapted encoder); `pretrain_settings`, `finetune_settings` and `training_config` give each
stage of a grid point its settings from the sections.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..settings import settings_for

GRID_KEYS = ("variant", "insert_every", "objectives", "train_size", "seed", "adapted", "adapt_steps")
OBJECTIVES = ("dae+mt", "dae", "mt", "none")
# Settings a run takes from each section (beyond the training loop's; see `section_keys`).
DATA_KEYS = ("mono", "parallel", "task", "train", "valid", "test", "langs", "corpus", "targets")  # corpus, targets: a vendored corpus
PRETRAIN_KEYS = ("lm_head", "dropout", "alpha", "mt_ratio", "max_source_length", "max_target_length", "on_bad_record")
FINETUNE_KEYS = ("max_source_length", "max_target_length", "max_valid_examples", "on_bad_record", "field_map", "alpha")
LORA_KEYS = ("lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_full")  # swcm.lora.LoraSettings
GENERATE_KEYS = ("batch_size", "max_source_length", "max_new_tokens")
# The adapt section (vocabulary extension + continued MLM on the vendored text of `langs`, and of
# `replay_langs`, languages the encoder reads already), beside the loop's settings.
ADAPT_KEYS = ("langs", "extend_vocab", "init", "max_length", "alpha", "train", "replay_langs")
# Training-loop settings a grid point decides itself.
_RUN_OWNED = ("out_dir", "seed", "resume", "progress")


def section_keys() -> dict[str, frozenset[str]]:
    """The keys each section of an experiment file may hold: data; pretrain (the training loop's
    settings, `PRETRAIN_KEYS` and the DAE noise's `NoiseConfig` fields); finetune (the loop's and
    `FINETUNE_KEYS`, `LORA_KEYS`); generate (`GENERATE_KEYS` and every `transformers.GenerationConfig` setting)."""
    from transformers import GenerationConfig

    from ..data.noise import NoiseConfig
    from ..training import TrainingConfig

    loop = {f.name for f in fields(TrainingConfig)} - set(_RUN_OWNED)
    return {
        "data": frozenset(DATA_KEYS),
        "pretrain": frozenset(loop | set(PRETRAIN_KEYS) | {f.name for f in fields(NoiseConfig)}),
        "finetune": frozenset(loop | set(FINETUNE_KEYS) | set(LORA_KEYS)),
        "generate": frozenset(set(GENERATE_KEYS) | set(GenerationConfig().to_dict()) - {"transformers_version"}),
        "adapt": frozenset(loop - {"average_last"} | set(ADAPT_KEYS)),  # the adapted encoder is OUT/final
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
    # the adaptation level: masked-LM steps of the adapt section (None: its max_steps); adapted runs only
    adapt_steps: int | None = None

    @property
    def _encoder_suffix(self) -> str:
        if self.adapted is None:
            return ""
        if not self.adapted:
            return "-plain"
        return "-adapted" if self.adapt_steps is None else f"-adapted{self.adapt_steps}"

    @property
    def encoder_level(self) -> str:
        """Which encoder the run builds on, named as in `run_experiment`'s "encoders": "None" (the
        experiment adapts none), "False" (the plain one), "True" (adapted by the adapt section)
        or "True-N" (adapted with N masked-LM steps: the adapt_steps axis)."""
        return str(self.adapted) + ("" if self.adapt_steps is None else f"-{self.adapt_steps}")

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
        if set(adapt.get("replay_langs") or []) & set(adapt["langs"]):
            raise ValueError(f"{path}{_key_line(text, 'adapt', 'replay_langs')}: adapt.replay_langs are languages the "
                             "encoder reads already, not among adapt.langs")
        grid.setdefault("adapted", [True])
        if any(value not in (True, False) for value in grid["adapted"]):
            raise ValueError(f"{path}: grid.adapted holds true and/or false")
        if any(not isinstance(steps, int) or isinstance(steps, bool) or steps < 0 for steps in grid.get("adapt_steps", [])):
            raise ValueError(f"{path}: grid.adapt_steps holds masked-LM step counts (integers >= 0)")
    elif "adapted" in grid or "adapt_steps" in grid:
        axis = "adapted" if "adapted" in grid else "adapt_steps"
        raise ValueError(f"{path}: grid.{axis} needs an adapt section (how to adapt the encoder)")
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
    """Every combination of the grid's axes, in a stable order. An adaptation level
    (`adapt_steps`) applies to adapted encoders only: a plain encoder's runs are there once."""
    defaults = RunSpec()
    axes = [grid.get(key, [getattr(defaults, key)]) for key in GRID_KEYS]
    specs = (RunSpec(**dict(zip(GRID_KEYS, values))) for values in itertools.product(*axes))
    return list(dict.fromkeys(spec if spec.adapted else replace(spec, adapt_steps=None) for spec in specs))


def training_config(section: dict, out_dir: Path, seed: int, **extra):
    """The `TrainingConfig` of one stage: the section's training-loop settings (other keys are
    left to the stage), `out_dir`, `seed`, always resumable, and `extra` over all."""
    from ..training import TrainingConfig

    return TrainingConfig(out_dir=out_dir, seed=seed, resume=True, **{**settings_for(TrainingConfig, section), **extra})


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


def pretrain_settings(spec: RunSpec, config: ExperimentConfig, data: dict):
    """The `PretrainSettings` of a grid point: its objectives' data, the pretrain section's
    sampling, length and DAE noise settings (mask_ratio, poisson_lambda, ...)."""
    from ..data.noise import NoiseConfig
    from ..pretraining import PretrainSettings

    settings = {k: config.pretrain[k] for k in PRETRAIN_KEYS if k in config.pretrain}
    if spec.objectives != "dae+mt":
        settings["mt_ratio"] = 1.0
    return PretrainSettings(
        mono=data["mono"] if "dae" in spec.objectives else (),
        parallel=data["parallel"] if "mt" in spec.objectives else (),
        langs=data.get("langs"),
        noise=NoiseConfig(**settings_for(NoiseConfig, config.pretrain)),
        **settings_for(PretrainSettings, settings),
    )


def finetune_settings(config: ExperimentConfig, data: dict):
    """The `FinetuneSettings` of every grid point. Validation decodes as the test does, with the
    generate section's settings (beams, length, sampling, ...) and batch size; only the test's
    source length stays the test's: validation reads sources as fine-tuning does."""
    from ..finetuning import FinetuneSettings

    return FinetuneSettings(
        task=data["task"],
        **{k: config.finetune[k] for k in FINETUNE_KEYS if k in config.finetune},
        valid_batch_size=config.generate.get("batch_size"),
        generation={k: v for k, v in config.generate.items() if k not in ("batch_size", "max_source_length")},
    )
