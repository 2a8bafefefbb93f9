"""Training-step time with glibc's default malloc against `swcm.allocator.keep_freed_memory`.

Builds the demo-shaped SWCM model of `benchmarks/train.py` (random weights, fp32) and times its
optimizer step — forward, backward, gradient clipping, AdamW — on one batch, in alternating
rounds under glibc's defaults and with freed memory kept, all in this process. Printed per
setting: the median step time, the minor page faults per step (pages the system had to zero on
first touch), and the ratio of the kept-memory time to the default one. Linux with glibc only.

    python benchmarks/allocator.py                   # demo shape, batch 24 × 32 → 32, a minute on 2 cores
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train import make_batch, make_step, swcm_model  # noqa: E402

from swcm.allocator import keep_freed_memory  # noqa: E402
from swcm.precision import cpu_name  # noqa: E402
from swcm.records import append_record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="demo", help="a benchmarks/train.py shape (default: demo)")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--target-length", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per setting, alternating")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round (after one untimed)")
    args = parser.parse_args()
    model, _ = swcm_model(args.shape, None)
    model.train()
    batch = make_batch(args, model.config.vocab_size, "cpu")
    step = make_step(model, batch, torch.float32, "cpu")
    times, faults = {"default": [], "kept": []}, {"default": [], "kept": []}
    for _ in range(args.rounds):
        for name in ("default", "kept"):
            if not keep_freed_memory(enable=name == "kept"):
                sys.exit("benchmarks/allocator.py: glibc's mallopt is not available here")
            step()
            for _ in range(args.steps):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, shape {args.shape}, batch {args.batch} × "
          f"{args.source_length} → {args.target_length}, fp32")
    for name in ("default", "kept"):
        print(f"  {name:8s} step {statistics.median(times[name]):.3f} s (median of {len(times[name])}), "
              f"{statistics.median(faults[name]):,.0f} minor page faults a step")
    print(f"  kept / default: {statistics.median(times['kept']) / statistics.median(times['default']):.3f} of the step time")
    append_record("allocator", {
        "settings": vars(args),
        "step_s_default": round(statistics.median(times["default"]), 4),
        "step_s_kept": round(statistics.median(times["kept"]), 4),
        "page_faults_default": statistics.median(faults["default"]),
        "page_faults_kept": statistics.median(faults["kept"]),
        "kept_over_default": round(statistics.median(times["kept"]) / statistics.median(times["default"]), 3),
    }, precision="fp32")


if __name__ == "__main__":
    main()
