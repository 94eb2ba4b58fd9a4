"""Lesson 02's table of number formats: which runs here and why, at this machine's measured peaks."""

from __future__ import annotations

import pandas as pd

from efflab.core.config import PRECISIONS, Knobs, ModelConfig
from efflab.measurement.flops import step_flops_estimate
from efflab.techniques.precision import COMPUTE_DTYPE, PrecisionConfig, refusal


def availability_table(cfg: ModelConfig, knobs: Knobs, calibration: dict) -> pd.DataFrame:
    """One row per precision for ``knobs`` on preset ``cfg``: runs here or not, why, the
    predicted step time at this machine's measured peak for its format, and the bytes per
    parameter it stores (what the lesson shows beside its toggles)."""
    flops = step_flops_estimate(cfg, knobs)
    rows = []
    for p in PRECISIONS:
        pc = PrecisionConfig(p)
        peak = calibration["matmul"][COMPUTE_DTYPE[p]]["flops_per_s"]
        why = refusal(pc, flops, calibration)
        rows.append({"precision": p, "runs here": why is None,
                     "compute format": COMPUTE_DTYPE[p], "measured peak GFLOP/s": peak / 1e9,
                     "predicted step s": flops / peak, "bytes per weight": pc.param_bytes,
                     "why not": why or ""})
    return pd.DataFrame(rows)
