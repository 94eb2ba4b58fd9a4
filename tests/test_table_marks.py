"""Tables mark what charts mark: a ``reused`` column (taken from the store, not measured now)
and a ``noisy`` column (the timing was flagged unstable), read from the records' own flags."""

import math

import pandas as pd

from efflab.studies.analysis import batching_table, technique_table


def row(b, reused=None, noisy=None, status="ok", knob="fp32"):
    """One records-frame row as a sweep returns it (numbers made up); ``None`` = no flag."""
    if status != "ok":
        return {"knobs.batch_size": b, "knobs.precision": knob, "status": status,
                "message": "over budget", "reused": reused}
    ms = 10.0 + b
    return {"knobs.batch_size": b, "knobs.precision": knob, "status": "ok", "message": None,
            "reused": reused, "latency_ms.median": ms, "latency_ms.p25": ms * 0.9,
            "latency_ms.p75": ms * 1.1, "latency_ms.n": 5, "latency_ms.noisy": noisy,
            "throughput.tokens_per_step": b * 128, "throughput.tokens_per_s": b * 128e3 / ms,
            "theory.roofline.arithmetic_intensity": 10.0 * b, "theory.roofline.bound": "compute",
            "flops.mfu": 0.1, "memory.peak_bytes": b * 2**20}


def test_batching_table_has_reused_and_noisy_columns_from_the_records():
    df = pd.DataFrame([row(1), row(2, reused=True), row(4, noisy=True),
                       row(8, reused=True, noisy=True), row(16, noisy=False),
                       row(32, reused=True, status="refused")])
    t = batching_table(df)
    assert list(t["batch"]) == [1, 2, 4, 8, 16]
    assert t["reused"].tolist() == [False, True, False, True, False]
    assert t["noisy"].tolist() == [False, False, True, True, False]


def test_tables_without_the_flags_mark_nothing():
    df = pd.DataFrame([row(1), row(2)]).drop(columns=["reused", "latency_ms.noisy"])
    t = batching_table(df)
    assert not t["reused"].any() and not t["noisy"].any()
    t = technique_table(df, "precision")
    assert not t["reused"].any() and not t["noisy"].any()


def test_technique_table_marks_failed_rows_reused_but_never_noisy():
    df = pd.DataFrame([row(8, knob="fp32", noisy=True), row(8, knob="bf16", reused=True),
                       row(8, knob="fp16", reused=True, status="refused")])
    t = technique_table(df, "precision")
    assert t["reused"].tolist() == [False, True, True]
    assert t["noisy"].tolist()[:2] == [True, False]
    assert math.isnan(t["noisy"].tolist()[2])  # a refused point has no timing to be noisy
    assert t.loc[2, "message"] == "over budget"
