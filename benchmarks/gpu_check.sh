#!/usr/bin/env bash
# What a machine with a CUDA GPU checks, meant to take under 5 minutes on one GPU (each stage's
# `timeout` only ends a hang):
#
#   1. the tests marked `cuda` (the precision chosen for this GPU, training on it);
#   2. 20 pretraining steps of a base-shaped model (XLM-R base: hidden 768, 12 layers, vocabulary
#      135k) in bf16 where the GPU runs it natively (else in swcm's automatic choice), beside a
#      transformers MBart of the same shape: tokens/s, and MFU against the GPU's dense bf16 peak
#      (benchmarks/train.py; known GPUs, or PEAK_TFLOPS=...);
#   3. with two GPUs or more, `swcm pretrain` under `accelerate launch` on two processes (DDP over
#      NCCL), a small model built here from a stand-in encoder;
#   4. decoding: greedy generation of a base-shaped model on the GPU, with and without the KV
#      cache (benchmarks/decode.py), and the CPU decode benchmark against CTranslate2
#      (benchmarks/decode_engines.py; needs `pip install -e ".[bench]"`).
#
#   bash benchmarks/gpu_check.sh                       # in the environment swcm is installed in
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Each stage prints its time; the script ends with the stages that failed, and exits non-zero
# if any did. Without a CUDA GPU it says so in one line and exits with status 1.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}

if ! gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null); then
    echo "gpu_check.sh: $PYTHON cannot import torch; install swcm first (pip install -e \".[test]\")" >&2
    exit 1
fi
if [ "$gpus" -lt 1 ]; then
    echo "gpu_check.sh needs a CUDA GPU; torch sees none here" >&2
    exit 1
fi

# This GPU, and the precision swcm's `auto` picks for it (bf16 only where native).
precision=$("$PYTHON" - <<'EOF'
import sys
import torch
from swcm.precision import auto_mixed_precision

choice = auto_mixed_precision("cuda")
free, total = torch.cuda.mem_get_info()
print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()} ({total / 2**30:.0f} GiB), torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}; swcm's automatic precision: {choice.mixed_precision} ({choice.reason})", file=sys.stderr)
print(choice.mixed_precision)
EOF
) || exit 1

failed=()
started=$SECONDS
# stage NAME COMMAND...: run COMMAND, print its time, note a failure. Every command runs under
# `timeout`, so that a hang (a collective waiting forever) ends the stage, not the check.
stage() {
    local name=$1 start=$SECONDS
    shift
    echo
    echo "== $name"
    "$@"
    local status=$?
    echo "-- $name: $((SECONDS - start)) s$([ $status -ne 0 ] && echo ", FAILED (status $status)")"
    [ $status -eq 0 ] || failed+=("$name")
}

stage "CUDA tests" timeout 120 "$PYTHON" -m pytest -q -m cuda tests

stage "20 pretraining steps, base shape, $precision" timeout 150 \
    "$PYTHON" benchmarks/train.py --device cuda --shape base --precision "$precision" --steps 20 \
    --batch "${BATCH:-16}" --source-length 128 --target-length 128 ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"}

ddp() {
    local work
    work=$(mktemp -d) || return 1
    # A small model from a stand-in encoder trained here on UDHR text (no download), and the
    # text of six languages to pretrain on.
    timeout 60 "$PYTHON" - "$work" <<'EOF' || return 1
import sys
from pathlib import Path

from swcm.building import build_model_dir
from swcm.encoders.tiny_encoder import train_tiny_encoder
from swcm.resources import udhr

work = Path(sys.argv[1])
langs = ["zh", "bo", "ug", "kk", "mn", "en"]
for lang in langs:
    (work / f"{lang}.txt").write_text("".join(u["text"][lang] + "\n" for u in udhr("train")), encoding="utf-8")
texts = [u["text"][lang] for u in udhr("train") for lang in langs]
encoder = train_tiny_encoder(texts, work / "encoder", steps=20, warmup=2, hidden=256, layers=4, heads=4,
                             vocab_size=4000, batch_size=16, max_length=64, progress=False)
build_model_dir(encoder, work / "built")
EOF
    local mono=()
    for lang in zh bo ug kk mn en; do mono+=(--mono "$lang=$work/$lang.txt"); done
    # a rank left waiting (a collective out of step) fails after a minute, not NCCL's ten
    SWCM_DIST_TIMEOUT=${SWCM_DIST_TIMEOUT:-60} timeout 120 "$PYTHON" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision "$precision" --dynamo_backend no \
        -m swcm.cli pretrain --model "$work/built" --out "$work/ddp" "${mono[@]}" --max-steps 20 \
        --batch-size 16 --log-every 10 --save-every 20 --no-progress --max-source-length 64 --max-target-length 64 \
        || return 1
    timeout 30 "$PYTHON" - "$work/ddp" <<'EOF'
import json
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
ranks = len(torch.load(out / "checkpoints" / "step-20" / "data.pt", weights_only=True))
print(f"DDP on {ranks} processes: step {last['step']}, loss {last['loss']:.3f}, {last['tokens_per_s']:.0f} tokens/s, "
      f"mixed precision {last['mixed_precision']}")
sys.exit(0 if ranks == 2 and last["step"] == 20 else 1)
EOF
    local status=$?
    rm -rf "$work"
    return $status
}
if [ "$gpus" -ge 2 ]; then
    stage "DDP, 2 processes" ddp
else
    echo
    echo "== DDP, 2 processes: skipped, one GPU"
fi

decode_dtype=$([ "$precision" = bf16 ] && echo bfloat16 || { [ "$precision" = fp16 ] && echo float16 || echo float32; })
stage "decoding on the GPU, $decode_dtype" timeout 60 \
    "$PYTHON" benchmarks/decode.py --device cuda --dtype "$decode_dtype" --new-tokens 64 --batch 16

if "$PYTHON" -c 'import ctranslate2' 2>/dev/null; then
    stage "decoding on the CPU against CTranslate2" timeout 150 \
        "$PYTHON" benchmarks/decode_engines.py --rounds 1 --single 4
else
    echo
    echo "== decoding on the CPU against CTranslate2: skipped, ctranslate2 is not installed (pip install -e \".[bench]\")"
fi

echo
echo "gpu_check.sh: $((SECONDS - started)) s in all"
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check.sh: failed: ${failed[*]}" >&2
    exit 1
fi
