"""Keep freed host memory for reuse, so a timing does not include the page faults of fresh memory.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc's malloc hands memory back to
the operating system when enough of it is free (it *trims* the heap's top, and serves large
blocks with ``mmap`` and returns them with ``munmap``), so the next allocation of that size
touches fresh pages and pays a page fault per 4 KiB. How often that happens depends on how much
memory a piece of code holds at once, not on how much work it does: a GPipe stage keeps the
activations of every micro-batch until its backwards, and its forwards took 1.20x as long as the
same forwards under 1F1B on a 2-core AMD EPYC (``benchmarks/allocator.py``: 1.01x with the
setting below); the pipeline lesson would have counted the difference as bubble. On a GPU,
PyTorch's caching allocator keeps freed blocks for reuse; :func:`keep_freed_memory` asks glibc
for the same (``mallopt``: no trimming, no per-block ``mmap`` up to 32 MiB), process-wide and for
the rest of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP = {
    # free memory at the heap's top is handed back only beyond this (mallopt takes an int)
    M_TRIM_THRESHOLD: 2**31 - 1,
    # blocks up to this size come from the heap, not their own mmap; 32 MiB is glibc's
    # largest allowed value on 64-bit machines
    M_MMAP_THRESHOLD: 32 * 2**20,
    # the heap grows in steps of at least this much
    M_TOP_PAD: 64 * 2**20,
}
NAMES = {M_TRIM_THRESHOLD: "trim_threshold", M_TOP_PAD: "top_pad",
         M_MMAP_THRESHOLD: "mmap_threshold"}


def _glibc():
    """The process's glibc, or None where the C library is another one (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> dict:
    """Make this process's malloc keep freed memory for reuse; say what was set.

    Returns ``{"applied": True, "libc": "glibc 2.36", "trim_threshold": ..., ...}`` (bytes), or
    ``{"applied": False, "libc": ..., "reason": ...}`` where the C library is not glibc or refused
    a setting; timings then include the allocator's page faults, as they do by default.
    """
    libc = _glibc()
    if libc is None:
        return {"applied": False, "libc": platform.libc_ver()[0] or "unknown",
                "reason": "the C library is not glibc, whose mallopt this uses"}
    said = {"libc": "glibc " + libc.gnu_get_libc_version().decode()}
    for param, value in KEEP.items():
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            return {"applied": False, **said,
                    "reason": f"mallopt refused {NAMES[param]}={value}"}
        said[NAMES[param]] = value
    return {"applied": True, **said}


__all__ = ["keep_freed_memory"]
