"""Charts of lesson 16 (fine-tuning memory), each over one table from
:mod:`efflab.studies.finetune_memory`:

* :func:`largest_batch_chart` — peak memory per micro-batch: the measured one-piece steps, the
  line fitted to the first of them and its prediction, the accumulated steps at the largest k,
  and the budget as a rule (``largest_batch_under_budget``'s frame);
* :func:`accumulation_memory_chart` — one batch's peak and saved activations per k micro-batches,
  with the budget as a rule (``accumulation_memory``'s frame).

Tracked memory is counted in bytes, the same on every run of a configuration: each measured
point is one deterministic measurement, so there is no spread to draw (the subtitles say so).
Altair and pandas only (no torch).
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from efflab.ui.charts.marks import require_columns

WIDTH, HEIGHT = 420, 260
MIB = 2**20

LARGEST_COLUMNS = ("method", "k", "micro_batch", "peak_bytes", "line_bytes", "budget_bytes",
                   "fits", "source", "role")
ACCUMULATION_COLUMNS = ("k", "micro_batch", "peak_bytes", "activations")
SERIES_COLORS = {"one batch (measured)": "#4c78a8", "accumulation (measured)": "#f58518",
                 "line's prediction": "#999999"}


def _empty(title: str, text: str) -> alt.Chart:
    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(size=13).encode(text="t:N").properties(
        title=title, width=WIDTH, height=60)


def _budget_rule(budget_bytes: float, label: str = "budget") -> list[alt.Chart]:
    b = pd.DataFrame({"budget_mib": [budget_bytes / MIB], "label": [label]})
    rule = alt.Chart(b).mark_rule(color="#e45756", strokeDash=[6, 3], strokeWidth=2).encode(
        y="budget_mib:Q", tooltip=[alt.Tooltip("budget_mib:Q", format=".2f", title="budget (MiB)")])
    text = alt.Chart(b).mark_text(align="right", dy=-6, color="#e45756").encode(
        y="budget_mib:Q", x=alt.value(WIDTH - 4), text="label:N")
    return [rule, text]


def largest_batch_chart(frame: pd.DataFrame, *, title: str = "The largest batch under a budget",
                        subtitle: str | None = None) -> alt.TopLevelMixin:
    """Peak bytes (MiB) per micro-batch: one-piece steps (blue) and the steps of k_max
    accumulated micro-batches (orange), filled where within the budget and hollow where over;
    the line fitted to the first one-piece steps (dashed) with its prediction (grey diamond);
    the budget as a red rule. ``frame``: :func:`~efflab.studies.finetune_memory.
    largest_batch_under_budget`'s (columns :data:`LARGEST_COLUMNS`)."""
    if frame is None or frame.empty:
        return _empty(title, "no measurements yet")
    require_columns(frame, LARGEST_COLUMNS, "largest_batch_chart")
    t = frame.copy()
    t["peak_mib"] = t.peak_bytes / MIB
    t["series"] = t.method.map({"one batch": "one batch (measured)",
                                "accumulation": "accumulation (measured)",
                                "line": "line's prediction"})
    t["within budget"] = t.fits.map({True: "within", False: "over"})
    pts = t[t.source == "measured"]
    kmax = int(pts[pts.method == "accumulation"].k.max()) if (pts.method == "accumulation").any() \
        else 1
    pts = pts[(pts.method != "accumulation") | (pts.k == kmax)]
    x = alt.X("micro_batch:Q", title="micro-batch (sequences per forward/backward)")
    y = alt.Y("peak_mib:Q", title="peak of one step (MiB, tracked)", scale=alt.Scale(zero=False))
    color = alt.Color("series:N", title=None, scale=alt.Scale(domain=list(SERIES_COLORS),
                                                              range=list(SERIES_COLORS.values())))
    tips = ["series:N", "k:Q", "micro_batch:Q", alt.Tooltip("peak_mib:Q", format=".3f"),
            "within budget:N", "role:N", "source:N"]
    line = t[t.method.isin(["one batch", "line"])].dropna(subset=["line_bytes"]).copy()
    line["line_mib"] = line.line_bytes / MIB
    layers = [
        alt.Chart(line).mark_line(color="#999999", strokeDash=[4, 3]).encode(
            x=x, y="line_mib:Q", tooltip=["micro_batch:Q", alt.Tooltip("line_mib:Q", format=".3f",
                                                                         title="line (MiB)")]),
        alt.Chart(pts).mark_point(size=80, strokeWidth=2).encode(
            x=x, y=y, color=color, tooltip=tips),
        alt.Chart(pts[pts.fits]).mark_point(size=80, filled=True).encode(
            x=x, y=y, color=color, tooltip=tips),
        alt.Chart(t[t.method == "line"]).mark_point(shape="diamond", size=140, filled=True).encode(
            x=x, y=y, color=color, tooltip=tips),
        *_budget_rule(float(t.budget_bytes.iloc[0])),
    ]
    return alt.layer(*layers).properties(
        title=alt.Title(title, subtitle=subtitle or [
            f"filled: within the budget · hollow: over · orange: k = {kmax} micro-batches of the "
            "micro-batch · dashed: the line through the first one-piece steps",
            "tracked bytes: one deterministic measurement per point (no spread to draw)"]),
        width=WIDTH, height=HEIGHT)


def accumulation_memory_chart(frame: pd.DataFrame, budget_bytes: float | None = None, *,
                              title: str = "One batch as k micro-batches: peak memory",
                              subtitle: str | None = None) -> alt.TopLevelMixin:
    """Per k micro-batches of one batch: the step's peak (bars) and its saved-activation
    high-water mark (ticks), in MiB, with ``budget_bytes`` as a red rule where given.
    ``frame``: :func:`~efflab.studies.finetune_memory.accumulation_memory`'s (columns
    :data:`ACCUMULATION_COLUMNS`)."""
    if frame is None or frame.empty:
        return _empty(title, "no measurements yet")
    require_columns(frame, ACCUMULATION_COLUMNS, "accumulation_memory_chart")
    t = frame.assign(peak_mib=frame.peak_bytes / MIB, activations_mib=frame.activations / MIB)
    if budget_bytes is not None:
        t = t.assign(fits=t.peak_bytes <= budget_bytes)
    x = alt.X("k:O", title="k micro-batches (same batch, same gradient)")
    tips = ["k:O", "micro_batch:Q", alt.Tooltip("peak_mib:Q", format=".3f"),
            alt.Tooltip("activations_mib:Q", format=".3f")]
    bar_color = (alt.condition("datum.fits", alt.value("#4c78a8"), alt.value("#bab0ac"))
                 if budget_bytes is not None else alt.value("#4c78a8"))
    layers = [
        alt.Chart(t).mark_bar(width=28).encode(
            x=x, y=alt.Y("peak_mib:Q", title="MiB (tracked)"), color=bar_color, tooltip=tips),
        alt.Chart(t).mark_tick(color="#f58518", thickness=3, size=34).encode(
            x=x, y="activations_mib:Q", tooltip=tips),
    ]
    if budget_bytes is not None:
        layers += _budget_rule(float(budget_bytes))
    return alt.layer(*layers).properties(
        title=alt.Title(title, subtitle=subtitle or [
            "bars: the step's peak (grey: over the budget) · orange ticks: saved activations' "
            "high-water mark", "tracked bytes: one deterministic measurement each (no spread)"]),
        width=WIDTH, height=HEIGHT)


__all__ = ["largest_batch_chart", "accumulation_memory_chart", "LARGEST_COLUMNS",
           "ACCUMULATION_COLUMNS"]
