"""The training loop under `accelerate launch` on two CPU processes (gloo).

Run by pytest, the first test launches this very file as the training script on two
processes; each rank records the examples its collator received and saves the weights it
ended with, once for shared data (a list every rank reads; fine-tuning) and once for a
sharded stream (each rank its own `PretrainingStream`; pretraining), which it then
interrupts and resumes. The second test runs `swcm pretrain` itself under the launcher.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

STEPS, BATCH, ACCUM = 4, 3, 2
LANGS = ["zh", "bo", "ug", "kk", "mn", "en"]


def run_rank(encoder_dir: str, out_dir: str) -> None:
    """What every rank runs: the same training code as one process, unchanged."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from swcm.pretraining import PretrainSettings, pretraining_stream
    from swcm.training import TrainingConfig, distributed_state, train
    from test_training import build_model, copy_examples, short_and_long

    torch.set_num_threads(1)
    rank = distributed_state().process_index
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    pad = DataCollatorForSeq2Seq(tokenizer)
    out = Path(out_dir)
    text = out / "text"
    if rank == 0:
        from swcm.resources import udhr

        text.mkdir(exist_ok=True)
        for lang in LANGS:
            (text / f"{lang}.txt").write_text("".join(u["text"][lang] + "\n" for u in udhr("train")), encoding="utf-8")
    distributed_state().wait_for_everyone()

    for mode in ("shared", "sharded", "sharded-resumed"):
        if mode == "sharded-resumed":  # the sharded run "died" after step 2's checkpoint
            if rank == 0:
                shutil.rmtree(out / "sharded" / "checkpoints" / "step-4")
                shutil.rmtree(out / "sharded" / "final")
            distributed_state().wait_for_everyone()
        model = build_model(encoder_dir, tokenizer, seed=1 if mode == "sharded-resumed" else 0)
        seen = []

        def recording_collator(examples):
            seen.extend(e["input_ids"] for e in examples)
            return pad(examples)

        if mode == "shared":
            examples = copy_examples(tokenizer)
        else:
            settings = PretrainSettings(mono=[f"{lang}={text / f'{lang}.txt'}" for lang in LANGS],
                                        max_source_length=48, max_target_length=48)
            examples = pretraining_stream(tokenizer, settings)
        config = TrainingConfig(out_dir=out / mode.removesuffix("-resumed"), max_steps=STEPS, batch_size=BATCH, grad_accum=ACCUM, lr=1e-3,
                                scheduled_sampling="linear", log_every=2, save_every=2, progress=False,
                                resume=mode == "sharded-resumed")
        train(model, tokenizer, examples, config, recording_collator, sharded=mode != "shared")
        (out / f"{mode}-rank-{rank}.json").write_text(json.dumps(seen))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"{mode}-rank-{rank}.safetensors")

    # One step over 2 ranks × 2 micro-batches of 2, rank 0 holding the short targets.
    model = build_model(encoder_dir, tokenizer, dropout=False)
    train(model, tokenizer, short_and_long(tokenizer), token_step_config(out / "tokens", batch_size=2), pad)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"tokens-rank-{rank}.safetensors")


def token_step_config(out, batch_size):
    from swcm.training import TrainingConfig

    return TrainingConfig(out_dir=out, max_steps=1, batch_size=batch_size, grad_accum=2, lr=1e-3, weight_decay=0.0,
                          max_grad_norm=None, shuffle=False, progress=False)


def launch(*args, timeout=180):
    """`accelerate launch` on two processes. `--multi_gpu` selects accelerate's torchrun
    launcher (`--cpu` alone would start one process); ACCELERATE_USE_CPU makes it gloo on the
    CPU even where a GPU exists, so that two processes do not share one device."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_read_different_data_and_agree_on_weights(tmp_path, tiny_encoder_dir):
    launch(__file__, str(tiny_encoder_dir), str(tmp_path))
    for mode in ("shared", "sharded"):
        seen = [json.loads((tmp_path / f"{mode}-rank-{r}.json").read_text()) for r in range(2)]
        assert len(seen[0]) == len(seen[1]) == STEPS * ACCUM * BATCH
        assert seen[0] != seen[1]  # each rank trained on its own examples
        if mode == "shared":  # slices of the same global batches: disjoint
            assert {tuple(ids) for ids in seen[0]}.isdisjoint({tuple(ids) for ids in seen[1]})

        weights = [load_file(tmp_path / f"{mode}-rank-{r}.safetensors") for r in range(2)]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        # the main process wrote the checkpoints and the final model, which hold those weights
        run = tmp_path / mode
        final = load_file(run / "final" / "model.safetensors")
        assert all(torch.equal(final[k], weights[0][k]) for k in final)
        assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [2, 4]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]
        rng = torch.load(run / "checkpoints" / "step-4" / "rng.pt", weights_only=True)
        assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # one RNG state per rank
        data = torch.load(run / "checkpoints" / "step-4" / "data.pt", weights_only=True)
        assert len(data) == 2 and (data[0] == data[1]) == (mode == "shared")  # sharded: a position per rank

    # Resumed on two processes from step 2, each rank at its own data position: the same end.
    resumed = [load_file(tmp_path / f"sharded-resumed-rank-{r}.safetensors") for r in range(2)]
    uninterrupted = load_file(tmp_path / "sharded-rank-0.safetensors")
    assert all(torch.equal(resumed[r][k], uninterrupted[k]) for r in range(2) for k in uninterrupted)
    seen = [json.loads((tmp_path / f"sharded{part}-rank-0.json").read_text()) for part in ("", "-resumed")]
    assert seen[1] == seen[0][STEPS // 2 * ACCUM * BATCH:]  # it read on exactly where the checkpoint was taken

    # The step the two ranks took (each 2 micro-batches of 2, rank 0's targets all short) equals
    # one process's step over the same 2 micro-batches of 4: the loss is normalised by the
    # token count of the whole step on all ranks, not averaged over ranks.
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from swcm.training import train
    from test_training import build_model, max_diff, short_and_long

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    build_model(tiny_encoder_dir, tokenizer)  # the ranks' tokenizer had its tags from earlier runs: so does this one
    model = build_model(tiny_encoder_dir, tokenizer, dropout=False)
    train(model, tokenizer, short_and_long(tokenizer), token_step_config(tmp_path / "one", batch_size=4),
          DataCollatorForSeq2Seq(tokenizer))
    # AdamW's first step moves each weight by about ±lr: averaging the ranks' means flips some
    assert max_diff(load_file(tmp_path / "tokens-rank-0.safetensors"), model.state_dict()) < 1e-5


def test_pretrain_cli_under_accelerate_launch(tmp_path, tiny_encoder_dir):
    from swcm.building import build_model_dir
    from swcm.resources import udhr

    torch.manual_seed(0)
    build_model_dir(tiny_encoder_dir, tmp_path / "built")
    mono = []
    for lang in LANGS[:4]:
        path = tmp_path / f"{lang}.txt"
        path.write_text("".join(u["text"][lang] + "\n" for u in udhr("train")), encoding="utf-8")
        mono += ["--mono", f"{lang}={path}"]
    out = tmp_path / "out"
    command = ["-m", "swcm.cli", "pretrain", "--model", str(tmp_path / "built"), "--out", str(out), *mono,
               "--max-steps", "4", "--batch-size", "2", "--save-every", "2", "--lr", "1e-3", "--no-progress",
               "--max-source-length", "48", "--max-target-length", "48"]
    done = launch(*command)
    assert done.stdout.count("pretrained 4 steps") == 1  # reported once, by the main process
    assert AutoModelForSeq2SeqLM.from_pretrained(out / "final").config.language_tags.keys() == set(LANGS[:4])
    data = torch.load(out / "checkpoints" / "step-4" / "data.pt", weights_only=True)
    assert len(data) == 2 and data[0] != data[1]  # two ranks, two streams


if __name__ == "__main__":
    run_rank(*sys.argv[1:3])
