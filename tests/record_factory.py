"""Made-up measurement records for tests that do not measure: one factory on the record's own
schema id (``efflab.core.records.SCHEMA``), so a schema change reaches every fake record."""

from __future__ import annotations

from efflab.core.config import Knobs
from efflab.core.records import SCHEMA, STATUSES


def fake_record(status: str = "ok", *, preset: str = "cpu-tiny", workload: str = "train",
                knobs: dict | Knobs | None = None, message: str | None = None,
                **sections) -> dict:
    """A record as ``efflab.measure`` shapes it: the header every record has, ``knobs`` as
    given (a ``Knobs`` is turned into its dict; None gives the defaults for ``workload``), and
    whatever numbers the test needs as keyword sections (``latency_ms={...}``, ``memory={...}``)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    if knobs is None:
        knobs = Knobs(workload=workload)
    if isinstance(knobs, Knobs):
        knobs = knobs.to_dict()
    return {"schema": SCHEMA, "status": status, "message": message, "preset": preset,
            "workload": workload, "knobs": knobs, **sections}
