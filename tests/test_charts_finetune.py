"""Lesson 16's charts: the measured peaks beside the fitted line and the budget, the accumulated
steps apart, a plain placeholder before any data, and a frame missing a column refused by name.
Specs only: nothing is rendered."""

import json

import pandas as pd
import pytest

from efflab.ui.charts.finetune import (
    ACCUMULATION_COLUMNS,
    LARGEST_COLUMNS,
    accumulation_memory_chart,
    largest_batch_chart,
)

MIB = 2**20


def _marks(chart) -> list[str]:
    spec = chart.to_dict()
    return [m if isinstance(m, str) else m["type"]
            for m in (layer.get("mark") for layer in spec.get("layer", [spec]))]


def _largest_frame(budget=33 * MIB):
    """The shape largest_batch_under_budget returns: one-piece steps, the line's prediction,
    k = 8 accumulated steps, and k = 2 reusing the k = 8 measurement."""
    rows = []

    def row(method, k, b, peak, source, role, line=None):
        rows.append({"method": method, "k": k, "micro_batch": b, "effective_batch": k * b,
                     "peak_bytes": peak, "line_bytes": line, "budget_bytes": budget,
                     "fits": peak <= budget, "source": source, "role": role})

    for b, p in [(1, 17), (2, 20), (4, 29), (5, 34), (6, 39)]:
        row("one batch", 1, b, p * MIB, "measured", "walk", (14 + 3 * b) * MIB)
    row("line", 1, 6, 32 * MIB, "predicted", "prediction", 32 * MIB)
    row("accumulation", 8, 4, 32.5 * MIB, "measured", "largest")
    row("accumulation", 8, 5, 37 * MIB, "measured", "over budget")
    row("accumulation", 2, 4, 32.5 * MIB, "predicted", "largest")
    return pd.DataFrame(rows)


def _layer_data(chart) -> list[list[dict]]:
    spec = chart.to_dict()
    datasets = spec.get("datasets", {})
    return [datasets.get(layer.get("data", {}).get("name"), []) for layer in spec["layer"]]


def test_largest_batch_chart_draws_line_measured_points_prediction_and_budget():
    chart = largest_batch_chart(_largest_frame())
    assert _marks(chart) == ["line", "point", "point", "point", "rule", "text"]
    spec = chart.to_dict()
    layers = spec["layer"]
    assert layers[0]["encoding"]["y"]["field"] == "line_mib"          # the fitted line
    assert layers[1]["encoding"]["x"]["field"] == "micro_batch"
    assert layers[1]["encoding"]["y"]["field"] == "peak_mib"
    assert layers[1]["encoding"]["color"]["field"] == "series"
    assert layers[4]["encoding"]["y"]["field"] == "budget_mib"        # the budget as a rule
    data = _layer_data(chart)
    assert [r["budget_mib"] for r in data[4]] == [33.0]
    # measured points: the one-piece steps and only the largest k's accumulated steps (k = 2
    # reuses that measurement: predicted, not drawn as a measurement)
    assert sorted((r["series"], r["micro_batch"]) for r in data[1]) == sorted(
        [("one batch (measured)", b) for b in (1, 2, 4, 5, 6)]
        + [("accumulation (measured)", 4), ("accumulation (measured)", 5)])
    assert {r["micro_batch"] for r in data[2]} == {1, 2, 4}              # filled: within budget
    assert [(r["series"], r["micro_batch"]) for r in data[3]] == [("line's prediction", 6)]
    assert "k = 8 micro-batches" in json.dumps(spec["title"])


def test_accumulation_memory_chart_bars_ticks_and_the_budget():
    mem = pd.DataFrame({"k": [1, 2, 4, 8], "micro_batch": [8, 4, 2, 1],
                        "peak_bytes": [49 * MIB, 33 * MIB, 23 * MIB, 18 * MIB],
                        "activations": [35 * MIB, 18 * MIB, 9 * MIB, 4 * MIB]})
    chart = accumulation_memory_chart(mem, 34 * MIB)
    assert _marks(chart) == ["bar", "tick", "rule", "text"]
    bars = _layer_data(chart)[0]
    assert [r["fits"] for r in bars] == [False, True, True, True]
    assert chart.to_dict()["layer"][1]["encoding"]["y"]["field"] == "activations_mib"
    assert _marks(accumulation_memory_chart(mem)) == ["bar", "tick"]  # no budget, no rule


@pytest.mark.parametrize("build, columns", [(largest_batch_chart, LARGEST_COLUMNS),
                                            (accumulation_memory_chart, ACCUMULATION_COLUMNS)])
def test_a_frame_missing_a_column_is_refused_by_name(build, columns):
    full = (_largest_frame() if build is largest_batch_chart else
            pd.DataFrame({"k": [1], "micro_batch": [8], "peak_bytes": [1], "activations": [1]}))
    for col in columns:
        with pytest.raises(ValueError, match=rf"{build.__name__}: frame lacks column\(s\) \['{col}'\]"):
            build(full.drop(columns=[col]))


@pytest.mark.parametrize("build", [largest_batch_chart, accumulation_memory_chart])
def test_no_data_yet_is_a_placeholder_not_an_error(build):
    assert _marks(build(pd.DataFrame())) == ["text"]
    assert _marks(build(None)) == ["text"]
