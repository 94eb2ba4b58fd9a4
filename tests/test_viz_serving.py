"""Lesson 10/11 charts: each builds from the rows the library produces, shows the spread and
the theory layer, and an empty frame gives a placeholder, not an error."""

import pandas as pd

from efflab.ui.charts import serving as vz


def _marks(chart) -> list[str]:
    d = chart.to_dict()
    layers = d.get("layer", [d])
    return [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in layers]


def test_decode_cost_chart_has_spread_and_theory():
    df = pd.DataFrame([{"mode": m, "context": c, "ms": 1.0 + c * (m == "r"), "ms_p25": 0.9,
                        "ms_p75": 1.2, "n": 5, "theory_ms": 1.0} for m in ("c", "r") for c in (8, 64)])
    assert _marks(vz.decode_cost_chart(df)) == ["line", "rule", "line"]


def test_speculation_chart_draws_the_formula_and_the_target_line():
    df = pd.DataFrame([{"k": k, "tokens_per_s": 100 - k, "tokens_per_s_p25": 90,
                        "tokens_per_s_p75": 110, "n": 4, "acceptance_rate": 0.5,
                        "predicted_speedup": 1.0 - 0.1 * k} for k in (0, 2, 4)])
    assert _marks(vz.speculation_chart(df)) == ["point", "rule", "line", "rule"]


def test_latency_throughput_and_waste_and_bytes_charts():
    rows = pd.DataFrame([{"policy": p, "rate": r, "throughput_tok_s": 10 * r, "ttft_p50": 0.01 * r,
                          "ttft_p99": 0.05 * r, "tpot_p50": 0.01, "tpot_p99": 0.02}
                         for p in ("static", "continuous") for r in (1, 2)])
    assert _marks(vz.latency_throughput_chart(rows)) == ["area", "line", "point"]
    waste = pd.DataFrame([{"layout": "paged", "waste_per_seq_mean": 7.0, "waste_per_seq_max": 15,
                           "block_size": 16},
                          {"layout": "contiguous", "waste_per_seq_mean": 80.0,
                           "waste_per_seq_max": 120, "block_size": 128}])
    assert _marks(vz.waste_chart(waste)) == ["bar", "tick", "rule"]
    kv = pd.DataFrame([{"variant": "MHA", "positions": 8, "measured_bytes": 1024,
                        "formula_bytes": 1024}])
    assert _marks(vz.kv_bytes_chart(kv)) == ["line", "point"]


def test_empty_frames_give_placeholders():
    for build in (vz.kv_bytes_chart, vz.decode_cost_chart, vz.speculation_chart,
                  vz.latency_throughput_chart, vz.waste_chart):
        assert build(pd.DataFrame()).to_dict()["mark"]["type"] == "text"
