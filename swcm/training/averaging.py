"""Checkpoint averaging: one model whose weights are the mean of several saved models of a run.

The mean of the last few checkpoints of a run sits nearer the middle of the region the
optimizer was wandering in than any one of them, and usually scores a little higher than the
last (fairseq's scripts/average_checkpoints.py, Marian's --average-checkpoints do the same).
The inputs are model directories as `save_model` writes them; only their safetensors files are
read, tensor by tensor, so averaging needs no model class and no more memory than one model in
float32 and one input file. Floating tensors are averaged in float32 and stored in their own
dtype; integer tensors (buffers such as position ids) are taken from the newest input.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import OWNER_FILE, atomic_directory, check_model_dir, weight_files
from .checkpoint import STATE_FILES, checkpoint_dirs

AVERAGED_RECORD = "averaged.json"
# Files of an input that belong to that one model or to its training, not to the average (finetune.json:
# swcm.model_card's FINETUNE_RECORD, the recipe's record, which names the input's own scores).
_NOT_COPIED = {*STATE_FILES, "scaler.pt", OWNER_FILE, "README.md", "finetune.json", AVERAGED_RECORD}


def last_checkpoints(out_dir: str | Path, k: int) -> list[Path]:
    """The last `k` checkpoints kept under OUT/checkpoints, oldest first; a one-line ValueError
    when fewer are kept."""
    if not Path(out_dir).is_dir():
        raise FileNotFoundError(f"{out_dir}: no such directory")
    found = checkpoint_dirs(out_dir)
    if len(found) < k:
        raise ValueError(f"{out_dir}: {len(found)} checkpoint(s) kept under checkpoints/, {k} to average")
    return found[-k:]


def _tensor_shapes(file: Path) -> dict[str, list[int]]:
    """{tensor name: shape} of a safetensors file, from its header (nothing is loaded)."""
    with safe_open(file, framework="pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}


def check_same_weights(model_dirs: Sequence[Path]) -> list[list[Path]]:
    """The weight files of every model directory, newest (last) first checked against each other:
    a one-line ValueError naming the directory and the tensor when files, tensor names or shapes
    differ. Returns, per weight file of the newest, that file in every directory (oldest first)."""
    for directory in model_dirs:
        if not directory.is_dir():  # never a hub id: averaging reads local runs
            raise FileNotFoundError(f"{directory}: no such directory")
        if not (directory / "config.json").is_file() and (directory / "adapter_config.json").is_file():
            raise ValueError(f"{directory}: a LoRA adapter; averaging its two factors does not average its "
                             "updates: average merged models (swcm merge) instead")
        check_model_dir(directory, weights=True, tokenizer=False)
    newest = model_dirs[-1]
    reference = {file.name: _tensor_shapes(file) for file in weight_files(newest)}
    for directory in model_dirs[:-1]:
        names = [file.name for file in weight_files(directory)]
        if sorted(names) != sorted(reference):
            raise ValueError(f"{directory}: weight files {names} differ from {newest}'s {sorted(reference)}")
        for name, shapes in reference.items():
            found = _tensor_shapes(directory / name)
            for tensor in sorted(set(found) ^ set(shapes)):
                where = directory if tensor in found else newest
                raise ValueError(f"{directory}: tensor {tensor} is in {where} only; the models differ in their weights")
            for tensor, shape in shapes.items():
                if found[tensor] != shape:
                    raise ValueError(f"{directory}: tensor {tensor} has shape {found[tensor]}, {newest}'s {shape}")
    return [[directory / name for directory in model_dirs] for name in sorted(reference)]


def average_file(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The tensors of one weight file averaged over its copies `files` (oldest first): floating
    tensors the float32 mean in their own dtype, the others the newest's."""
    with safe_open(files[-1], framework="pt") as f:
        newest = {name: f.get_tensor(name) for name in f.keys()}
    sums = {name: tensor.float() for name, tensor in newest.items() if tensor.is_floating_point()}
    for file in files[:-1]:
        with safe_open(file, framework="pt") as f:
            for name, total in sums.items():
                total += f.get_tensor(name).float()
    return {name: (sums[name] / len(files)).to(tensor.dtype) if name in sums else tensor
            for name, tensor in newest.items()}


def average_models(model_dirs: Sequence[str | Path], out_dir: str | Path, owner: str = "model") -> Path:
    """Write to `out_dir` (atomically, as `owner`'s output) the model whose weights are the mean of
    `model_dirs`' (the last counts as the newest): same weight files and tensors, the newest's
    configs and tokenizer, and averaged.json naming the inputs (and their steps, for checkpoints).
    The inputs are checked first (`check_same_weights`); one input is copied as it is."""
    model_dirs = [Path(d) for d in model_dirs]
    if not model_dirs:
        raise ValueError("nothing to average: no model directories")
    groups = check_same_weights(model_dirs)
    with atomic_directory(out_dir, owner) as tmp:
        for files in groups:
            save_file(average_file(files), tmp / files[-1].name, metadata={"format": "pt"})
        written = {files[-1].name for files in groups}
        for file in model_dirs[-1].iterdir():
            if file.is_file() and file.name not in written and file.name not in _NOT_COPIED:
                shutil.copy2(file, tmp / file.name)
        record = {"averaged": [str(d) for d in model_dirs], "steps": [_step(d) for d in model_dirs]}
        (tmp / AVERAGED_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def _step(directory: Path) -> int | None:
    """The training step a checkpoint was saved at (its trainer_state.json), else None."""
    try:
        return int(json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
