"""Charts of lessons 12-13 hold what they promise: theory and intervals beside measurement,
the 98% floor and 5x line, published exponents beside the fit, placeholders when empty."""

import json

import pandas as pd

from efflab.studies.scaling import PUBLISHED, scaling_fit
from efflab.ui.charts.compression import (
    frontier_chart,
    sparsity_quality_chart,
    sparsity_speed_chart,
)
from efflab.ui.charts.scaling import isoflop_chart, scaling_law_chart
from tests.test_scaling import _synthetic


def _spec(chart) -> str:
    return json.dumps(chart.to_dict())


def test_scaling_charts_show_fit_vertices_and_published_laws():
    runs = _synthetic()
    runs["name"] = [f"s{i}" for i in range(len(runs))]
    runs["tokens"] = runs["budget"] / (6 * runs["n_params"])
    runs["val_se"] = 0.01
    fit = scaling_fit(runs, n_boot=20)
    iso = _spec(isoflop_chart(runs, fit))
    assert "vertex inside sizes tried" in iso and "strokeDash" in iso
    law = _spec(scaling_law_chart(fit, PUBLISHED))
    assert "Chinchilla (a = 0.50)" in law and "Kaplan (a = 0.73)" in law and "this sweep" in law
    assert "D_opt (tokens)" in law
    assert "no runs yet" in _spec(isoflop_chart(pd.DataFrame()))


def _rows():
    return pd.DataFrame([
        {"method": "dense", "sparsity": 0.0, "bits_per_byte": 1.6, "bits_per_byte_ci95": 0.02,
         "tokens_per_s": 100.0, "tokens_per_s_p25": 95.0, "tokens_per_s_p75": 104.0, "n": 5,
         "theory_tokens_per_s": 100.0},
        {"method": "structured", "sparsity": 0.33, "bits_per_byte": 1.9, "bits_per_byte_ci95": 0.02,
         "tokens_per_s": 120.0, "tokens_per_s_p25": 110.0, "tokens_per_s_p75": 125.0, "n": 5,
         "theory_tokens_per_s": 140.0},
    ])


def test_compression_charts_draw_theory_intervals_and_the_claim_lines():
    speed = _spec(sparsity_speed_chart(_rows()))
    assert "theory_tokens_per_s" in speed and "tokens_per_s_p25" in speed
    quality = _spec(sparsity_quality_chart(_rows()))
    assert '"hi"' in quality or "hi" in quality
    table = pd.DataFrame([
        {"label": "teacher", "base": "teacher", "quant": "fp32", "quality": 1.0, "quality_lo": 1.0,
         "quality_hi": 1.0, "speedup": 1.0, "shrink": 1.0, "weight_bytes": 10, "tokens_per_s": 1.0},
        {"label": "x", "base": "student", "quant": "int4-weight g64", "quality": 0.97,
         "quality_lo": 0.96, "quality_hi": 0.98, "speedup": 2.0, "shrink": 6.0, "weight_bytes": 2,
         "tokens_per_s": 2.0}])
    spec = frontier_chart(table, "shrink", front=table).to_dict()
    data = list(spec["datasets"].values())
    assert [{"q": 0.98}] in data and [{"x": 5.0}] in data  # the floor and the 5x line
    assert "no candidate measured yet" in _spec(frontier_chart(pd.DataFrame(), "speedup"))


def test_scaling_law_chart_renders_offline():
    from efflab.ui.charts import to_svg

    runs = _synthetic()
    fit = scaling_fit(runs, n_boot=10)
    svg = to_svg(scaling_law_chart(fit, PUBLISHED))
    assert svg.count("<path") > 6  # lines, rules and points drawn, not an error placeholder


def test_isoflop_and_compression_charts_render_offline():
    from efflab.ui.charts import to_svg

    runs = _synthetic()
    runs["name"] = [f"s{i}" for i in range(len(runs))]
    runs["tokens"] = runs["budget"] / (6 * runs["n_params"])
    runs["val_se"] = 0.01
    assert to_svg(isoflop_chart(runs, scaling_fit(runs, n_boot=10))).count("<path") > 10
    assert "<svg" in to_svg(sparsity_speed_chart(_rows()))
    assert "<svg" in to_svg(sparsity_quality_chart(_rows()))
