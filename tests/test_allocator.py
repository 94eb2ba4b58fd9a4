"""keep_freed_memory: memory freed and allocated again costs no fresh page faults."""

import json
import subprocess
import sys

import pytest

from efflab.measurement import allocator
from efflab.measurement.allocator import keep_freed_memory

# Holds 8 blocks of 4 MB at once, writes them and frees them (as a GPipe stage holds its
# micro-batches' activations), then prints the minor page faults per round once warm and, with
# "keep", what keep_freed_memory said. malloc itself, not torch, so that nothing else allocates
# between the blocks and the heap's layout is the same every run.
ROUNDS = """
import ctypes, json, resource, sys
from efflab.measurement.allocator import keep_freed_memory
said = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rounds(n):
    for _ in range(n):
        held = [libc.malloc(4_000_000) for _ in range(8)]
        for block in held:
            ctypes.memset(block, 1, 4_000_000)
        for block in held:
            libc.free(block)
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(json.dumps({"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10,
                  "said": said}))
"""
PAGES_PER_ROUND = 8 * 4_000_000 // 4096


def _rounds(mode: str) -> dict:
    """ROUNDS in a fresh process: the setting lasts for the rest of a process, so not this one."""
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")
def test_memory_freed_and_taken_again_faults_no_fresh_pages():
    default, kept = _rounds("default"), _rounds("keep")
    # glibc's default hands the 32 MB back and faults most of its pages in again every round
    assert default["faults"] > PAGES_PER_ROUND / 2
    assert kept["faults"] < PAGES_PER_ROUND / 100
    said = kept["said"]
    assert said["applied"] and said["libc"].startswith("glibc ")
    assert said["mmap_threshold"] == 32 * 2**20 and said["trim_threshold"] == 2**31 - 1


def test_another_c_library_is_left_alone_and_says_why(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    said = keep_freed_memory()
    assert said["applied"] is False and "not glibc" in said["reason"]
