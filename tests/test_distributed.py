"""The training loop under `accelerate launch` on two CPU processes (gloo).

Run by pytest, the test launches this very file as the training script on two processes;
each rank records the examples its collator received and saves the weights it ended with.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

STEPS, BATCH = 4, 3


def run_rank(encoder_dir: str, out_dir: str) -> None:
    """What every rank runs: the same training code as one process, unchanged."""
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from swcm.training import TrainingConfig, train
    from test_training import build_model, collate, copy_examples

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    model = build_model(encoder_dir, tokenizer)
    pad = collate(tokenizer)
    seen = []

    def recording_collator(examples):
        seen.extend(e["input_ids"] for e in examples)
        return pad(examples)

    config = TrainingConfig(out_dir=Path(out_dir) / "run", max_steps=STEPS, batch_size=BATCH, lr=1e-3,
                            scheduled_sampling="linear", log_every=2, save_every=2, progress=False)
    train(model, tokenizer, copy_examples(tokenizer), config, recording_collator)
    rank = PartialState().process_index
    (Path(out_dir) / f"rank-{rank}.json").write_text(json.dumps(seen))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, Path(out_dir) / f"rank-{rank}.safetensors")


def test_two_processes_read_different_data_and_agree_on_weights(tmp_path, tiny_encoder_dir):
    # Gloo on the CPU even where a GPU exists: two processes must not share one device.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    # `--multi_gpu` selects accelerate's torchrun launcher; on a machine without GPUs the loop
    # runs it as DDP over gloo (`--cpu` alone would start one process).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               __file__, str(tiny_encoder_dir), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    seen = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == STEPS * BATCH
    as_tuples = [{tuple(ids) for ids in rank} for rank in seen]
    assert as_tuples[0].isdisjoint(as_tuples[1])  # each rank its own slice of every global batch

    weights = [load_file(tmp_path / f"rank-{r}.safetensors") for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the main process wrote the checkpoints and the final model, which hold those weights
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert all(torch.equal(final[k], weights[0][k]) for k in final)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    rng = torch.load(tmp_path / "run" / "checkpoints" / "step-4" / "rng.pt", weights_only=True)
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # one RNG state per rank


if __name__ == "__main__":
    run_rank(*sys.argv[1:3])
