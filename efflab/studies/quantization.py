"""Lesson 05's table: what each quantization scheme stores, reads per token and loses.

Built from the techniques layer's quantizers (:mod:`efflab.techniques.quantization`) on the
shipped weights, with this machine's calibrated read bandwidth."""

from __future__ import annotations

import pandas as pd

from efflab.core.weights import load_model
from efflab.techniques.quantization import (
    QuantizationConfig,
    layer_sqnr,
    model_bytes,
    weight_bytes_per_token,
)
from efflab.techniques.registry import apply_


def quantization_table(preset: str, schemes=("none", "int8-weight", "int4-weight"),
                       group_size: int = 64, calibration: dict | None = None):
    """Per scheme, for ``preset``'s shipped weights: model bytes as stored, bytes read per
    decoded token at batch 1, the bandwidth bound tokens/s ≤ read bandwidth / bytes per token
    (with this machine's calibrated read bandwidth), and the weakest layer's SQNR."""
    rows = []
    for mode in schemes:
        config = QuantizationConfig(mode, group_size)
        model = apply_(load_model(preset), config)
        per_token = weight_bytes_per_token(model)
        row = {"scheme": mode, "group size": group_size if mode == "int4-weight" else None,
               "model MB": model_bytes(model) / 1e6, "MB read per token": per_token / 1e6}
        if calibration is not None:
            bw = calibration.get("read_bandwidth_bytes_per_s", calibration["bandwidth_bytes_per_s"])
            row["bound tokens/s"] = bw / per_token
        if mode != "none":
            sq = layer_sqnr(load_model(preset), config)
            row["min layer SQNR dB"] = min(r["sqnr_db"] for r in sq)
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["quantization_table"]
