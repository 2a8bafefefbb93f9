"""Decoding, validation and experiments under `accelerate launch` on two CPU processes (gloo)
give what one process gives, each output written once.

The first test launches this very file on two processes: each rank shares out a list
(`split_across_processes`), runs work on the main process alone (`on_main_process`, its result
and its errors on every rank), trains a small stand-in encoder outside the launch (`run_alone`)
and runs fine-tuning's validation hook, writing what it got; the test compares that with one
process. The others run `swcm evaluate` and `swcm experiment` under the launcher and in one
process and compare results.json.
"""

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_distributed import launch

STAND_IN = {"vocab_size": 800, "hidden": 16, "layers": 1, "heads": 2, "steps": 3, "batch_size": 4, "max_length": 32,
            "mixed_precision": "no"}
GENERATION = {"max_new_tokens": 4}


def stand_in_texts():
    from swcm.resources import udhr

    return [text for unit in udhr("train")[:20] for text in unit["text"].values()]


def validation_hook(model_dir, valid_file):
    from transformers import AutoTokenizer

    from swcm.finetuning import FinetuneSettings, read_task_pairs, validation_hook

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    settings = FinetuneSettings(task="mt", max_source_length=48, max_target_length=32, generation=GENERATION)
    return validation_hook(tokenizer, read_task_pairs(valid_file, tokenizer, settings), settings, batch_size=4)


def run_rank(model_dir: str, valid_file: str, out_dir: str) -> None:
    """What every rank runs."""
    import torch

    from swcm.distributed import distributed_state, on_main_process, run_alone, split_across_processes
    from swcm.modeling import SWCMForConditionalGeneration

    torch.set_num_threads(1)
    state = distributed_state()
    rank, out = state.process_index, Path(out_dir)
    record = {"split": split_across_processes(range(7), lambda i: [i * i, rank])}

    def append_rank() -> int:
        with open(out / "main-only.txt", "a", encoding="utf-8") as f:
            f.write(f"{rank}\n")
        return rank

    record["main_result"] = on_main_process(append_rank)
    try:
        on_main_process(lambda: int("not a number"))
    except ValueError as err:
        record["main_error"] = str(err)
    on_main_process(run_alone, "swcm.encoders.tiny_encoder", "train_tiny_encoder", stand_in_texts(),
                    str(out / "stand-in"), progress=False, **STAND_IN)
    record["stand_in_ready"] = (out / "stand-in" / "model.safetensors").is_file()  # after the others waited for it
    model = SWCMForConditionalGeneration.from_pretrained(model_dir).eval()
    hook = validation_hook(model_dir, valid_file)
    with torch.no_grad():
        record["metrics"] = hook(model)
    (out / f"rank-{rank}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def taught_model(tiny_encoder_dir, teach_to_echo, tmp_path_factory):
    """A tiny SWCM model taught to echo a little, so that what it decodes depends on its input."""
    from transformers import AutoTokenizer

    from swcm.io import save_model_dir
    from swcm.modeling import SWCMForConditionalGeneration
    from swcm.tokenization import add_language_tags

    import torch

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(str(tiny_encoder_dir))
    langs = ["zh", "bo", "ug", "kk", "mn", "en"]
    add_language_tags(model, tokenizer, langs)
    teach_to_echo(model, tokenizer, langs, steps=30)
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("taught") / "model")


@pytest.fixture(scope="module")
def udhr_data(tmp_path_factory):
    from swcm.experiments import prepare_udhr_data

    return prepare_udhr_data(tmp_path_factory.mktemp("udhr-data"))


def test_shares_main_process_work_and_validation_agree_with_one_process(taught_model, udhr_data, tmp_path):
    import torch

    from swcm.encoders.tiny_encoder import train_tiny_encoder
    from swcm.modeling import SWCMForConditionalGeneration

    launch(__file__, str(taught_model), udhr_data["valid"], str(tmp_path))
    records = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    # every rank got the whole list, in order, each item computed by one rank: 0, 2, 4, 6 by rank 0
    assert records[0]["split"] == records[1]["split"] == [[i * i, i % 2] for i in range(7)]
    # the main process alone ran it; every rank got its result, and its error
    assert (tmp_path / "main-only.txt").read_text() == "0\n"
    assert records[0]["main_result"] == records[1]["main_result"] == 0
    assert records[0]["main_error"] == records[1]["main_error"] == "invalid literal for int() with base 10: 'not a number'"
    # the stand-in trained outside the launch is the one a lone process trains
    assert records[0]["stand_in_ready"] and records[1]["stand_in_ready"]
    alone = train_tiny_encoder(stand_in_texts(), tmp_path / "stand-in-here", progress=False, **STAND_IN)
    launched, here = load_file(tmp_path / "stand-in" / "model.safetensors"), load_file(alone / "model.safetensors")
    assert launched.keys() == here.keys() and all(torch.equal(launched[k], here[k]) for k in here)

    # the validation hook, shared out over two ranks: the metrics one process computes, on every rank
    model = SWCMForConditionalGeneration.from_pretrained(taught_model).eval()
    with torch.no_grad():
        metrics = validation_hook(taught_model, udhr_data["valid"])(model)
    assert records[0]["metrics"] == records[1]["metrics"] == metrics
    assert metrics["chrf"] > 0 and metrics["loss"] > 0


def test_evaluate_under_accelerate_launch_agrees_with_one_process(taught_model, udhr_data, tmp_path, capsys):
    from swcm.cli import main as cli

    command = ["evaluate", "--model", str(taught_model), "--task", "mt",
               *[arg for test in udhr_data["test"] for arg in ("--test", test)], "--max-new-tokens", "4",
               "--max-source-length", "48", "--batch-size", "4", "--dtype", "float32", "--no-progress"]
    assert cli([*command, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    done = launch("-m", "swcm.cli", *command, "--out", str(tmp_path / "two"))
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("| en |") == 1  # reported once
    one, two = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert two["rows"] == one["rows"] and [row["lang"] for row in one["rows"]] == ["bo", "ug", "kk", "mn", "en"]
    assert two["generation"] == one["generation"]
    for test in udhr_data["test"]:
        name = Path(test).name
        assert (tmp_path / "two" / "predictions" / name).read_text() == (tmp_path / "one" / "predictions" / name).read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


EXPERIMENT = (
    "name: ranks\n"
    "encoder: {encoder}\n"
    "data: udhr\n"
    "pretrain: {{dropout: 0.0}}\n"
    "finetune: {{max_steps: 4, batch_size: {batch_size}, lr: 1.0e-3, eval_every: 2, mixed_precision: 'no', "
    "max_source_length: 48, max_target_length: 32, max_valid_examples: 20}}\n"
    "generate: {{batch_size: 4, max_new_tokens: 4, max_source_length: 48}}\n"
    "grid:\n  variant: [ws]\n  objectives: [none]\n  train_size: [40]\n"
)


def test_experiment_under_accelerate_launch_agrees_with_one_process(tiny_encoder_dir, tmp_path, monkeypatch):
    """Two processes with batches of 2 train as one with batches of 4 (no dropout): the same
    validation metrics, the same best step, the same test predictions and results."""
    from swcm.experiments import load_experiment, run_experiment

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # as `accelerate launch --mixed_precision no` sets it
    (tmp_path / "one.yaml").write_text(EXPERIMENT.format(encoder=tiny_encoder_dir, batch_size=4))
    (tmp_path / "two.yaml").write_text(EXPERIMENT.format(encoder=tiny_encoder_dir, batch_size=2))
    run_experiment(load_experiment(tmp_path / "one.yaml"), tmp_path / "one", progress=False)
    done = launch("-m", "swcm.cli", "experiment", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "two"), timeout=300)
    assert done.stdout.count("report: ") == 1  # printed by the main process alone

    one, two = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert [r["spec"] for r in two] == [r["spec"] for r in one] and len(one) == 1
    assert two[0]["rows"] == one[0]["rows"]
    run = Path("runs") / "ws-x3-none-n40-s0"
    logs = [[json.loads(line) for line in (tmp_path / out / run / "finetune" / "log.jsonl").read_text().splitlines()]
            for out in ("one", "two")]
    evals = [[{k: v for k, v in rec.items() if k.startswith("eval_")} for rec in log if "eval_loss" in rec] for log in logs]
    assert len(evals[0]) == 2
    for mine, theirs in zip(evals[1], evals[0]):  # the same predictions; losses of weights within float error
        assert mine["eval_chrf"] == theirs["eval_chrf"] and mine["eval_rougeL_f"] == theirs["eval_rougeL_f"]
        assert mine["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
    for name in ("bo", "ug", "kk", "mn", "en"):
        path = run / "eval" / "predictions" / f"test.{name}.jsonl"
        assert (tmp_path / "two" / path).read_text() == (tmp_path / "one" / path).read_text()
    # every output once, no temporary file left behind by a second writer
    files = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*") if ".tmp-" in p.name or ".old-" in p.name)
    assert files == []
    assert (tmp_path / "two" / "report.md").read_text().count("### ws-x3-none-n40-s0") == 1


if __name__ == "__main__":
    run_rank(*sys.argv[1:4])
