"""Charts of lesson 02 (number formats) over tables from :mod:`efflab.studies.precision_formats`:

* :func:`loss_scale_chart` — a GradScaler run step by step: log2 of the loss scale each step
  used, the steps skipped for inf/NaN gradients marked (``scaler_run``'s frame).

Altair and pandas only (no torch).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from efflab.ui.charts.marks import placeholder, require_columns

SCALE_COLUMNS = ("step", "log2 scale", "skipped")
SKIP_COLORS = {"no": "#4c78a8", "yes": "#e45756"}


def loss_scale_chart(frame: pd.DataFrame, *,
                     title: str = "GradScaler: the scale, step by step (skipped steps marked)",
                     width: int = 420, height: int = 180) -> alt.TopLevelMixin:
    """log2 of the loss scale per step (a line), each step a point coloured by whether the
    scaler skipped it. ``frame``: :func:`~efflab.studies.precision_formats.scaler_run`'s
    (columns :data:`SCALE_COLUMNS`)."""
    if frame is None or frame.empty:
        return placeholder(title, "no steps yet")
    require_columns(frame, SCALE_COLUMNS, "loss_scale_chart")
    t = frame.assign(skip=frame["skipped"].map({True: "yes", False: "no"}))  # [steps] rows
    base = alt.Chart(t).encode(
        x=alt.X("step:Q", title="step"),
        y=alt.Y("log2 scale:Q", title="log2 of the loss scale"))
    line = base.mark_line(color="#999999")
    points = base.mark_point(filled=True, size=60).encode(
        color=alt.Color("skip:N", title="step skipped",
                        scale=alt.Scale(domain=list(SKIP_COLORS), range=list(SKIP_COLORS.values()))),
        tooltip=["step:Q", alt.Tooltip("log2 scale:Q", format=".0f"), "skip:N"])
    return (line + points).properties(title=title, width=width, height=height)
