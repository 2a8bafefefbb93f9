"""Checkpoints: the model and everything a resumed run needs, written atomically.

A checkpoint `OUT/checkpoints/step-N/` holds the weights (safetensors) and tokenizer, and the
training state: optimizer (keyed by parameter name, torch's distributed state-dict format, so
one format for one process and DDP), scheduler, fp16 scaler, one RNG state and one data
position per rank, and the trainer state (step, best metric). Every directory is written into
a temporary directory beside its final place, flushed, and renamed, so a kill at any moment
leaves the previous checkpoint complete. Training state is restored with
`torch.load(weights_only=True)` only; nothing is unpickled (accelerate's own `load_state` would
unpickle registered objects).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from ..io import atomic_directory, save_tokenizer

if TYPE_CHECKING:
    from .loop import Run

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
# What `restore` reads besides the weights (scaler.pt, for fp16 only, is optional).
STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng.pt", "data.pt")


@dataclass
class TrainerState:
    """Where a run stands: its step, and the best evaluation so far (for OUT/best and early stopping)."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


def missing_state_files(checkpoint: str | Path) -> list[Path]:
    """The training-state files a checkpoint directory lacks (empty: it can be resumed)."""
    return [Path(checkpoint) / name for name in STATE_FILES if not (Path(checkpoint) / name).is_file()]


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first (temporary dirs are ignored)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under OUT/checkpoints, or None."""
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def clear_interrupted_saves(out_dir: str | Path) -> None:
    """Remove the temporary directories of saves a kill interrupted."""
    for stale in (Path(out_dir) / "checkpoints").glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_model_weights(model: nn.Module, directory: str | Path) -> None:
    """Load safetensors weights written by `save_pretrained` (one file or shards) into `model`.

    Keys that `save_pretrained` leaves out because they share storage with a saved tensor
    (tied embeddings) may be missing; anything else missing or unexpected is an error.
    """
    directory = Path(directory)
    if hasattr(model, "peft_config"):  # a LoRA run's checkpoint: the adapter's weights
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise ValueError(f"{directory}: adapter weights do not match the model (unexpected {result.unexpected_keys[:5]})")
        return
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(directory / name))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    current = model.state_dict()
    missing = [k for k in missing if current[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, source: Path) -> None:
    """Load `state`, an optimizer state keyed by parameter name as `get_optimizer_state_dict`
    writes it, into `optimizer`, whose parameters are `model`'s (unwrapped; sharding is refused).

    What `set_optimizer_state_dict` does for such a model, less its first act: it would set up
    the optimizer's state with one step on zero gradients, a kernel call per tensor, before
    replacing that state by the saved one; on a busy CPU that step alone cost seconds of a
    resume (1.9 s for 229 tensors on 2 shared cores). Raises ValueError when the state is for
    other parameters or other parameter groups.
    """
    names = {param: name for name, param in model.named_parameters()}  # tied weights: one name, as saved
    current = [[names.get(param) for param in group["params"]] for group in optimizer.param_groups]
    saved = [list(group["params"]) for group in state["param_groups"]]
    if saved != current:
        raise ValueError(f"{source}: the optimizer state is for other parameters than this model's "
                         f"(groups of {[len(g) for g in saved]} parameters, this model's {[len(g) for g in current]})")
    # Parameters are matched by their position in the groups, as torch matches them.
    optimizer.load_state_dict(state)


def save_model(run: Run, directory: Path, extra: Callable[[Path], None] | None = None) -> None:
    """Write model (+ tokenizer, + `extra` files) atomically; collective, main process writes."""
    accelerator = run.accelerator
    weights = accelerator.get_state_dict(run.model)  # gathers sharded weights on every rank
    if accelerator.is_main_process:
        with atomic_directory(directory) as tmp:
            model = accelerator.unwrap_model(run.model)
            if hasattr(model, "peft_config"):  # LoRA: the adapter and the modules trained in full only
                model.save_pretrained(tmp, state_dict=weights, safe_serialization=True, save_embedding_layers=False)
                model.get_base_model().generation_config.save_pretrained(tmp)
            else:
                model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            if run.tokenizer is not None:
                save_tokenizer(run.tokenizer, tmp)
            if extra is not None:
                extra(tmp)
    accelerator.wait_for_everyone()


def save_checkpoint(run: Run) -> Path:
    """Write OUT/checkpoints/step-N for the run's step and keep the last `keep_last`; collective."""
    accelerator = run.accelerator
    # One entry per rank, in rank order: RNG streams differ, and so does the data position
    # when each rank reads its own shard.
    rng = gather_object([_rng_state()])
    data = gather_object([run.sampler.state_dict()])
    # The optimizer state keyed by parameter name; collective, complete on the main process.
    optimizer_state = get_optimizer_state_dict(run.model, run.optimizer.optimizer)

    def training_files(tmp: Path) -> None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(run.scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        torch.save(rng, tmp / "rng.pt")
        torch.save(data, tmp / "data.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(run.state)), encoding="utf-8")

    directory = run.out / "checkpoints" / f"step-{run.state.step}"
    save_model(run, directory, training_files)
    if accelerator.is_main_process:
        for old in checkpoint_dirs(run.out)[: -run.config.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return directory


def restore(run: Run, directory: Path) -> None:
    """Restore everything but the weights (loaded before `prepare`) from a checkpoint."""
    accelerator = run.accelerator
    load_optimizer_state(run.unwrapped, run.optimizer.optimizer, _load(directory / "optimizer.pt"), directory / "optimizer.pt")
    run.scheduler.load_state_dict(_load(directory / "scheduler.pt"))
    if accelerator.scaler is not None and (directory / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(_load(directory / "scaler.pt"))
    run.state = TrainerState(**json.loads((directory / "trainer_state.json").read_text(encoding="utf-8")))
    rng, data = _load(directory / "rng.pt"), _load(directory / "data.pt")
    if len(rng) != accelerator.num_processes:
        raise ValueError(f"{directory}: saved by {len(rng)} processes, resumed on {accelerator.num_processes}")
    _set_rng_state(rng[accelerator.process_index])
    run.sampler.load_state_dict(data[accelerator.process_index])


def rewrite_log(path: Path, upto_step: int) -> None:
    """Drop log records after `upto_step`: a resumed run re-does those steps."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= upto_step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
