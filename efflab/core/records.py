"""What a measurement record is, in plain data: its schema id, its statuses, and its table form.

Pandas only — no torch, no altair — so the store, the charts and an instructor's grading
machine can all read records without the measuring code.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

SCHEMA = "efflab.record/1"
STATUSES = ("ok", "oom", "error", "refused")
_ALLOC_FAILED = ("can't allocate memory", "cannot allocate memory", "out of memory")


def is_out_of_memory(message: str | None) -> bool:
    """Whether an error message says an allocation failed, so the record's status is ``oom``
    (torch's CPU allocator raises a plain RuntimeError "DefaultCPUAllocator: can't allocate
    memory ...", CUDA an OutOfMemoryError, Python a MemoryError)."""
    text = (message or "").lower()
    return "memoryerror" in text or any(s in text for s in _ALLOC_FAILED)


def records_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Records -> one row each, nested keys flattened with dots (``latency_ms.median``);
    tracebacks and training curves are left out of the table."""
    records = list(records)
    for r in records:
        if not isinstance(r, dict):
            raise TypeError(f"a record must be a dict, got {type(r).__name__}: {r!r:.80}")
    if not records:
        return pd.DataFrame()
    slim = [_slim(r) for r in records]
    return pd.json_normalize(slim, sep=".")


def _slim(record: dict) -> dict:
    """A record without what does not fit a table: tracebacks and training curves. (The
    per-window held-out losses stay, as ``quality.window_losses``: the paired quality
    comparisons of ``efflab.studies.analysis`` read them.)"""
    return {k: v for k, v in record.items() if k not in ("traceback", "curve")}
