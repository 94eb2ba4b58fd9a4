"""Measurement: timing, memory by category, FLOPs and MFU, energy, the machine, the record."""

from efflab.measurement.core import SCHEMA, STATUSES, measure

__all__ = ["SCHEMA", "STATUSES", "measure"]
