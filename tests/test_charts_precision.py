"""Lesson 02's loss-scale chart: what it draws from ``scaler_run``'s frame, and what it refuses."""

import pandas as pd
import pytest

from efflab.ui.charts import loss_scale_chart


def _frame():
    # the scale backs off twice (skipped steps), then grows after clean steps
    return pd.DataFrame({"step": [0, 1, 2, 3, 4], "scale": [2.0**24, 2.0**23, 2.0**22, 2.0**22, 2.0**23],
                         "log2 scale": [24.0, 23.0, 22.0, 22.0, 23.0],
                         "skipped": [True, True, False, False, False],
                         "loss": [4.0, 4.0, 3.9, 3.8, 3.7]})


def test_loss_scale_chart_plots_the_scale_per_step_and_marks_the_skipped_steps():
    spec = loss_scale_chart(_frame()).to_dict()
    line, points = spec["layer"]
    assert line["encoding"]["x"]["field"] == "step"
    assert line["encoding"]["y"]["field"] == "log2 scale"
    assert points["encoding"]["color"]["field"] == "skip"
    rows = next(iter(spec["datasets"].values()))
    assert [r["skip"] for r in rows] == ["yes", "yes", "no", "no", "no"]
    assert "skipped" in spec["title"]


def test_loss_scale_chart_refuses_a_frame_missing_a_column_by_name():
    with pytest.raises(ValueError, match=r"loss_scale_chart.*'skipped'"):
        loss_scale_chart(_frame().drop(columns=["skipped"]))


def test_loss_scale_chart_says_when_there_is_nothing_to_draw():
    spec = loss_scale_chart(pd.DataFrame()).to_dict()
    assert "no steps yet" in str(spec)
