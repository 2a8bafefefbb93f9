"""The `Accelerator` a run trains under (`distributed_state`, this process's place in the launch,
is `swcm.distributed`'s, kept here for the callers that import it from the training package)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState

from ..distributed import distributed_state, has_accelerator_device
from ..precision import PrecisionChoice, resolve_mixed_precision
from .config import TrainingConfig
from .tracking import make_trackers

def make_accelerator(config: TrainingConfig, step_probe: Callable[[], PrecisionChoice] | None = None
                     ) -> tuple[Accelerator, PrecisionChoice]:
    """The run's `Accelerator` in the precision `config.mixed_precision` resolves to, and that
    choice; `step_probe` decides "auto" on a CPU with bf16 instructions (`resolve_mixed_precision`)."""
    precision = resolve_mixed_precision(config.mixed_precision, step_probe=step_probe)
    if precision.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("fp16 mixed precision needs a GPU; use bf16 on CPU")
    state = AcceleratorState._shared_state
    # Several runs in one process (tests, experiment grids) may differ in precision; accelerate
    # keeps its state per process, so a single-process run starts from a clean one.
    if state and state.get("_mixed_precision") != precision.mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    # Without an accelerator device, accelerate treats a torchrun-style launch (what
    # `accelerate launch --multi_gpu` does) as distributed only when told to use the CPU:
    # then it is DDP over gloo, and a single process is unaffected.
    on_cpu = not has_accelerator_device()
    distributed_state()  # the process group, with its timeout, unless something asked for the rank before
    # The trackers log on the main process only: the others get none.
    log_with = make_trackers(config.report_to, config.out_dir) if distributed_state().is_main_process else None
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision.mixed_precision, log_with=log_with or None,
                              project_dir=str(config.out_dir))
    return accelerator, precision
