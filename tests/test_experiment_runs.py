"""Experiment grids that train: seeds as bands in the report's learning curves, averaged checkpoints
evaluated on the test set, and adaptation levels as a grid axis (tiny models, real UDHR text)."""

import json
from pathlib import Path

import pytest

from swcm.experiments import RunSpec, load_experiment, run_experiment, seed_bands


def test_seeds_form_bands_and_averaged_checkpoints_are_tested(tiny_encoder_dir, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"name: bands\nencoder: {tiny_encoder_dir}\ndata: udhr\n"
        "finetune: {max_steps: 4, batch_size: 8, lr: 3.0e-3, eval_every: 2, save_every: 2, keep_last: 2, average_last: 2,"
        " metric: chrf, max_valid_examples: 4, max_source_length: 32, max_target_length: 16}\n"
        "generate: {max_new_tokens: 3, max_source_length: 32}\n"
        "grid:\n  variant: [ws, random]\n  objectives: [none]\n  train_size: [16]\n  seed: [0, 1]\n")
    out = tmp_path / "out"
    results = run_experiment(load_experiment(path), out, progress=False)["results"]
    for result in results:  # the test set was decoded by the mean of each run's last two checkpoints
        run = out / "runs" / RunSpec(**result["spec"]).run_id
        assert result["model"] == str(run / "finetune" / "averaged")
        record = json.loads((run / "finetune" / "averaged" / "finetune.json").read_text())
        assert record["averaged"]["steps"] == [2, 4] and set(record["averaged"]["valid"]) == {"chrf", "loss", "rougeL_f"}
        assert json.loads((run / "eval" / "results.json").read_text())["model"] == result["model"]
    bands = seed_bands(results, "eval_chrf")
    assert sorted(bands) == ["random", "ws"]  # settings differ by variant only: named by it
    for variant, points in bands.items():
        assert [step for step, *_ in points] == [2, 4]
        logged = {seed: [json.loads(line)["eval_chrf"] for line in open(out / "runs" / f"{variant}-x3-none-n16-s{seed}"
                                                                           / "finetune" / "log.jsonl")
                         if "eval_chrf" in line] for seed in (0, 1)}
        for i, (_, mean, low, high) in enumerate(points):
            values = [logged[0][i], logged[1][i]]
            assert (low, high) == (min(values), max(values)) and abs(mean - sum(values) / 2) < 1e-9
    report = (out / "report.md").read_text()
    for name in ("learning-chrf.png", "learning-loss.png"):
        assert f"]({name})" in report
        assert (out / name).read_bytes()[:4] == b"\x89PNG"



def test_adaptation_levels_are_a_grid_axis_with_replay(tiny_encoder_dir, tmp_path):
    """`adapt_steps` adapts one encoder per level (whole-encoder masked LM on dz + bo text with zh
    replayed), shared by that level's runs and named in their ids; the plain encoder's runs are
    there once."""
    path = tmp_path / "levels.yaml"
    path.write_text(
        f"name: levels\nencoder: {tiny_encoder_dir}\nencoder_layers: 2\n"
        "adapt: {langs: [dz, bo], extend_vocab: 200, init: mean, train: all, replay_langs: [zh], batch_size: 4, max_length: 32}\n"
        "data: {corpus: libreoffice, targets: [dz]}\n"
        "finetune: {max_steps: 2, batch_size: 4, lr: 1.0e-3, max_source_length: 24, max_target_length: 16}\n"
        "generate: {max_new_tokens: 3, max_source_length: 24}\n"
        "grid:\n  variant: [ws]\n  objectives: [none]\n  adapted: [false, true]\n  adapt_steps: [0, 3]\n")
    outcome = run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    assert sorted(RunSpec(**r["spec"]).run_id for r in outcome["results"]) == [
        "ws-x3-none-nall-s0-adapted0", "ws-x3-none-nall-s0-adapted3", "ws-x3-none-nall-s0-plain"]
    assert sorted(outcome["encoders"]) == ["False", "True-0", "True-3"]
    reports = {level: json.loads((Path(outcome["encoders"][level]).parent / "adapt.json").read_text())
               for level in ("True-0", "True-3")}
    assert "steps" not in reports["True-0"] and reports["True-3"]["steps"] == 3
    assert reports["True-3"]["trained"] == "all" and reports["True-3"]["replay"] == ["zh"]
    assert set(reports["True-3"]["sampling"]) == {"dz", "bo", "zh"}  # zh is trained on beside the new script
    assert set(reports["True-3"]["mlm_valid_loss"]["adapted"]) == {"dz", "bo", "zh"}  # and its drift measured
    assert reports["True-0"]["vocab_after"] == reports["True-3"]["vocab_after"]  # pieces from dz + bo only, alike
    report = (tmp_path / "out" / "report.md").read_text()
    assert "encoder adapted 3 steps" in report and "plain encoder" in report
    # levels need an adapt section to adapt with
    path.write_text(path.read_text().replace("adapt: {", "unused: {").replace("unused: {langs", "#"))
    with pytest.raises(ValueError, match="grid.adapted needs an adapt section"):
        load_experiment(path)
