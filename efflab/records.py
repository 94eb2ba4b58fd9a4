"""What a measurement record is, in plain data: its schema id, its statuses, and its table form.

Pandas only — no torch, no altair — so the store, the charts and an instructor's grading
machine can all read records without the measuring code.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

SCHEMA = "efflab.record/1"
STATUSES = ("ok", "oom", "error", "refused")


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
    """A record without what does not fit a table cell: tracebacks, training curves and the
    per-window held-out losses (kept in the record for paired quality comparisons)."""
    out = {k: v for k, v in record.items() if k not in ("traceback", "curve")}
    if isinstance(out.get("quality"), dict) and "window_losses" in out["quality"]:
        out["quality"] = {k: v for k, v in out["quality"].items() if k != "window_losses"}
    return out
