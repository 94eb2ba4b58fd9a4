"""Predictions: recorded in the results store before the measurement, compared after it."""

import json
import sqlite3

import pandas as pd
import pytest

import efflab
from efflab.core.store import Store
from efflab.ui import predictions as pr


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "results")


def test_a_guess_is_stored_in_the_results_database_beside_the_records(store):
    store.append({"status": "ok", "preset": "cpu-tiny", "knobs": {}, "workload": "train"})
    efflab.predict("gain 1->8", 8, unit="x", store=store)
    efflab.predict("gain 1->8", 3.5, unit="x", store=store)  # a second thought: the latest counts
    with sqlite3.connect(store.path) as db:  # the same file a submission carries
        rows = db.execute("SELECT name, value, unit FROM predictions ORDER BY id").fetchall()
    assert rows == [("gain 1->8", "8", "x"), ("gain 1->8", "3.5", "x")]
    assert pr.guess("gain 1->8", store) == 3.5
    assert store.count() == 1  # the records table is untouched


def test_no_guess_is_not_an_error(store, capsys):
    assert efflab.predict("x", None, store=store) is None
    c = pr.compare("x", 12.0, theory=10.0, store=store)
    assert c["guess"] is None and "no guess" in c["text"]
    chart = efflab.compare_prediction("x", 12.0, theory=10.0, store=store)
    spec = chart.to_dict()
    labels = [r["label"] for d in spec["datasets"].values() for r in d if "label" in r]
    assert "no guess" in labels
    assert "no guess" in capsys.readouterr().out


@pytest.mark.parametrize("guess, measured, words", [
    (21.0, 10.0, "2.1x too high"), (2.0, 10.0, "5x too low"), (10.5, 10.0, "within 5%"),
    ("sdpa", "sdpa", "right"), ("naive", "sdpa", "you guessed 'naive'"),
])
def test_feedback_says_how_far_and_which_way(guess, measured, words):
    assert words in pr.miss_text(guess, measured)


def test_chart_has_guess_theory_and_measurement_with_spread(store):
    efflab.predict("speed-up", 3.0, unit="x", store=store)
    c = pr.compare("speed-up", 1.5, theory=2.0, spread=(1.4, 1.7), store=store)
    assert "2x too high" in c["text"] and "theory" in c["text"]
    spec = efflab.compare_prediction("speed-up", 1.5, theory=2.0, spread=(1.4, 1.7),
                                     store=store).to_dict()
    values = {r["what"]: r["value"] for d in spec["datasets"].values() for r in d if "what" in r
              and "value" in r}
    assert values == {"your guess": 3.0, "theory": 2.0, "measured": 1.5}
    rules = [r for d in spec["datasets"].values() for r in d if "lo" in r]
    assert rules == [{"what": "measured", "lo": 1.4, "hi": 1.7}]
    json.dumps(spec)  # a plain Vega-Lite spec


def test_ratio_reads_a_sweep():
    df = pd.DataFrame({"knobs.batch_size": [1, 8, 16], "status": ["ok", "ok", "refused"],
                       "throughput.tokens_per_s": [100.0, 350.0, None]})
    assert pr.ratio(df, "throughput.tokens_per_s", "batch_size", 8, 1) == 3.5
    assert pd.isna(pr.ratio(df, "throughput.tokens_per_s", "batch_size", 16, 1))


def test_bad_names_and_values_are_refused_clearly(store):
    with pytest.raises(ValueError, match="name"):
        efflab.predict("", 1, store=store)
    with pytest.raises(ValueError, match="value"):
        efflab.predict("x", object(), store=store)


def test_db_per_bit_line_runs_through_the_widest_scheme_with_slope_six():
    from efflab.ui.charts.predictions import db_per_bit_chart
    rows = [{"name": "h.0.mlp", "scheme": "int8-weight", "sqnr_db": 40.0},
            {"name": "h.1.mlp", "scheme": "int8-weight", "sqnr_db": 42.0},
            {"name": "h.0.mlp", "scheme": "int4-weight", "sqnr_db": 19.0},
            {"name": "h.1.mlp", "scheme": "none", "sqnr_db": float("inf")}]
    spec = db_per_bit_chart(rows).to_dict()
    line = [r for d in spec["datasets"].values() for r in d if "what" in r]
    assert [(r["bits"], round(r["sqnr_db"], 2)) for r in line] == [(4, 41.0 - 4 * 6.02), (8, 41.0)]
    pts = [r for d in spec["datasets"].values() for r in d if "name" in r]
    assert len(pts) == 3  # the unquantized row (no bits, infinite SQNR) is left out
