"""How swcm's processes train together under `accelerate launch`: the kind of parallelism it
trains under, and how long a rank waits for the others.

swcm trains under DDP: one process per GPU over NCCL, or processes on a CPU over gloo. The two
other kinds that `accelerate launch` offers are refused, in one line, before anything is built:

- FSDP: validation decodes the dev set with `generate`. FSDP1 forbids running the sharded
  module's forward inside `summon_full_params`, where whole weights would be; under FSDP2 every
  rank would have to decode in step with the others (`synced_gpus`), since each forward gathers
  the weights collectively, and ranks whose decodes differ in length would wait for each other
  forever. Neither is done here, and neither runs without GPUs, where this project is tested.
- DeepSpeed: its optimiser state, part of every checkpoint, is restored only by unpickling
  (accelerate's `load_state`), which swcm does not do.

Work that is not training is shared out in one of two ways, each called by every process
(`accelerate launch` runs the same command in each):

- `on_main_process`: preparation that writes files (data, the encoder, model builds, reports)
  runs on the main process alone while the others wait; every process gets its result.
- `split_across_processes`: decoding and validation, where each process computes every N-th
  item and all get the whole list back in the original order, as one process computes it.

The process-group timeout is how long a rank waits in a collective (e.g. while the main process
prepares an encoder, the others wait for its path) before the run is ended.
`SWCM_DIST_TIMEOUT` (seconds) sets it; unset, it is torch's default: 10 minutes for NCCL,
30 for gloo.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, parse_flag_from_env

T = TypeVar("T")

TIMEOUT_ENV = "SWCM_DIST_TIMEOUT"
# What `accelerate launch` sets (from its flags or `accelerate config`) when asked for these.
LAUNCH_FLAGS = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
REFUSALS = {
    "FSDP": "training under FSDP is not supported: validation decodes with generate, which FSDP1 forbids inside "
            "summon_full_params and which deadlocks FSDP2 unless every rank decodes in step; "
            "use DDP (accelerate launch --multi_gpu)",
    "DeepSpeed": "training under DeepSpeed is not supported: its optimizer state, part of every checkpoint, is restored "
                 "only by unpickling (accelerate's load_state), which swcm does not do; use DDP (accelerate launch --multi_gpu)",
}


def refuse_unsupported_parallelism(distributed_type: DistributedType | None = None) -> None:
    """ValueError, in one line, when the launch asks for FSDP or DeepSpeed: through
    `accelerate launch` (its environment, read even where accelerate would quietly fall back
    to DDP, as it does on a CPU) or as an accelerator's `distributed_type`."""
    kinds = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}
    for kind, flag in LAUNCH_FLAGS.items():
        if parse_flag_from_env(flag) or kinds.get(distributed_type) == kind:
            raise ValueError(REFUSALS[kind])


def process_group_timeout() -> timedelta | None:
    """The process-group timeout `SWCM_DIST_TIMEOUT` sets (seconds, > 0), or None when it is
    unset or empty (torch's default). ValueError, in one line, for anything else."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds above 0")
    return timedelta(seconds=seconds)


def process_group_kwargs() -> dict:
    """Keyword arguments for accelerate's `PartialState`, which passes them on to torch's
    `init_process_group`: the timeout when `SWCM_DIST_TIMEOUT` sets one, else none.

    The same `timeout` that accelerate's `InitProcessGroupKwargs` carries to an `Accelerator`;
    swcm hands it to `PartialState` because the process group is set up by whatever asks for
    the rank first, which may be before any `Accelerator` exists (pretraining builds each
    rank's data stream first)."""
    timeout = process_group_timeout()
    return {} if timeout is None else {"timeout": timeout}


def distributed_state() -> PartialState:
    """This process's place in the launch (`.process_index`, `.num_processes`), set up as
    `train()` sets it up. Call this, not a bare `PartialState()`, before `train()` when you
    need the rank (e.g. to build a sharded stream): accelerate fixes its state on first use."""
    return PartialState(cpu=not has_accelerator_device(), **process_group_kwargs())


def has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def is_main_process() -> bool:
    """Whether this is the process that writes outputs and prints (the only one outside a launch)."""
    return distributed_state().is_main_process


def on_main_process(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` run by the main process alone, its result handed to every process.

    Every process of the launch calls this; the others wait (as long as the process-group
    timeout allows) until the main process is done, so nothing that `fn` writes is read half
    written, and `fn` decides once for all (whether a stage is done, where an encoder is). An
    error in `fn` is raised on every process (the same exception where it pickles). The result
    must pickle. In one process, simply `fn(*args, **kwargs)`.
    """
    state = distributed_state()
    if state.num_processes == 1:
        return fn(*args, **kwargs)
    outcome: list = [None]
    if state.is_main_process:
        try:
            outcome = [(True, fn(*args, **kwargs))]
        except Exception as err:
            outcome = [(False, err if _pickles(err) else RuntimeError(f"on the main process: {type(err).__name__}: {err}"))]
            broadcast_object_list(outcome)
            raise
    broadcast_object_list(outcome)
    done, value = outcome[0]
    if not done:
        raise value
    return value


def _pickles(value) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


def split_across_processes(items: Sequence, fn: Callable[[object], T], across_processes: bool = True) -> list[T]:
    """`[fn(item) for item in items]`, with the items shared out over the launch's processes.

    Each process computes every N-th item (N processes; items of similar size, e.g. batches
    sorted by length, are thereby spread evenly) and every process gets the whole list back
    (accelerate's `gather_object`), in the order of `items`: the same values as one process
    computes, item by item. Every process calls this with the same `items`. With
    `across_processes=False`, or in one process, each process computes every item itself.
    """
    state = distributed_state() if across_processes else None
    if state is None or state.num_processes == 1:
        return [fn(item) for item in items]
    mine = [(i, fn(items[i])) for i in range(state.process_index, len(items), state.num_processes)]
    results: list = [None] * len(items)
    for i, value in gather_object(mine):
        results[i] = value
    return results


# What torchrun (accelerate launch's launcher) tells each process about the launch.
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                    "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_alone(module: str, function: str, *args, **kwargs) -> None:
    """`module.function(*args, **kwargs)` in a new Python process outside the launch: one
    process, no process group, as if run without `accelerate launch`. For a main process's work
    (under `on_main_process`) that trains, which in the launch would wait for the others. The
    arguments go as JSON on its standard input; its output and errors pass through; a failure is a one-line error."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("TORCHELASTIC_")}
    code = ("import importlib, json, sys; args, kwargs = json.load(sys.stdin); "
            "getattr(importlib.import_module(sys.argv[1]), sys.argv[2])(*args, **kwargs)")
    done = subprocess.run([sys.executable, "-c", code, module, function], input=json.dumps([list(args), kwargs]),
                          text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{module}.{function} failed in a process of its own (exit status {done.returncode}; its error is above)")
