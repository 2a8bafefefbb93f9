"""benchmarks/gpu_check.sh, where there is no GPU: one line saying that it needs one, and a
non-zero exit status. (Where there is one, it is run by hand: it takes minutes.)"""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0


def test_without_a_gpu_it_says_so_in_one_line():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, here or on a GPU machine
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "gpu_check.sh needs a CUDA GPU; torch sees none here\n"
