"""`keep_freed_memory`: large tensors freed and allocated again reuse their pages."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

PROBE = """
import json, resource, sys, torch
from swcm.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(json.dumps({"applied": applied, "faults": faults()}))
"""


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


def test_kept_memory_is_reused_without_fresh_pages():
    default, kept = _probe("default"), _probe("kept")
    assert kept["applied"]
    # 5 × 64 MiB is 81,920 pages of 4 KiB: glibc maps and zeroes each block afresh, the kept heap does not
    assert default["faults"] > 40_000
    assert kept["faults"] < 2_000


def test_it_can_be_turned_off():
    assert not _probe("kept", SWCM_KEEP_FREED_MEMORY="0")["applied"]
