"""Lesson 14's charts: theory beside measurement, spread on every measured point, and a plain
placeholder (never an error) before any data arrives. Specs only: nothing is rendered."""

import json

import pandas as pd

from efflab.systems.distributed import AlphaBeta, fit_line
from efflab.ui.charts import distributed as dviz


def _marks(chart) -> list[str]:
    spec = chart.to_dict()
    return [m if isinstance(m, str) else m["type"]
            for m in (layer.get("mark") for layer in spec.get("layer", [spec]))]


def _allreduce_frame():
    n = [4, 64, 1024, 16384, 262144]
    t = [0.5 + b / 4e5 for b in n]
    return pd.DataFrame({"world_size": 2, "bytes": n, "median_ms": t, "p25_ms": [x * 0.9 for x in t],
                         "p75_ms": [x * 1.3 for x in t], "n": 9})


def test_allreduce_chart_draws_fit_spread_and_held_out_points():
    f = _allreduce_frame()
    chart = dviz.allreduce_chart(f, fit_line(AlphaBeta(5e-4, 4e8), 4, 262144), [64, 16384])
    assert _marks(chart) == ["line", "rule", "tick", "point"]
    spec = json.dumps(chart.to_dict())
    assert "held out (test)" in spec and "p75_ms" in spec


def test_step_time_chart_puts_the_prediction_beside_the_measurement():
    f = pd.DataFrame([
        {"world_size": 2, "bucket_cap_mb": 25.0, "n_buckets": 1, "step_ms": 80.0, "step_p25_ms": 75.0,
         "step_p75_ms": 90.0, "n": 5, "compute_ms": 70.0, "compute_p25_ms": 68.0,
         "compute_p75_ms": 72.0, "pred_ms": 78.0, "comm_pred_ms": 8.0, "pred_error": -0.025},
        {"world_size": 1, "bucket_cap_mb": 25.0, "n_buckets": 1, "step_ms": 150.0,
         "step_p25_ms": 140.0, "step_p75_ms": 160.0, "n": 5, "compute_ms": 150.0,
         "compute_p25_ms": 140.0, "compute_p75_ms": 160.0, "pred_ms": None, "comm_pred_ms": None,
         "pred_error": None}])
    chart = dviz.step_time_chart(f)
    assert _marks(chart) == ["bar", "rule", "tick"]
    # one process has no "compute only" bar: alone, a step is all compute
    bars = chart.to_dict()["datasets"]
    rows = [r for d in bars.values() for r in d if "what" in r]
    assert sum(r["what"].startswith("compute") for r in rows) == 1


def test_memory_chart_stacks_categories_with_the_formula_tick():
    f = pd.DataFrame([{"sharding": s, "rank": r, "world_size": 2, "category": c,
                       "measured_bytes": 100, "formula_bytes": 100, "n_params": 25}
                      for s in ("none", "zero1") for r in (0, 1)
                      for c in ("parameters", "gradients", "optimizer")])
    assert _marks(dviz.memory_chart(f)) == ["bar", "tick"]


def test_empty_tables_give_placeholders():
    for build in (dviz.allreduce_chart, dviz.step_time_chart, dviz.memory_chart,
                  dviz.loss_curves_chart):
        spec = json.dumps(build(pd.DataFrame()).to_dict())
        assert "yet" in spec
