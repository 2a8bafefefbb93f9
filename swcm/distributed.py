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

The process-group timeout is how long a rank waits in a collective (e.g. while the main process
decodes the validation set, the others wait for its metrics) before the run is ended.
`SWCM_DIST_TIMEOUT` (seconds) sets it; unset, it is torch's default: 10 minutes for NCCL,
30 for gloo.
"""

from __future__ import annotations

import os
from datetime import timedelta

from accelerate.utils import DistributedType, parse_flag_from_env

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
