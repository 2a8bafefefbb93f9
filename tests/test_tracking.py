"""--report-to: a fine-tuning run's settings, training curves and validation metrics reach the
trackers, each writing locally; read back from MLflow's file store and TensorBoard's event files."""

import json

import pytest
from transformers import AutoTokenizer

from swcm import SWCMForConditionalGeneration
from swcm.cli import main as cli
from swcm.io import save_model_dir
from swcm.training import TrainingConfig
from swcm.training.tracking import is_installed, resolve_trackers

from test_finetuning import write_mt


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    save_model_dir(SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir), AutoTokenizer.from_pretrained(tiny_encoder_dir), out)
    return out


def finetune(model_dir, tmp_path, report_to, steps=6):
    train = write_mt(tmp_path / "train.jsonl", "train", limit=8)
    valid = write_mt(tmp_path / "valid.jsonl", "valid", limit=2)
    out = tmp_path / "ft"
    code = cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--valid", str(valid),
                "--out", str(out), "--max-steps", str(steps), "--batch-size", "4", "--eval-every", "3", "--log-every", "2",
                "--max-new-tokens", "4", "--no-progress", "--report-to", report_to, "--lr", "2e-3"])
    assert code == 0
    return out, [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not (is_installed("mlflow") and is_installed("tensorboard")), reason="needs mlflow and tensorboard")
def test_mlflow_and_tensorboard_get_settings_curves_and_validation(model_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the tracker opts in to its file store
    out, log = finetune(model_dir, tmp_path, "mlflow,tensorboard")
    losses = {r["step"]: r["loss"] for r in log if "loss" in r}
    evals = {r["step"]: r["eval_chrf"] for r in log if "eval_chrf" in r}
    assert sorted(losses) == [2, 4, 6] and sorted(evals) == [3, 6]

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "swcm"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "ft" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["max_steps"] == "6" and params["lr"] == "0.002" and params["report_to"] == "mlflow,tensorboard"
    assert params["task"] == "mt" and params["finetune.max_target_length"] == "128"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(losses)
    chrf = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_chrf")}
    assert chrf == pytest.approx(evals)

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses)
    assert {e.step: e.value for e in events.Scalars("eval_chrf")} == pytest.approx(evals)


@pytest.mark.skipif(not is_installed("wandb"), reason="needs wandb")
def test_wandb_writes_an_offline_run(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out, _ = finetune(model_dir, tmp_path, "wandb", steps=3)
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.skipif(not is_installed("trackio"), reason="needs trackio")
def test_trackio_writes_locally(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    finetune(model_dir, tmp_path, "trackio", steps=3)
    assert list((tmp_path / "trackio").rglob("*.db"))


def test_report_to_is_checked(tmp_path):
    assert resolve_trackers("none") == []
    assert resolve_trackers("auto") == (["tensorboard"] if is_installed("tensorboard") else [])
    assert set(resolve_trackers("all")) == {name for name in ("tensorboard", "wandb", "mlflow", "trackio") if is_installed(name)}
    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        TrainingConfig(out_dir=tmp_path, report_to="tensorboard,neptune")


def test_report_to_an_uninstalled_tracker_is_one_line(model_dir, tmp_path, capsys):
    missing = next((name for name in ("wandb", "trackio", "mlflow") if not is_installed(name)), None)
    if missing is None:
        pytest.skip("every tracker is installed")
    train = write_mt(tmp_path / "train.jsonl", "train", limit=4)
    code = cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--out", str(tmp_path / "ft"),
                "--max-steps", "1", "--no-progress", "--report-to", missing])
    assert code == 2
    assert f"--report-to {missing}: {missing} is not installed" in capsys.readouterr().err
