"""The building blocks every record chart shares: sizes, colours, the x axis, legends,
failure crosses, the marks for reused and noisy points, placeholders and panels.

A record chart (:mod:`efflab.ui.charts.records`) draws a tidy frame (:mod:`efflab.ui.charts.frame`) with
these parts, so every chart marks the same things the same way:

* failed / refused records: a red cross at their x, just above the axis, status written over it;
* reused records (taken from the store, not measured now): **hollow** marks — the ``fill``
  channel maps each row's ``fill_key`` (its series, or "reused from the store") to the series'
  colour or to transparent, and a ``stroke`` in the series' colour keeps the outline. The fill
  legend then lists the series plus a hollow "reused from the store" entry and stands in for
  the colour legend (Vega-Lite draws no legend for ``fillOpacity``, and ignores ``color`` on
  a mark that has both ``fill`` and ``stroke``);
* noisy timings (the record's ``latency_ms.noisy``): a **triangle** instead of a circle on
  charts of timed values, a "timing" legend, and "noisy: IQR/median 14%" in the tooltip.

Both appear only when the chart holds such a point, so a chart of fresh, stable measurements
looks as it always did.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import altair as alt
import numpy as np
import pandas as pd

from efflab.ui.charts.frame import (
    BUDGET,
    FAILED,
    MEASURED,
    NOISY,
    PREDICTED_PEAK,
    REUSED,
    STABLE,
    THEORY_ROOFLINE,
    axis_label,
    tidy,
)

WIDTH = 320
HEIGHT = 220
FAIL_Y = HEIGHT - 10  # pixel row of the failure crosses, just above the x axis

SERIES_COLORS = {MEASURED: "#1f77b4", THEORY_ROOFLINE: "#ff7f0e", FAILED: "#d62728"}
MEMORY_COLORS = {"parameters": "#4c78a8", "gradients": "#72b7b2", "optimizer": "#54a24b",
                 "activations": "#eeca3b", "kv_cache": "#b279a2", "other": "#bab0ac",
                 PREDICTED_PEAK: "#222222", BUDGET: "#e45756", FAILED: "#d62728"}
LEGEND_GREY = "#555555"
HOLLOW = "transparent"  # the fill of a reused mark
TIMING_SHAPES = {STABLE: "circle", NOISY: "triangle-up"}
_LEGEND = {"orient": "bottom", "direction": "horizontal", "labelLimit": 260}


# ----------------------------------------------------------------------------- axes, tooltips

def x_encoding(t: pd.DataFrame, x: str, numeric: bool, log_x: bool | None,
               ordinal: bool = False) -> alt.X:
    """Numeric x on a log2 axis when it spans a factor of 4 or more (batch sizes), else linear;
    ordinal for bar charts; nominal for a non-numeric knob (workload)."""
    title = axis_label(x)
    if not numeric:
        return alt.X("x:N", title=title, sort=sorted(t["x"].dropna().unique().tolist(), key=str))
    if ordinal:
        return alt.X("x:O", title=title, sort="ascending", axis=alt.Axis(labelAngle=0))
    values = sorted(float(v) for v in t["x"].dropna().unique())
    positive = bool(values) and values[0] > 0
    if log_x is None:
        log_x = positive and len(values) >= 3 and values[-1] / values[0] >= 4
    if log_x and not positive:
        raise ValueError(f"log_x=True needs positive values of {x}; got {values}")
    integers = all(float(v).is_integer() for v in values)
    axis = alt.Axis(values=values if len(values) <= 12 else alt.Undefined,
                    format="d" if integers else alt.Undefined, grid=True)
    # padding keeps the end points (and their error bars) off the plot's edges
    scale = (alt.Scale(type="log", base=2, padding=18) if log_x
             else alt.Scale(zero=False, nice=False, padding=18))
    return alt.X("x:Q", title=title + (", log scale" if log_x else ""), scale=scale, axis=axis)


def x_tooltip(x: str, numeric: bool) -> alt.Tooltip:
    """The tooltip line of the x value, titled like the axis."""
    return alt.Tooltip("x:Q" if numeric else "x:N", title=axis_label(x))


def record_tooltips(x: str, numeric: bool) -> list[alt.Tooltip]:
    """The tooltip lines every record mark starts with: x, preset, workload."""
    return [x_tooltip(x, numeric), alt.Tooltip("preset:N", title="preset"),
            alt.Tooltip("workload:N", title="workload")]


def mark_tooltips(timed: bool) -> list[alt.Tooltip]:
    """Tooltip lines for the marks: where the point came from, and (for timed values) how
    stable its timing was ("noisy: IQR/median 14%")."""
    tips = [alt.Tooltip("source:N", title="source")]
    if timed:
        tips.append(alt.Tooltip("spread_note:N", title="timing"))
    return tips


# ----------------------------------------------------------------------------- legends, channels

def with_series(t: pd.DataFrame, series: str) -> pd.DataFrame:
    """A copy of ``t`` with a constant ``series`` column (what the colour legend shows) and its
    ``fill_key`` (the series, or "reused from the store" for a reused row)."""
    out = t.copy()
    out["series"] = series
    out["fill_key"] = np.where(out["reused"], REUSED, series)
    return out


def any_reused(whole: pd.DataFrame) -> bool:
    """Whether any row of ``whole`` (every row a chart draws, all panels) was reused."""
    return bool(whole["reused"].any())


def color(domain: list[str], colors: dict[str, str], title: str | None = None, *,
          legend: bool = True) -> alt.Color:
    """The colour channel of a chart's series, with a bottom legend listing ``domain``
    (``legend=False`` when :func:`source_channels` draws the legend instead)."""
    return alt.Color("series:N", title=title,
                     scale=alt.Scale(domain=domain, range=[colors[d] for d in domain]),
                     legend=alt.Legend(columns=3, **_LEGEND) if legend else None)


def source_channels(whole: pd.DataFrame, domain: list[str], colors: dict[str, str]) -> dict:
    """Encoding channels that draw reused records hollow, or ``{}`` when ``whole`` holds no
    reused record. For layers whose data went through :func:`with_series` (a ``fill_key``).

    ``fill`` by ``fill_key``: each series' colour, transparent for "reused from the store"; its
    legend lists the series and the hollow reused entry (build the chart's :func:`color` with
    ``legend=False`` then). ``stroke`` by ``series`` in the same colours keeps the outline.
    ``domain``/``colors`` are those of the chart's :func:`color`.
    """
    if not any_reused(whole):
        return {}
    legend = alt.Legend(columns=3, symbolType="circle", symbolStrokeColor=LEGEND_GREY,
                        symbolStrokeWidth=1, **_LEGEND)
    return {"fill": alt.Fill("fill_key:N", title=None, legend=legend,
                             scale=alt.Scale(domain=[*domain, REUSED],
                                             range=[*(colors[d] for d in domain), HOLLOW])),
            "stroke": alt.Stroke("series:N", legend=None,
                                 scale=alt.Scale(domain=domain,
                                                 range=[colors[d] for d in domain]))}


def timing_channels(whole: pd.DataFrame) -> dict:
    """An encoding channel that draws noisy timings as triangles (stable ones as circles), or
    ``{}`` when ``whole`` holds no noisy record. For charts of timed values only."""
    if not bool(whole["noisy"].any()):
        return {}
    order = [STABLE, NOISY]
    legend = alt.Legend(symbolFillColor=LEGEND_GREY, symbolStrokeColor=LEGEND_GREY, **_LEGEND)
    return {"shape": alt.Shape("timing:N", title="timing", legend=legend,
                               scale=alt.Scale(domain=order,
                                               range=[TIMING_SHAPES[s] for s in order]))}


# ----------------------------------------------------------------------------- layers, panels

_panel_counter = itertools.count(1)


def unique_name() -> str:
    """A panel id for mark names (``measured_p3``), unique within the process.

    Names must be unique in one spec, and the SVG tests find marks by them. The id must not be
    bare digits: altair renames a layer ``base_<digits>`` inside a concat to ``base_<position>``,
    which makes names collide across nested concats (and Vega then mixes up their data).
    """
    return f"p{next(_panel_counter)}"


def failure_layers(t: pd.DataFrame, xenc: alt.X, x: str, numeric: bool, color: alt.Color,
                   name: str, whole: pd.DataFrame, domain: list[str],
                   colors: dict[str, str]) -> list[alt.Chart]:
    """Failed / refused records: a red cross at their x, just above the axis, with the status
    written over it and the message in the tooltip (hollow when the record was reused)."""
    failed = t[~t["ok"]]
    if failed.empty:
        return []
    data = with_series(failed, FAILED)
    tips = [*record_tooltips(x, numeric), alt.Tooltip("status:N", title="status"),
            alt.Tooltip("message:N", title="message"), *mark_tooltips(timed=False)]
    cross = (alt.Chart(data).mark_point(shape="cross", size=140, filled=True, opacity=1)
             .encode(x=xenc, y=alt.value(FAIL_Y), color=color, tooltip=tips,
                     **source_channels(whole, domain, colors))
             .properties(name=f"failed_{name}"))
    label = (alt.Chart(data).mark_text(dy=-13, fontSize=10, fontWeight="bold")
             .encode(x=xenc, y=alt.value(FAIL_Y), text="status:N", color=color, tooltip=tips))
    return [cross, label]


def require_columns(frame: pd.DataFrame, columns, chart: str) -> None:
    """Refuse a frame that lacks a column ``chart`` draws, naming the missing ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{chart}: frame lacks column(s) {missing}; expected the columns "
                         f"{list(columns)}")


def placeholder(title: str, text: str) -> alt.Chart:
    """A chart with nothing measured yet: the title and a line saying so."""
    return (alt.Chart(pd.DataFrame({"text": [text]})).mark_text(fontSize=13, color="#666")
            .encode(text="text:N")
            .properties(title=title, width=WIDTH, height=HEIGHT))


def assemble(df: pd.DataFrame, x: str, title: str, subtitle: list[str],
             make_panel: Callable[[pd.DataFrame, str, bool, pd.DataFrame], alt.LayerChart | None],
             empty_text: str = "no measurements yet", timed: bool = False) -> alt.TopLevelMixin:
    """Shared frame handling: empty frames, records without x, one panel per (preset, workload).

    ``make_panel(part, x, numeric, whole)`` draws one panel from its rows of the tidy frame
    (``whole`` is every row, for legends shared by all panels), or returns None. ``timed``: the
    chart draws timed values, so its subtitle counts the noisy points too.
    """
    if df is None or (isinstance(df, pd.DataFrame) and df.empty):
        return placeholder(title, empty_text)
    t, numeric, n_without_x = tidy(df, x)
    notes = list(subtitle)
    if n_without_x:
        notes.append(f"{n_without_x} record(s) with no value for {x} are not shown")
    if t.empty:
        return placeholder(title, f"no record has a value for {x}")
    notes += mark_notes(t, timed)
    panels = []
    for panel, part in t.groupby("panel", sort=False):
        chart = make_panel(part.reset_index(drop=True), x, numeric, t)
        if chart is not None:
            panels.append(chart.properties(title=panel) if panel else chart)
    if not panels:
        return placeholder(title, empty_text)
    top = alt.TitleParams(title, subtitle=notes, anchor="start") if notes else alt.TitleParams(
        title, anchor="start")
    if len(panels) == 1:
        return panels[0].properties(title=top)
    return alt.concat(*panels, columns=3, title=top).resolve_scale(y="independent")


def mark_notes(t: pd.DataFrame, timed: bool) -> list[str]:
    """Subtitle lines counting the marked points of a tidy frame (nothing when none is); noisy
    points only on a chart of ``timed`` values (where they are drawn as triangles)."""
    notes = []
    reused = int(t["reused"].sum())
    if reused:
        notes.append(f"hollow: {reused} point(s) reused from the store, not measured now")
    noisy = int(t["noisy"].sum()) if timed else 0
    if noisy:
        notes.append(f"triangles: {noisy} point(s) with a noisy timing (see the tooltip)")
    return notes


def unit_phrase(t: pd.DataFrame) -> str:
    """What one latency is timed per (``step``, ``token``, or both), for axis titles."""
    units = sorted(u for u in t["unit"].unique() if u)
    return " / ".join(units) if units else "step"


__all__ = ["WIDTH", "HEIGHT", "FAIL_Y", "SERIES_COLORS", "MEMORY_COLORS", "HOLLOW",
           "TIMING_SHAPES", "x_encoding", "x_tooltip", "record_tooltips", "mark_tooltips",
           "with_series", "any_reused", "color", "source_channels", "timing_channels", "unique_name",
           "failure_layers", "placeholder", "assemble", "mark_notes", "unit_phrase"]
