"""Checkpoint averaging: `swcm average`, and fine-tuning's --average-last, on a tiny model trained
on real UDHR translation pairs."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from swcm import SWCMForConditionalGeneration
from swcm.cli import main as cli
from swcm.finetuning import FinetuneSettings, read_task_pairs, validation_hook
from swcm.io import OWNER_FILE, output_owner, save_model_dir
from swcm.training import TrainingConfig

from test_finetuning import write_mt


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    torch.manual_seed(0)
    save_model_dir(SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir), AutoTokenizer.from_pretrained(tiny_encoder_dir), out)
    return out


@pytest.fixture(scope="module")
def averaged_run(model_dir, tmp_path_factory):
    """A 12-step fine-tuning run that keeps its last 3 checkpoints (steps 4, 8, 12) and averages them."""
    root = tmp_path_factory.mktemp("run")
    train = write_mt(root / "train.jsonl", "train", limit=8)
    valid = write_mt(root / "valid.jsonl", "valid", limit=2)
    out = root / "ft"
    assert cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--valid", str(valid),
                "--out", str(out), "--max-steps", "12", "--batch-size", "4", "--lr", "3e-3", "--eval-every", "12",
                "--save-every", "4", "--keep-last", "3", "--average-last", "3", "--max-new-tokens", "6",
                "--max-target-length", "24", "--metric", "chrf", "--no-progress"]) == 0
    return out, valid


def _mean_of(directories):
    states = [load_file(d / "model.safetensors") for d in directories]
    return {name: sum(s[name].float() for s in states) / len(states) for name in states[0]}


def test_finetune_writes_and_scores_the_average_of_its_last_checkpoints(averaged_run):
    out, valid = averaged_run
    averaged = load_file(out / "averaged" / "model.safetensors")
    expected = _mean_of([out / "checkpoints" / f"step-{n}" for n in (4, 8, 12)])
    assert averaged.keys() == expected.keys()
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
    final = load_file(out / "final" / "model.safetensors")
    assert not all(torch.equal(tensor, final[name]) for name, tensor in averaged.items())
    record = json.loads((out / "averaged" / "finetune.json").read_text())
    assert record["averaged"]["steps"] == [4, 8, 12]
    assert record == json.loads((out / "final" / "finetune.json").read_text())
    # the recorded validation scores are those of the averaged model itself, by the same hook
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "averaged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "averaged")
    settings = FinetuneSettings(max_target_length=24, generation={"num_beams": 1, "max_new_tokens": 6})
    with torch.no_grad():
        scores = validation_hook(tokenizer, read_task_pairs(valid, tokenizer, settings), settings, batch_size=4)(model)
    assert record["averaged"]["valid"] == pytest.approx(scores, abs=1e-6)
    assert (out / "averaged" / "README.md").is_file()  # its model card


def test_swcm_average_cli_takes_a_runs_last_checkpoints_or_model_directories(averaged_run, tmp_path, capsys):
    out, _ = averaged_run
    assert cli(["average", str(out), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    assert "the mean of 2 models" in capsys.readouterr().out
    written = load_file(tmp_path / "avg" / "model.safetensors")
    expected = _mean_of([out / "checkpoints" / f"step-{n}" for n in (8, 12)])
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "avg")  # configs and tokenizer came along
    assert len(AutoTokenizer.from_pretrained(tmp_path / "avg")) == model.get_input_embeddings().num_embeddings
    assert output_owner(tmp_path / "avg") == "average"
    assert not (tmp_path / "avg" / "optimizer.pt").exists()  # training state stays with the checkpoint
    assert json.loads((tmp_path / "avg" / "averaged.json").read_text())["steps"] == [8, 12]
    # model directories by name, oldest first; its own earlier output is replaced
    assert cli(["average", str(out / "best"), str(out / "final"), "--out", str(tmp_path / "avg")]) == 0
    for name, tensor in load_file(tmp_path / "avg" / "model.safetensors").items():
        torch.testing.assert_close(tensor, _mean_of([out / "best", out / "final"])[name], rtol=0, atol=1e-6)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_swcm_average_refuses_in_one_line(averaged_run, model_dir, tiny_encoder_dir, tmp_path, capsys):
    out, _ = averaged_run
    avg = str(tmp_path / "avg")
    assert cli(["average", str(out / "final"), "--out", avg]) == 2
    assert "one directory; give two or more model directories" in _error(capsys)
    assert cli(["average", str(out), "--last", "4", "--out", avg]) == 2
    assert f"{out}: 3 checkpoint(s) kept under checkpoints/, 4 to average" in _error(capsys)
    assert cli(["average", str(out), "--last", "1", "--out", avg]) == 2
    assert "--last must be at least 2" in _error(capsys)
    # another model: the fine-tuned one has language tags, so more embedding rows
    assert cli(["average", str(model_dir), str(out / "final"), "--out", avg]) == 2
    assert f"{model_dir}: tensor encoder.embeddings.word_embeddings.weight has shape [1002, 32]" in _error(capsys)
    assert cli(["average", str(tiny_encoder_dir), str(out / "final"), "--out", avg]) == 2
    assert f"{tiny_encoder_dir}: tensor " in _error(capsys)
    assert not (tmp_path / "avg").exists()  # refused before anything was written
    # an output that swcm did not write is never replaced without --overwrite
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert cli(["average", str(out), "--last", "2", "--out", str(tmp_path / "mine")]) == 2
    assert f"{tmp_path / 'mine'}: is a directory that swcm did not write" in _error(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (tmp_path / "mine" / OWNER_FILE).exists()
    assert cli(["average", str(out), "--last", "2", "--out", str(tmp_path / "mine"), "--overwrite"]) == 0
    assert (tmp_path / "mine" / "model.safetensors").is_file()


def test_average_last_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="average_last 3 needs keep_last of at least 3"):
        TrainingConfig(out_dir=tmp_path, max_steps=12, save_every=4, average_last=3)
    with pytest.raises(ValueError, match="12 steps saving every 6 write only 2 checkpoint"):
        TrainingConfig(out_dir=tmp_path, max_steps=12, save_every=6, keep_last=3, average_last=3)
    with pytest.raises(ValueError, match="average_last must be at least 2"):
        TrainingConfig(out_dir=tmp_path, average_last=1)
    assert TrainingConfig(out_dir=tmp_path, max_steps=10, save_every=4, keep_last=3, average_last=3).average_last == 3
