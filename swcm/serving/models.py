"""The models a server holds: each loaded once by `swcm.generation.load_generator`, with what
the API says about it (name, variant, task, languages, measured scores).

A model's scores are the ones swcm wrote beside it: the test scores of `swcm evaluate`
(results.json in the model directory, or RUN/eval/results.json for a model in RUN/finetune/best
or RUN/finetune/final, as experiments and the demo lay runs out) and the validation scores of
fine-tuning (the eval_* record of the best step in RUN/finetune/log.jsonl). Its default
decoding settings are those its test scores were measured with, so that what the server
answers is what was scored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluating import TASK_NAMES
from ..io import check_model_dir, read_json_object, seq2seq_model_types
from ..languages import LanguageConvention, language_convention

# The decoding settings of results.json that the server takes over (batching is its own).
_DECODING_KEYS = ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "length_penalty", "max_source_length")
_SCORE_KEYS = ("chrf", "bleu", "rougeL_f", "script_rate")


@dataclass
class ServedModel:
    """One loaded model and what the API reports about it.

    name: how requests name it (`model` field); path: its directory; model, tokenizer: from
    `load_generator`; languages: the family's convention; task: "mt", "sum" or "mrc";
    targets: the languages it writes (SWCM: its language tags); decoding: default
    `generate_sequences` options; scores: {"test": …, "validation": …} as `read_scores` gives.
    """

    name: str
    path: Path
    model: object
    tokenizer: object
    languages: LanguageConvention
    task: str = "mt"
    variant: str | None = None
    engine: str = "transformers"
    targets: list[str] = field(default_factory=list)
    decoding: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The model as `GET /models` lists it (not its directory: the API may face other machines)."""
        return {"name": self.name, "variant": self.variant, "task": self.task,
                "task_name": TASK_NAMES.get(self.task, self.task), "engine": self.engine,
                "model_type": getattr(self.model.config, "model_type", None), "targets": self.targets,
                "decoding": self.decoding, "scores": self.scores}


def check_served_model(path: str | os.PathLike) -> None:
    """A one-line error unless `path` is an encoder-decoder model directory that loads."""
    check_model_dir(path, seq2seq_model_types(), "an encoder-decoder model")


def results_file(path: Path) -> Path | None:
    """The results.json of `swcm evaluate` for the model in `path`: in the directory itself, or
    RUN/eval/results.json for RUN/finetune/best or RUN/finetune/final; None when there is none."""
    for candidate in (path / "results.json", path / "eval" / "results.json", path.parent.parent / "eval" / "results.json"):
        if candidate.is_file():
            return candidate
    return None


def _mean(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return round(sum(values) / len(values), 2) if values else None


def read_scores(path: str | os.PathLike) -> tuple[dict, dict, str | None]:
    """({"test": …, "validation": …}, the decoding settings the test scores were measured with,
    the task) for the model in `path`, from the files `swcm evaluate` and fine-tuning wrote
    beside it (see the module docstring); empty where there are none.

    test: {"mean": {chrf, bleu, rougeL_f, script_rate}, "languages": {lang: the same and n}};
    validation: {"step", "chrf", "rougeL_f", "loss"} of the fine-tuning step kept as best (else the last).
    """
    path = Path(path)
    scores: dict = {}
    decoding: dict = {}
    task = None
    found = results_file(path)
    if found is not None:
        try:
            results = read_json_object(found)
        except ValueError:
            results = {}
        rows = [row for row in results.get("rows", []) if isinstance(row, dict) and "lang" in row]
        if rows:
            scores["test"] = {
                "mean": {key: _mean(rows, key) for key in _SCORE_KEYS},
                "languages": {row["lang"]: {**{key: row.get(key) for key in _SCORE_KEYS}, "n": row.get("n")} for row in rows},
            }
        task = results.get("task") if isinstance(results.get("task"), str) else None
        generation = results.get("generation") if isinstance(results.get("generation"), dict) else {}
        decoding = {key: generation[key] for key in _DECODING_KEYS if generation.get(key) is not None}
    log = path.parent / "log.jsonl"
    if path.name in ("best", "final") and log.is_file():
        evals = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and any(key.startswith("eval_") for key in record):
                evals.append(record)
        if evals:
            best = evals[-1]
            if path.name == "best":  # the evaluation the kept checkpoint was saved at
                step = _best_step(path.parent, evals)
                best = next((r for r in reversed(evals) if r.get("step") == step), best)
            scores["validation"] = {"step": best.get("step"),
                                    **{key: best.get(f"eval_{key}") for key in ("chrf", "rougeL_f", "loss")}}
    return scores, decoding, task


def _best_step(run_dir: Path, evals: list[dict]) -> int | None:
    """The step fine-tuning kept as best: from the last checkpoint's trainer state, else the
    evaluation with the lowest loss."""
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*/trainer_state.json"),
                         key=lambda p: int(p.parent.name.removeprefix("step-")) if p.parent.name.removeprefix("step-").isdigit() else -1)
    if checkpoints:
        try:
            step = json.loads(checkpoints[-1].read_text(encoding="utf-8")).get("best_step")
            if isinstance(step, int):
                return step
        except (OSError, ValueError):
            pass
    with_loss = [r for r in evals if isinstance(r.get("eval_loss"), (int, float))]
    return min(with_loss, key=lambda r: r["eval_loss"]).get("step") if with_loss else None


def target_languages(model, tokenizer, languages: LanguageConvention, scores: dict) -> list[str]:
    """The languages a model writes: an SWCM model's language tags; for another family, the
    languages of its test scores and the default codes its convention knows that its tokenizer has."""
    if languages.family == "swcm":
        return list(getattr(model.config, "language_tags", {}) or {})
    known = list(scores.get("test", {}).get("languages", {}))
    for lang in languages.codes:
        try:
            languages.check(tokenizer, [lang])
        except ValueError:
            continue
        known.append(lang)
    return list(dict.fromkeys(known))


def load_served_model(name: str, path: str | os.PathLike, *, device: str | None = None, dtype: str = "auto",
                      engine: str | None = None, quantize: str | None = None, decoding: dict | None = None) -> ServedModel:
    """Load the model in `path` once, for serving under `name`.

    `engine` None picks the fast engine for an SWCM model on the CPU and `model.generate()`
    elsewhere (a GPU, a baseline family); `quantize="int8"` needs the fast engine. `decoding`
    overrides the settings the model's test scores were measured with (num_beams,
    max_new_tokens, no_repeat_ngram_size, …).
    """
    import torch

    from ..generation import load_generator

    path = Path(path)
    check_served_model(path)
    config = read_json_object(path / "config.json")
    swcm_model = config.get("model_type") == "swcm"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if engine is None:
        engine = "fast" if swcm_model and device.startswith("cpu") else "transformers"
    model, tokenizer = load_generator(path, device, dtype, engine, quantize)
    languages = language_convention(model, tokenizer)
    scores, measured, task = read_scores(path)
    return ServedModel(
        name=name, path=path, model=model, tokenizer=tokenizer, languages=languages, task=task or "mt",
        variant=config.get("variant") if swcm_model else None, engine=engine + ("+int8" if quantize == "int8" else ""),
        targets=target_languages(model, tokenizer, languages, scores), decoding={**measured, **(decoding or {})},
        scores=scores,
    )
