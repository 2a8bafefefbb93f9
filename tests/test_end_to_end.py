"""The whole workflow on real text: encoder → build → (pretrain) → fine-tune → evaluate, and a
resumable experiment grid that writes the paper-shaped report."""

import dataclasses
import json
from pathlib import Path

import pytest

from swcm.cli import main as cli
from swcm.generation import generate_texts, load_generator
from swcm.metrics import score
from swcm.experiments import check_experiment_settings, load_experiment, prepare_udhr_data, run_experiment

TARGETS = ["bo", "ug", "kk", "mn", "en"]


@pytest.fixture(scope="module")
def udhr_files(tmp_path_factory):
    return prepare_udhr_data(tmp_path_factory.mktemp("udhr-data"))


def test_build_finetune_evaluate_gives_a_row_per_language(tiny_encoder_dir, udhr_files, tmp_path, capsys):
    model = tmp_path / "model"
    assert cli(["build", "--encoder", str(tiny_encoder_dir), "--out", str(model), "--langs", "zh," + ",".join(TARGETS)]) == 0
    ft = tmp_path / "ft"
    assert cli(["finetune", "--task", "mt", "--model", str(model), "--train", udhr_files["train"],
                "--valid", udhr_files["valid"], "--out", str(ft), "--max-steps", "12", "--batch-size", "8",
                "--lr", "2e-3", "--eval-every", "6", "--max-valid", "10", "--max-new-tokens", "6",
                "--max-source-length", "64", "--max-target-length", "48", "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    assert cli(["evaluate", "--model", str(ft / "best"), "--task", "mt", *sum([["--test", t] for t in udhr_files["test"]], []),
                "--out", str(out), "--max-new-tokens", "6", "--max-source-length", "64", "--transfer-from", "zh",
                "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [row["lang"] for row in results["rows"]] == TARGETS
    # Each language's row scores that language's predictions against its references, and the
    # predictions are what the fine-tuned model generates for the test file.
    model, tokenizer = load_generator(ft / "best", device="cpu")
    for row, test_file in zip(results["rows"], udhr_files["test"]):
        predicted = [json.loads(line) for line in (out / "predictions" / Path(test_file).name).read_text().splitlines()]
        assert row["n"] == len(predicted) == 9 and {r["tgt_lang"] for r in predicted} == {row["lang"]}
        regenerated = generate_texts(model, tokenizer, [r["src"] for r in predicted], row["lang"], max_new_tokens=6,
                                     max_source_length=64, progress=False)
        assert regenerated == [r["prediction"] for r in predicted]
        expected = score([r["prediction"] for r in predicted], [r["tgt"] for r in predicted], row["lang"])
        assert row["rougeL_f"] == pytest.approx(expected["rougeL"]["f"])
        assert row["chrf"] == pytest.approx(expected["chrf"]) and row["script_rate"] == pytest.approx(expected["script_rate"])
    for lang in TARGETS:
        assert f"| {lang} |" in printed
    assert (out / "results.md").read_text().count("\n|") >= len(TARGETS) + 1


def test_experiment_grid_runs_resumes_and_reports(tiny_encoder_dir, tmp_path, capsys):
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(
        "name: tiny\n"
        f"encoder: {tiny_encoder_dir}\n"
        "data: udhr\n"
        "pretrain: {max_steps: 4, batch_size: 8, lr: 1.0e-3, max_source_length: 48, max_target_length: 48}\n"
        "finetune: {max_steps: 4, batch_size: 8, lr: 1.0e-3, eval_every: 4, max_source_length: 48, max_target_length: 32}\n"
        "generate: {max_new_tokens: 4, max_source_length: 48}\n"
        "grid:\n  variant: [ws]\n  objectives: [dae+mt, none]\n  train_size: [40]\n"
    )
    config = load_experiment(config_path)
    out = tmp_path / "out"
    outcome = run_experiment(config, out, progress=False)
    assert len(outcome["results"]) == 2
    report = (out / "report.md").read_text()
    assert "Table 3" in report and "w/o DAE & MT" in report and "DAE + MT" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for result in outcome["results"]:
        assert [row["lang"] for row in result["rows"]] == TARGETS
    # the pretrained model of (variant, X, objectives, seed) exists once; "none" skips pretraining
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["ws-x3-daemt-s0", "ws-x3-none-s0"]
    assert (out / "pretrain" / "ws-x3-daemt-s0" / "final" / "model.safetensors").is_file()
    assert not (out / "pretrain" / "ws-x3-none-s0" / "final").exists()
    # pretraining's defaults where the section leaves them out: scheduled sampling and a warm-up
    pretrain_log = [json.loads(line) for line in (out / "pretrain" / "ws-x3-daemt-s0" / "log.jsonl").read_text().splitlines()]
    assert pretrain_log[-1]["teacher_forcing_ratio"] < 1.0 and pretrain_log[-1]["step"] == 4

    # a half-finished grid: drop one run's result and the report; the re-run redoes only that run
    (out / "runs" / "ws-x3-none-n40-s0" / "result.json").unlink()
    kept = (out / "runs" / "ws-x3-daemt-n40-s0" / "result.json").stat().st_mtime_ns
    assert cli(["experiment", str(config_path), "--out", str(out), "--no-progress"]) == 0
    assert (out / "runs" / "ws-x3-none-n40-s0" / "result.json").is_file()
    assert (out / "runs" / "ws-x3-daemt-n40-s0" / "result.json").stat().st_mtime_ns == kept
    assert "Table 3" in capsys.readouterr().out

    # other settings in the same directory are refused, naming what changed, and nothing is
    # touched; a grown grid (another seed) is not a change of settings
    config_path.write_text(config_path.read_text().replace("finetune: {max_steps: 4", "finetune: {max_steps: 6"))
    assert cli(["experiment", str(config_path), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "finetune.max_steps: 4 → 6" in error and "new --out" in error and len(error.splitlines()) == 1
    assert (out / "runs" / "ws-x3-daemt-n40-s0" / "result.json").stat().st_mtime_ns == kept
    grown = dataclasses.replace(config, grid={**config.grid, "seed": [0, 1]})
    assert check_experiment_settings(grown, out) is None
    used = json.loads((out / "settings.json").read_text())["encoder_used"]
    assert check_experiment_settings(config, out, str(out / used)) is None
    with pytest.raises(ValueError, match="encoder_used"):  # e.g. the stand-in, where e5 was used before
        check_experiment_settings(config, out, str(out / "encoder-e5-small"))
