"""Experiment tracking: which of accelerate's trackers a run reports to, each writing locally.

`report_to` (TrainingConfig, `--report-to`) names trackers, comma-separated: tensorboard, wandb,
mlflow, trackio; or "all" (every one installed), "none", or "auto" (the default: TensorBoard when it
is installed, as before there was a choice). Every tracker writes where the run is, and nothing
leaves the machine unless asked:

- tensorboard: event files in OUT/tensorboard/;
- mlflow: a file store in OUT/mlruns/ (browse with `MLFLOW_ALLOW_FILE_STORE=true mlflow ui
  --backend-store-uri OUT/mlruns`), unless MLFLOW_TRACKING_URI names another store (e.g. sqlite);
- wandb: an offline run in OUT/wandb/ (`wandb sync` uploads it), unless WANDB_MODE says otherwise;
- trackio: its local database (TRACKIO_DIR, by default ~/.cache/huggingface/trackio;
  `trackio show` opens it), unless a Space is configured through trackio's own settings.

Each gets the run's settings once, then every logged record of log.jsonl (the training curves
and the `eval_*` validation metrics) at its step.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
REPORT_TO_WORDS = ("auto", "all", "none")
# What to install for each, when it is asked for and missing.
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny (or mlflow)", "trackio": "trackio"}
# The module each tracker imports.
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def is_installed(tracker: str) -> bool:
    """Whether `tracker`'s package can be imported here."""
    return importlib.util.find_spec(_MODULES[tracker]) is not None


def parse_report_to(value: str) -> list[str] | str:
    """`value` checked: one of auto, all, none (returned as is), or a list of tracker names.
    ValueError naming the unknown word."""
    words = [word.strip().lower() for word in str(value).split(",") if word.strip()]
    if len(words) == 1 and words[0] in REPORT_TO_WORDS:
        return words[0]
    for word in words:
        if word not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {word!r}; expected {', '.join(TRACKERS)} (comma-separated), "
                             f"or one of {', '.join(REPORT_TO_WORDS)}")
    if not words:
        raise ValueError("report_to: empty; give none to report to no tracker")
    return list(dict.fromkeys(words))


def resolve_trackers(report_to: str) -> list[str]:
    """The tracker names `report_to` means here: "auto" → tensorboard where installed, "all" → every
    installed one, "none" → []; a tracker asked for by name and not installed is a ValueError."""
    parsed = parse_report_to(report_to)
    if parsed == "none":
        return []
    if parsed == "auto":
        return ["tensorboard"] if is_installed("tensorboard") else []
    if parsed == "all":
        return [name for name in TRACKERS if is_installed(name)]
    missing = [name for name in parsed if not is_installed(name)]
    if missing:
        raise ValueError(f"--report-to {missing[0]}: {missing[0]} is not installed (pip install {_PACKAGES[missing[0]]})")
    return parsed


def make_trackers(report_to: str, out_dir: str | os.PathLike, run_name: str | None = None) -> list:
    """accelerate `GeneralTracker`s for `report_to`, each writing under `out_dir` (see the module
    docstring), for the main process to pass to `Accelerator(log_with=...)`. `run_name` (default:
    the output directory's name) names the run in MLflow, W&B and trackio; the project is "swcm"."""
    out = Path(out_dir).absolute()
    run_name = run_name or out.name
    trackers = []
    for name in resolve_trackers(report_to):
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", str(out)))
        elif name == "mlflow":
            trackers.append(_LocalMLflowTracker(experiment_name="swcm", run_name=run_name,
                                                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").as_uri()))
        elif name == "wandb":
            (out / "wandb").mkdir(parents=True, exist_ok=True)
            trackers.append(WandBTracker("swcm", name=run_name, dir=str(out), mode=os.environ.get("WANDB_MODE", "offline")))
        elif name == "trackio":
            trackers.append(TrackioTracker("swcm", name=run_name))
    return trackers


def tracked_settings(*sections: dict) -> dict:
    """The run's settings as trackers take them (str, int, float or bool values), later sections
    over earlier ones; a nested mapping's keys are joined with dots."""
    flat: dict = {}

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)  # paths, lists, None

    for section in sections:
        add("", section)
    return flat


class _LocalMLflowTracker(MLflowTracker):
    """accelerate's MLflow tracker on a given store (accelerate's uses MLflow's process-wide default)."""

    def __init__(self, *, tracking_uri: str, **kwargs):
        super().__init__(**kwargs)
        self.tracking_uri = tracking_uri

    def start(self):
        import mlflow

        # MLflow 3 keeps its file store but refuses it unless opted in; a run's own local,
        # offline record is what it is for here (another store: MLFLOW_TRACKING_URI)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(self.tracking_uri)
        super().start()

    def finish(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)  # another run in this process may have set its own
        super().finish()
