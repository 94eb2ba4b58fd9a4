"""The class-results chart: one mark per machine for each ratio a class measured.

Input is the table :func:`efflab.course.class_results.class_table` returns (columns
comparison, machine, median, p25, p75, n, students). Each comparison is a row of the chart;
each machine a coloured point at its median ratio with a bar from p25 to p75 (the spread over
its pairs of records) and ``n`` in the tooltip. The x axis is logarithmic — 2× faster and 2×
slower sit equally far from the grey line at 1, which means "no change". Altair only.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

NO_DATA = "no comparable records yet"


def class_results_chart(table: pd.DataFrame, title: str = "How hardware changes the answer"):
    """The chart of a class table (an empty table gives a chart that says so)."""
    if table is None or table.empty:
        return (alt.Chart(pd.DataFrame({"text": [NO_DATA]})).mark_text(size=14)
                .encode(text="text:N").properties(width=420, height=60, title=title))
    t = table.copy()
    order = list(dict.fromkeys(t["comparison"]))
    y = alt.Y("comparison:N", sort=order, title=None)
    x_scale = alt.Scale(type="log", nice=False, padding=12)
    color = alt.Color("machine:N", title="machine (fingerprint)", legend=alt.Legend(orient="bottom", columns=1))
    tooltip = [alt.Tooltip("comparison:N"), alt.Tooltip("machine:N"),
               alt.Tooltip("median:Q", format=".3g", title="median ratio"),
               alt.Tooltip("p25:Q", format=".3g"), alt.Tooltip("p75:Q", format=".3g"),
               alt.Tooltip("n:Q", title="pairs of records"), alt.Tooltip("students:N")]
    offset = alt.YOffset("machine:N")
    base = alt.Chart(t)
    spread = base.mark_rule(strokeWidth=2, opacity=0.6).encode(
        y=y, yOffset=offset, x=alt.X("p25:Q", scale=x_scale, title="ratio (log scale; 1 = no change)"),
        x2="p75:Q", color=color, tooltip=tooltip)
    points = base.mark_point(filled=True, size=70).encode(
        y=y, yOffset=offset, x=alt.X("median:Q", scale=x_scale), color=color, tooltip=tooltip)
    one = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(color="#888888", strokeDash=[4, 3]).encode(
        x=alt.X("x:Q", scale=x_scale))
    return (one + spread + points).properties(
        width=420, height=alt.Step(12 * max(1, t["machine"].nunique()) + 8), title=alt.TitleParams(
            title, subtitle="median over each machine's pairs of records; bars: p25–p75"))
