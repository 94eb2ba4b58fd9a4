"""Charts of measurement records: measured points with their spread, theory drawn beside them.

Every builder takes the long-format DataFrame that ``efflab.sweep(...)`` and
``efflab.store.to_frame(records)`` return — one row per record, nested keys flattened with dots
(``latency_ms.median``, ``memory.by_category.activations``, ``theory.roofline.bound`` ...) —
and returns an altair chart. Nothing here imports torch (chart code never measures), so a
report or a grader can draw stored results on a machine without it.

What every chart does:

* one measured point per record whose ``status`` is ``"ok"``, with the p25–p75 spread of its
  timing as an error bar and the number of timings in the tooltip;
* the theory beside it (roofline bound, predicted memory peak), labelled as theory;
* records that failed (``"oom"``, ``"error"``, ``"refused"``) as red crosses at their x position,
  labelled with their status and carrying their message in the tooltip — never dropped silently;
* one panel per (preset, workload) when the frame holds several, so tokens/s of a train step are
  not drawn on the same axis as tokens/s of decoding.

Rendering helpers (:func:`to_svg`, :func:`to_png`, :func:`to_html`, :func:`static_bundle`) go
through vl-convert, which carries its own copy of Vega: no network, no browser.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from collections.abc import Callable

import altair as alt
import numpy as np
import pandas as pd

from efflab.records import records_frame

MIB = 2**20
WIDTH = 320
HEIGHT = 220
FAIL_Y = HEIGHT - 10  # pixel row of the failure crosses, just above the x axis

MEASURED = "measured"
THEORY_ROOFLINE = "theory (roofline bound)"
FAILED = "failed / refused"
PREDICTED_PEAK = "predicted peak (theory)"
BUDGET = "memory budget"
SERIES_COLORS = {MEASURED: "#1f77b4", THEORY_ROOFLINE: "#ff7f0e", FAILED: "#d62728"}

# memory.by_category.* in the order they stack (bottom first), with their colours
MEMORY_CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "kv_cache", "other")
MEMORY_COLORS = {"parameters": "#4c78a8", "gradients": "#72b7b2", "optimizer": "#54a24b",
                 "activations": "#eeca3b", "kv_cache": "#b279a2", "other": "#bab0ac",
                 PREDICTED_PEAK: "#222222", BUDGET: "#e45756", FAILED: "#d62728"}

AXIS_LABELS = {
    "knobs.batch_size": "batch size (sequences per step)",
    "knobs.seq_len": "sequence length (tokens)",
    "knobs.gen_tokens": "generated tokens per sequence",
    "knobs.threads": "CPU threads",
    "knobs.seed": "seed",
    "knobs.workload": "workload",
    "workload": "workload",
    "preset": "preset",
}

# short name in the chart data -> dotted column of the records frame
NUMERIC_COLUMNS = {
    "tps": "throughput.tokens_per_s",
    "tokens_per_step": "throughput.tokens_per_step",
    "lat": "latency_ms.median",
    "lat_p25": "latency_ms.p25",
    "lat_p75": "latency_ms.p75",
    "n": "latency_ms.n",
    "theory_tps": "theory.roofline.tokens_per_s_upper_bound",
    "theory_ms": "theory.roofline.step_ms_lower_bound",
    "mfu": "flops.mfu",
    "peak_bytes": "memory.peak_bytes",
    "theory_peak_bytes": "theory.memory.peak_bytes",
    "budget_bytes": "budget_bytes",
    "bpb": "quality.bits_per_byte",
    "val_loss": "quality.val_loss",
    **{f"mem_{c}": f"memory.by_category.{c}" for c in MEMORY_CATEGORIES},
}
TEXT_COLUMNS = {"unit": "latency_ms.unit", "bound": "theory.roofline.bound"}


# ----------------------------------------------------------------------------- the data

def axis_label(column: str) -> str:
    """A human axis title for a records-frame column: ``knobs.batch_size`` -> ``batch size ...``."""
    return AXIS_LABELS.get(column, column.rsplit(".", 1)[-1].replace("_", " "))


def _column(df: pd.DataFrame, name: str, numeric: bool) -> pd.Series:
    """``df[name]``, or an all-missing column when the frame lacks it (failed records do)."""
    if name not in df.columns:
        return pd.Series(np.nan if numeric else None, index=df.index, dtype=float if numeric else object)
    col = df[name]
    return pd.to_numeric(col, errors="coerce").astype(float) if numeric else col


def _tidy(df: pd.DataFrame, x: str) -> tuple[pd.DataFrame, bool, int]:
    """The records frame -> one row per record with short column names.

    Returns ``(tidy, x_is_numeric, n_without_x)``. Rows of ``tidy``::

        x, status, message, preset, workload, panel, ok,       <- every record
        tps, lat, lat_p25, lat_p75, n, unit, theory_tps, ...   <- NaN / None where missing

    Records with no value for ``x`` (``seq_len=None`` means "the preset's full context") cannot
    be placed on the axis: they are left out and counted in ``n_without_x``.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"charts take the records DataFrame of efflab.sweep / efflab.results, "
                        f"not {type(df).__name__}")
    if x not in df.columns:
        knob_cols = sorted(c for c in df.columns if c.startswith("knobs."))
        raise ValueError(f"x={x!r} is not a column of the results; columns you can put on x "
                         f"include: {', '.join(knob_cols) or '(none: the frame has no knobs)'}")
    t = pd.DataFrame(index=df.index)
    raw_x = df[x]
    num_x = pd.to_numeric(raw_x, errors="coerce")
    present = raw_x[raw_x.notna()]
    x_numeric = (not present.empty and bool(num_x[raw_x.notna()].notna().all())
                 and not any(isinstance(v, (bool, np.bool_)) for v in present))  # on/off: nominal
    t["x"] = num_x.astype(float) if x_numeric else raw_x.astype(object)
    status = _column(df, "status", numeric=False)
    t["status"] = status.where(status.notna(), "ok").astype(str)
    t["ok"] = t["status"] == "ok"
    message = _column(df, "message", numeric=False)
    t["message"] = message.where(message.notna(), "").astype(str)
    preset = _column(df, "preset", numeric=False)
    t["preset"] = preset.where(preset.notna(), "?").astype(str)
    workload = _column(df, "workload", numeric=False)
    if workload.isna().all() and "knobs.workload" in df.columns:
        workload = df["knobs.workload"]
    t["workload"] = workload.where(workload.notna(), "?").astype(str)
    for short, long in NUMERIC_COLUMNS.items():
        t[short] = _column(df, long, numeric=True)
    for short, long in TEXT_COLUMNS.items():
        col = _column(df, long, numeric=False)
        t[short] = col.where(col.notna(), "").astype(str)
    # tokens/s at the p75 latency (slower) and at the p25 latency (faster): the error bar
    t["tps_lo"] = t["tps"] * t["lat"] / t["lat_p75"]
    t["tps_hi"] = t["tps"] * t["lat"] / t["lat_p25"]
    # one panel per (preset, workload) present, unless x itself is what differs
    keys = []
    if t["preset"].nunique() > 1 and x != "preset":
        keys.append("preset")
    if t["workload"].nunique() > 1 and x not in ("workload", "knobs.workload"):
        keys.append("workload")
    t["panel"] = t[keys].agg(" · ".join, axis=1) if keys else ""
    has_x = t["x"].notna()
    return t[has_x].reset_index(drop=True), x_numeric, int((~has_x).sum())


def _x_encoding(t: pd.DataFrame, x: str, numeric: bool, log_x: bool | None,
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


def _x_tooltip(x: str, numeric: bool) -> alt.Tooltip:
    return alt.Tooltip("x:Q" if numeric else "x:N", title=axis_label(x))


def _record_tooltips(x: str, numeric: bool) -> list[alt.Tooltip]:
    return [_x_tooltip(x, numeric), alt.Tooltip("preset:N", title="preset"),
            alt.Tooltip("workload:N", title="workload")]


def _with_series(t: pd.DataFrame, series: str) -> pd.DataFrame:
    """A copy of ``t`` with a constant ``series`` column: what the colour legend shows."""
    out = t.copy()
    out["series"] = series
    return out


def _color(domain: list[str], colors: dict[str, str], title: str | None = None) -> alt.Color:
    return alt.Color("series:N", title=title,
                     scale=alt.Scale(domain=domain, range=[colors[d] for d in domain]),
                     legend=alt.Legend(orient="bottom", direction="horizontal", columns=3,
                                       labelLimit=260))


def _failure_layers(t: pd.DataFrame, xenc: alt.X, x: str, numeric: bool, color: alt.Color,
                    name: str) -> list[alt.Chart]:
    """Failed / refused records: a red cross at their x, just above the axis, with the status
    written over it and the message in the tooltip."""
    failed = t[~t["ok"]]
    if failed.empty:
        return []
    data = _with_series(failed, FAILED)
    tips = [*_record_tooltips(x, numeric), alt.Tooltip("status:N", title="status"),
            alt.Tooltip("message:N", title="message")]
    cross = (alt.Chart(data).mark_point(shape="cross", size=140, filled=True, opacity=1)
             .encode(x=xenc, y=alt.value(FAIL_Y), color=color, tooltip=tips)
             .properties(name=f"failed_{name}"))
    label = (alt.Chart(data).mark_text(dy=-13, fontSize=10, fontWeight="bold")
             .encode(x=xenc, y=alt.value(FAIL_Y), text="status:N", color=color, tooltip=tips))
    return [cross, label]


_panel_counter = itertools.count(1)


def _unique_name() -> str:
    """A panel id for mark names (``measured_p3``), unique within the process.

    Names must be unique in one spec, and the SVG tests find marks by them. The id must not be
    bare digits: altair renames a layer ``base_<digits>`` inside a concat to ``base_<position>``,
    which makes names collide across nested concats (and Vega then mixes up their data).
    """
    return f"p{next(_panel_counter)}"


def _placeholder(title: str, text: str) -> alt.Chart:
    """A chart with nothing measured yet: the title and a line saying so."""
    return (alt.Chart(pd.DataFrame({"text": [text]})).mark_text(fontSize=13, color="#666")
            .encode(text="text:N")
            .properties(title=title, width=WIDTH, height=HEIGHT))


def _assemble(df: pd.DataFrame, x: str, title: str, subtitle: list[str],
              make_panel: Callable[[pd.DataFrame, str, bool, pd.DataFrame], alt.LayerChart | None],
              empty_text: str = "no measurements yet") -> alt.TopLevelMixin:
    """Shared frame handling: empty frames, records without x, one panel per (preset, workload)."""
    if df is None or (isinstance(df, pd.DataFrame) and df.empty):
        return _placeholder(title, empty_text)
    t, numeric, n_without_x = _tidy(df, x)
    notes = list(subtitle)
    if n_without_x:
        notes.append(f"{n_without_x} record(s) with no value for {x} are not shown")
    if t.empty:
        return _placeholder(title, f"no record has a value for {x}")
    panels = []
    for panel, part in t.groupby("panel", sort=False):
        chart = make_panel(part.reset_index(drop=True), x, numeric, t)
        if chart is not None:
            panels.append(chart.properties(title=panel) if panel else chart)
    if not panels:
        return _placeholder(title, empty_text)
    top = alt.TitleParams(title, subtitle=notes, anchor="start") if notes else alt.TitleParams(
        title, anchor="start")
    if len(panels) == 1:
        return panels[0].properties(title=top)
    return alt.concat(*panels, columns=3, title=top).resolve_scale(y="independent")


def _unit_phrase(t: pd.DataFrame) -> str:
    units = sorted(u for u in t["unit"].unique() if u)
    return " / ".join(units) if units else "step"


def _measured_vs_theory(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame, *,
                        log_x: bool | None,
                        log_y: bool, y: str, lo: str, hi: str, theory: str, ytitle: str,
                        tips: list[alt.Tooltip], theory_tip: alt.Tooltip) -> alt.LayerChart | None:
    """One panel: the theory line (dashed), the measured spread (error bars), the measured
    medians (points) and the failures (red crosses). Returns None when there is nothing to draw.

    ``y``/``lo``/``hi``/``theory`` name columns of the tidy frame (see :func:`_tidy`).
    """
    xenc = _x_encoding(t, x, numeric, log_x)
    ok = t[t["ok"] & t[y].notna()]
    th = t[t[theory].notna()].sort_values("x")
    # the legend is shared by every panel of the chart: its entries come from the whole frame
    domain = ([MEASURED] + ([THEORY_ROOFLINE] if whole[theory].notna().any() else [])
              + ([FAILED] if (~whole["ok"]).any() else []))
    color = _color(domain, SERIES_COLORS)

    def yenc(field: str) -> alt.Y:
        return alt.Y(f"{field}:Q", title=ytitle,
                     scale=alt.Scale(type="log") if log_y else alt.Scale(zero=True))

    name = _unique_name()
    layers: list[alt.Chart] = []
    if not th.empty:
        data = _with_series(th, THEORY_ROOFLINE)
        th_tips = [*_record_tooltips(x, numeric), theory_tip, alt.Tooltip("bound:N", title="bound by")]
        layers.append(alt.Chart(data).mark_line(strokeDash=[6, 4], strokeWidth=2)
                      .encode(x=xenc, y=yenc(theory), color=color,
                              order="x:Q")
                      .properties(name=f"theory_{name}"))
        layers.append(alt.Chart(data).mark_point(size=25, filled=True, opacity=0.9)
                      .encode(x=xenc, y=yenc(theory), color=color,
                              tooltip=th_tips)
                      .properties(name=f"theorypoints_{name}"))
    if not ok.empty:
        data = _with_series(ok, MEASURED)
        band = data[data[lo].notna() & data[hi].notna()]
        if not band.empty:
            layers.append(alt.Chart(band).mark_errorbar(ticks=True, thickness=1.5)
                          .encode(x=xenc, y=yenc(lo), y2=f"{hi}:Q",
                                  color=color)
                          .properties(name=f"spread_{name}"))
        layers.append(alt.Chart(data).mark_point(size=70, filled=True, opacity=1)
                      .encode(x=xenc, y=yenc(y), color=color, tooltip=tips)
                      .properties(name=f"measured_{name}"))
    layers += _failure_layers(t, xenc, x, numeric, color, name)
    if not layers:
        return None
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)


# ----------------------------------------------------------------------------- the charts

def throughput_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
                     log_y: bool = False, title: str = "Throughput") -> alt.TopLevelMixin:
    """Measured tokens/s against ``x``, with the roofline's upper bound drawn beside it.

    Points: ``throughput.tokens_per_s`` (at the median step time). Error bar: tokens/s at the p75
    latency (slower) up to tokens/s at the p25 latency (faster). Dashed line:
    ``theory.roofline.tokens_per_s_upper_bound``. Failed records: red crosses at their x.
    ``log_x=None`` picks a log₂ axis when x spans a factor of 4 or more.
    """

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        tips = [*_record_tooltips(x, numeric),
                alt.Tooltip("tps:Q", title="tokens/s (median)", format=",.0f"),
                alt.Tooltip("tps_lo:Q", title="tokens/s at p75 latency", format=",.0f"),
                alt.Tooltip("tps_hi:Q", title="tokens/s at p25 latency", format=",.0f"),
                alt.Tooltip("lat:Q", title="latency median (ms)", format=".3f"),
                alt.Tooltip("n:Q", title="n timings"),
                alt.Tooltip("unit:N", title="timed per"),
                alt.Tooltip("theory_tps:Q", title="roofline bound (tokens/s)", format=",.0f"),
                alt.Tooltip("mfu:Q", title="MFU", format=".1%")]
        return _measured_vs_theory(
            t, x, numeric, whole, log_x=log_x, log_y=log_y, y="tps", lo="tps_lo", hi="tps_hi",
            theory="theory_tps", ytitle="throughput (tokens per second)", tips=tips,
            theory_tip=alt.Tooltip("theory_tps:Q", title="roofline bound (tokens/s)", format=",.0f"))

    return _assemble(df, x, title, [
        "points: median tokens/s · bars: tokens/s at p75…p25 latency · dashed: roofline upper bound",
    ], panel)


def latency_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
                  log_y: bool = False, title: str = "Latency") -> alt.TopLevelMixin:
    """Median latency (ms per step, or per token for decode) with its p25–p75 spread, and the
    roofline's lower bound ``theory.roofline.step_ms_lower_bound`` as a dashed line."""

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        tips = [*_record_tooltips(x, numeric),
                alt.Tooltip("lat:Q", title="median (ms)", format=".3f"),
                alt.Tooltip("lat_p25:Q", title="p25 (ms)", format=".3f"),
                alt.Tooltip("lat_p75:Q", title="p75 (ms)", format=".3f"),
                alt.Tooltip("n:Q", title="n timings"),
                alt.Tooltip("unit:N", title="timed per"),
                alt.Tooltip("theory_ms:Q", title="roofline lower bound (ms)", format=".3f")]
        return _measured_vs_theory(
            t, x, numeric, whole, log_x=log_x, log_y=log_y, y="lat", lo="lat_p25", hi="lat_p75",
            theory="theory_ms", ytitle=f"latency (ms per {_unit_phrase(t)})", tips=tips,
            theory_tip=alt.Tooltip("theory_ms:Q", title="roofline lower bound (ms)", format=".3f"))

    return _assemble(df, x, title, [
        "points: median · bars: p25…p75 · dashed: roofline lower bound",
    ], panel)


def memory_frame(t: pd.DataFrame) -> pd.DataFrame:
    """The measured memory of the ok records in long format, one row per (record, category)::

        x, preset, workload, series (= category), order, mib, peak_mib

    Zero-sized categories are left out (they would draw nothing). ``t`` is a tidy frame
    (see :func:`_tidy`); the bars of one x stack to the measured ``memory.peak_bytes``.
    """
    ok = t[t["ok"]]
    rows = []
    for order, cat in enumerate(MEMORY_CATEGORIES):
        col = ok[f"mem_{cat}"]
        part = ok[col.notna() & (col > 0)]
        if part.empty:
            continue
        rows.append(pd.DataFrame({
            "x": part["x"], "preset": part["preset"], "workload": part["workload"],
            "series": cat, "order": order, "mib": part[f"mem_{cat}"] / MIB,
            "peak_mib": part["peak_bytes"] / MIB}))
    if not rows:
        return pd.DataFrame(columns=["x", "preset", "workload", "series", "order", "mib", "peak_mib"])
    return pd.concat(rows, ignore_index=True)


def memory_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *,
                 title: str = "Memory") -> alt.TopLevelMixin:
    """Measured memory by category (stacked bars, MiB), the predicted peak
    ``theory.memory.peak_bytes`` (line with diamonds, drawn for refused records too: it is why
    they were refused) and a horizontal rule at ``budget_bytes`` when a budget was set."""

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        xenc = _x_encoding(t, x, numeric, None, ordinal=numeric)
        bars = memory_frame(t)
        predicted = t[t["theory_peak_bytes"].notna()].sort_values("x").copy()
        predicted["theory_mib"] = predicted["theory_peak_bytes"] / MIB
        budgets = sorted(t["budget_bytes"].dropna().unique())
        all_bars = memory_frame(whole)  # the legend is shared by every panel
        domain = ([c for c in MEMORY_CATEGORIES if c in set(all_bars["series"])]
                  + ([PREDICTED_PEAK] if whole["theory_peak_bytes"].notna().any() else [])
                  + ([BUDGET] if whole["budget_bytes"].notna().any() else [])
                  + ([FAILED] if (~whole["ok"]).any() else []))
        color = _color(domain, MEMORY_COLORS)
        ytitle = "memory (MiB)"
        name = _unique_name()
        layers: list[alt.Chart] = []
        if not bars.empty:
            layers.append(alt.Chart(bars).mark_bar(opacity=0.9)
                          .encode(x=xenc, y=alt.Y("mib:Q", title=ytitle, stack="zero"),
                                  color=color, order=alt.Order("order:Q"),
                                  tooltip=[_x_tooltip(x, numeric),
                                           alt.Tooltip("workload:N", title="workload"),
                                           alt.Tooltip("series:N", title="category"),
                                           alt.Tooltip("mib:Q", title="MiB", format=",.2f"),
                                           alt.Tooltip("peak_mib:Q", title="measured peak (MiB)",
                                                       format=",.2f")])
                          .properties(name=f"memory_{name}"))
        if not predicted.empty:
            data = _with_series(predicted, PREDICTED_PEAK)
            tips = [*_record_tooltips(x, numeric), alt.Tooltip("status:N", title="status"),
                    alt.Tooltip("theory_mib:Q", title="predicted peak (MiB)", format=",.2f"),
                    alt.Tooltip("peak_bytes:Q", title="measured peak (bytes)", format=",.0f")]
            layers.append(alt.Chart(data).mark_line(strokeDash=[6, 4], strokeWidth=2)
                          .encode(x=xenc, y=alt.Y("theory_mib:Q", title=ytitle), color=color,
                                  order="x:Q")
                          .properties(name=f"predicted_{name}"))
            layers.append(alt.Chart(data).mark_point(shape="diamond", size=60, filled=True)
                          .encode(x=xenc, y="theory_mib:Q", color=color, tooltip=tips)
                          .properties(name=f"predictedpoints_{name}"))
        if budgets:
            data = pd.DataFrame({"budget_mib": [b / MIB for b in budgets], "series": BUDGET})
            data["label"] = [f"budget {b:,.1f} MiB" for b in data["budget_mib"]]
            rule = alt.Chart(data).encode(y=alt.Y("budget_mib:Q", title=ytitle), color=color)
            layers.append(rule.mark_rule(strokeWidth=2, strokeDash=[2, 2])
                          .encode(tooltip=[alt.Tooltip("budget_mib:Q", title="budget (MiB)",
                                                       format=",.1f")])
                          .properties(name=f"budget_{name}"))
            layers.append(rule.mark_text(align="left", dx=4, dy=-6, fontSize=10)
                          .encode(x=alt.value(0), text="label:N"))
        layers += _failure_layers(t, xenc, x, numeric, color, name)
        if not layers:
            return None
        return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)

    return _assemble(df, x, title, [
        "bars: measured peak by category · dashed: predicted peak (theory)",
    ], panel)


def quality_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
                  title: str = "Quality") -> alt.TopLevelMixin:
    """Bits per byte on the held-out slice (``quality.bits_per_byte``; lower is better)."""

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        xenc = _x_encoding(t, x, numeric, log_x)
        ok = t[t["ok"] & t["bpb"].notna()].sort_values("x")
        domain = [MEASURED] + ([FAILED] if (~whole["ok"]).any() else [])
        color = _color(domain, SERIES_COLORS)
        name = _unique_name()
        lo, hi = (ok["bpb"].min(), ok["bpb"].max()) if not ok.empty else (0.0, 1.0)
        pad = max(0.1 * (hi - lo), 0.05 * abs(hi), 1e-3)  # a flat line still gets an axis
        yenc = alt.Y("bpb:Q", title="bits per byte (held-out; lower is better)",
                     scale=alt.Scale(domain=[float(lo - pad), float(hi + pad)], zero=False))
        layers: list[alt.Chart] = []
        if not ok.empty:
            data = _with_series(ok, MEASURED)
            tips = [*_record_tooltips(x, numeric),
                    alt.Tooltip("bpb:Q", title="bits per byte", format=".4f"),
                    alt.Tooltip("val_loss:Q", title="val loss (nats per byte)", format=".4f")]
            layers.append(alt.Chart(data).mark_line(strokeWidth=1.2)
                          .encode(x=xenc, y=yenc, color=color, order="x:Q"))
            layers.append(alt.Chart(data).mark_point(size=70, filled=True, opacity=1)
                          .encode(x=xenc, y=yenc, color=color, tooltip=tips)
                          .properties(name=f"measured_{name}"))
        layers += _failure_layers(t, xenc, x, numeric, color, name)
        if not layers:
            return None
        return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)

    return _assemble(df, x, title, ["quality of the model as built, on a fixed held-out slice"],
                     panel)


def training_curve_chart(curve, *, title: str = "Training curve") -> alt.TopLevelMixin:
    """Train and validation loss against the optimizer step.

    ``curve`` is the ``curve`` list of a training record — dicts ``{"step", "train_loss"}`` and
    ``{"step", "val_loss"}`` — or a DataFrame with those columns (what a :class:`LiveChart`
    fed with such dicts passes).
    """
    if isinstance(curve, pd.DataFrame):
        frame = curve
    else:
        points = list(curve)
        for p in points:
            if not isinstance(p, dict) or "step" not in p:
                raise ValueError(f"each curve point must be a dict with a 'step' and a "
                                 f"'train_loss' or 'val_loss'; got {p!r:.80}")
        frame = pd.DataFrame(points)
    if frame.empty:
        return _placeholder(title, "no training steps yet")
    if "step" not in frame.columns:
        raise ValueError(f"the curve has no 'step' column; columns: {list(frame.columns)}")
    splits = [c for c in ("train_loss", "val_loss") if c in frame.columns]
    if not splits:
        raise ValueError("the curve has neither 'train_loss' nor 'val_loss'; "
                         f"columns: {list(frame.columns)}")
    long = frame.melt(id_vars=["step"], value_vars=splits, var_name="split", value_name="loss")
    long["loss"] = pd.to_numeric(long["loss"], errors="coerce")
    long = long[long["loss"].notna()].sort_values("step")
    long["series"] = long["split"].map({"train_loss": "train", "val_loss": "validation"})
    long["bpb"] = long["loss"] / math.log(2)
    domain = [s for s in ("train", "validation") if s in set(long["series"])]
    color = _color(domain, {"train": "#1f77b4", "validation": "#ff7f0e"})
    tips = [alt.Tooltip("step:Q", title="step"), alt.Tooltip("series:N", title="split"),
            alt.Tooltip("loss:Q", title="loss (nats per byte)", format=".4f"),
            alt.Tooltip("bpb:Q", title="bits per byte", format=".4f")]
    x = alt.X("step:Q", title="optimizer step")
    y = alt.Y("loss:Q", title="loss (nats per byte)", scale=alt.Scale(zero=False))
    layers = []
    train = long[long["series"] == "train"]
    val = long[long["series"] == "validation"]
    if not train.empty:
        layers.append(alt.Chart(train).mark_line(strokeWidth=1.5, opacity=0.85)
                      .encode(x=x, y=y, color=color, tooltip=tips))
    if not val.empty:
        layers.append(alt.Chart(val).mark_line(strokeWidth=2.5, point=True)
                      .encode(x=x, y=y, color=color, tooltip=tips))
    return alt.layer(*layers).properties(
        width=WIDTH + 100, height=HEIGHT,
        title=alt.TitleParams(title, subtitle=["cross-entropy per byte; validation on held-out files"],
                              anchor="start"))


def compare_curves_chart(df: pd.DataFrame, x: str = "tokens", y: str = "train_loss", *,
                         title: str = "Loss side by side") -> alt.TopLevelMixin:
    """Several training runs on one axis (``efflab.train.train_curves`` output): one colour per
    variant, the training loss as a thin line and held-out loss as points. ``x`` is "step",
    "tokens", "flops" or "seconds" — loss per token, per unit of compute or per wall second."""
    if df is None or df.empty or "variant" not in df.columns:
        return _placeholder(title, "no training steps yet")
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if ok.empty:
        return _placeholder(title, "every variant was refused on this machine")
    titles = {"step": "optimizer step", "tokens": "tokens trained on",
              "flops": "training FLOPs (model FLOPs)", "seconds": "wall time training (s)"}
    xenc = alt.X(f"{x}:Q", title=titles.get(x, x))
    color = alt.Color("variant:N", title="variant")
    tips = [alt.Tooltip("variant:N"), alt.Tooltip("step:Q"), alt.Tooltip(f"{x}:Q", format=",.4~g"),
            alt.Tooltip(f"{y}:Q", title=y, format=".4f")]
    layers = [alt.Chart(ok).mark_line(strokeWidth=1.2, opacity=0.7).encode(
        x=xenc, y=alt.Y(f"{y}:Q", title="loss (nats per byte)", scale=alt.Scale(zero=False)),
        color=color, tooltip=tips)]
    if "val_loss" in ok.columns and ok["val_loss"].notna().any():
        val = ok[ok["val_loss"].notna()]
        layers.append(alt.Chart(val).mark_point(filled=True, size=60, shape="diamond").encode(
            x=xenc, y="val_loss:Q", color=color,
            tooltip=[alt.Tooltip("variant:N"), alt.Tooltip("step:Q"),
                     alt.Tooltip("val_loss:Q", title="held-out loss", format=".4f")]))
    return alt.layer(*layers).properties(
        width=WIDTH + 100, height=HEIGHT,
        title=alt.TitleParams(title, subtitle=["lines: training loss · diamonds: held-out loss"],
                              anchor="start"))


def expert_load_chart(loads, x: str | None = None, *,
                      title: str = "Tokens per expert") -> alt.TopLevelMixin:
    """A bar per expert, one panel per MoE layer and variant: how many tokens the router sent
    there in the last measured step (all bars equal = balanced; one tall bar = collapse).

    ``loads`` is either one model's load (a list per layer of per-expert counts, as
    ``efflab.techniques.moe.expert_load`` returns) or a ``train_curves`` table, from which the
    latest load of every MoE variant is drawn (so a LiveChart of it updates as training runs).
    ``x`` is accepted and ignored, so a LiveChart can use this builder.
    """
    if isinstance(loads, pd.DataFrame):
        latest = {}
        if "expert_load" in loads.columns:
            for _, r in loads.dropna(subset=["expert_load"]).iterrows():
                latest[r["variant"]] = (r["step"], r["expert_load"])
        per_variant = {v: load for v, (_, load) in latest.items()}
    else:
        per_variant = {"model": loads}
    rows = [{"variant": v, "layer": f"layer {i}", "expert": e, "tokens": int(n)}
            for v, load in per_variant.items() for i, layer in enumerate(load or [])
            for e, n in enumerate(layer)]
    if not rows:
        return _placeholder(title, "no MoE layers (yet)")
    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("expert:O", title="expert"), y=alt.Y("tokens:Q", title="tokens routed"),
        color=alt.Color("variant:N", title="variant"),
        column=alt.Column("layer:N", title=None), row=alt.Row("variant:N", title=None),
        tooltip=["variant", "layer", "expert", "tokens"]).properties(
        width=110, height=90, title=alt.TitleParams(title, anchor="start"))


def pareto_chart(df: pd.DataFrame, x: str, y: str, *, front: pd.DataFrame | None = None,
                 best: pd.DataFrame | None = None, budget: float | None = None,
                 label: str = "config", title: str = "Pareto frontier") -> alt.TopLevelMixin:
    """Every measured configuration as a point, the Pareto-optimal ones joined by a line, the
    best configuration under a budget ringed, and the budget as a rule on the x axis. Lower is
    better on both axes (e.g. x = latency or memory, y = bits per byte)."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if ok.empty:
        return _placeholder(title, "no successful measurements yet")

    def plain(frame: pd.DataFrame) -> pd.DataFrame:
        # Vega-Lite reads dots in field names as nesting: give the chart plain column names
        return pd.DataFrame({"x": frame[x].to_numpy(), "y": frame[y].to_numpy(),
                             "label": frame[label].to_numpy() if label in frame else ""})

    xenc = alt.X("x:Q", title=axis_label(x), scale=alt.Scale(zero=False))
    yenc = alt.Y("y:Q", title=axis_label(y), scale=alt.Scale(zero=False))
    tips = [alt.Tooltip("label:N", title="configuration"),
            alt.Tooltip("x:Q", title=axis_label(x), format=",.4~g"),
            alt.Tooltip("y:Q", title=axis_label(y), format=".4f")]
    layers = [alt.Chart(plain(ok)).mark_circle(size=60, opacity=0.55, color="#1f77b4")
              .encode(x=xenc, y=yenc, tooltip=tips)]
    if front is not None and not front.empty:
        layers.append(alt.Chart(plain(front)).mark_line(point=True, color="#ff7f0e", strokeWidth=2)
                      .encode(x=xenc, y=yenc, order="x:Q", tooltip=tips))
    if budget is not None:
        layers.append(alt.Chart(pd.DataFrame({"budget": [budget]})).mark_rule(
            color=MEMORY_COLORS[BUDGET], strokeDash=[6, 4]).encode(x="budget:Q"))
    if best is not None and not best.empty:
        layers.append(alt.Chart(plain(best)).mark_point(size=400, shape="circle", strokeWidth=3,
                                                        color="#d62728")
                      .encode(x=xenc, y=yenc, tooltip=tips))
    return alt.layer(*layers).properties(
        width=WIDTH + 60, height=HEIGHT + 40,
        title=alt.TitleParams(title, subtitle=["blue: every configuration · orange: the Pareto "
                                               "frontier · red ring: best under the budget"],
                              anchor="start"))

def attention_memory_chart(df: pd.DataFrame, *, title: str = "Attention memory vs sequence length"
                           ) -> alt.TopLevelMixin:
    """Measured peak bytes of one attention forward+backward per impl against T (points), the
    formula's prediction beside them (dashed), on log-log axes: a slope of 2 is T², of 1 is T."""
    if df is None or df.empty:
        return _placeholder(title, "no measurements yet")
    t = df.copy()
    t["measured MiB"] = t["peak_bytes"] / MIB
    t["predicted MiB"] = t["predicted_peak_bytes"] / MIB
    x = alt.X("T:Q", title="sequence length T (tokens), log scale", scale=alt.Scale(type="log", base=2))
    y_title = "peak memory of one call (MiB), log scale"
    color = alt.Color("impl:N", title="implementation")
    tips = [alt.Tooltip("impl:N"), alt.Tooltip("T:Q"),
            alt.Tooltip("measured MiB:Q", format=",.3f"), alt.Tooltip("predicted MiB:Q", format=",.3f")]
    measured = alt.Chart(t).mark_point(filled=True, size=80).encode(
        x=x, y=alt.Y("measured MiB:Q", title=y_title, scale=alt.Scale(type="log")),
        color=color, tooltip=tips)
    theory = alt.Chart(t).mark_line(strokeDash=[6, 4]).encode(
        x=x, y="predicted MiB:Q", color=color, tooltip=tips)
    return alt.layer(theory, measured).properties(
        width=WIDTH + 100, height=HEIGHT + 40,
        title=alt.TitleParams(title, subtitle=["points: measured · dashed: formula (inputs, outputs, "
                                               "their gradients + what each impl keeps)"],
                              anchor="start"))


def sqnr_chart(rows, *, floor_db: float | None = None,
               title: str = "Per-layer SQNR of the quantized weights") -> alt.TopLevelMixin:
    """A bar per layer and scheme: signal-to-quantization-noise ratio in dB (higher is better;
    +6 dB per extra bit). ``rows``: dicts or a DataFrame with name, scheme and sqnr_db; an
    optional floor is drawn as a rule."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        return _placeholder(title, "no quantized layers")
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("name:N", title="layer", sort=None), xOffset="scheme:N",
        y=alt.Y("sqnr_db:Q", title="SQNR (dB)"), color=alt.Color("scheme:N", title="scheme"),
        tooltip=["name", "scheme", alt.Tooltip("sqnr_db:Q", format=".1f")])
    layers = [bars]
    if floor_db is not None:
        layers.append(alt.Chart(pd.DataFrame({"floor": [floor_db]})).mark_rule(
            color="#d62728", strokeDash=[6, 4]).encode(y="floor:Q"))
    return alt.layer(*layers).properties(width=WIDTH + 220, height=HEIGHT,
                                         title=alt.TitleParams(title, anchor="start"))


def dashboard(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
              title: str | None = None) -> alt.TopLevelMixin:
    """Throughput, latency, memory and quality of one sweep, side by side.

    Memory is left out when no record has memory figures, quality when none has bits per byte.
    One (preset, workload) gives a 2×2 grid; several give one row of panels per chart.
    """
    if df is None or df.empty:
        return _placeholder(title or "efflab", "no measurements yet")
    t, _, _ = _tidy(df, x)
    if title is None:
        presets = ", ".join(sorted(t["preset"].unique()))
        workloads = ", ".join(sorted(t["workload"].unique()))
        title = f"{presets} · {workloads} · varying {axis_label(x)}"
    charts = [throughput_chart(df, x, log_x=log_x), latency_chart(df, x, log_x=log_x)]
    has_memory = t[["theory_peak_bytes"] + [f"mem_{c}" for c in MEMORY_CATEGORIES]].notna().any().any()
    if has_memory:
        charts.append(memory_chart(df, x))
    if t["bpb"].notna().any():
        charts.append(quality_chart(df, x, log_x=log_x))
    if t["panel"].nunique() > 1:  # each chart is already a row of panels
        grid = alt.vconcat(*charts)
    else:
        grid = alt.vconcat(*[alt.hconcat(*charts[i:i + 2]).resolve_scale(color="independent")
                             for i in range(0, len(charts), 2)])
    return (grid.properties(title=alt.TitleParams(title, anchor="start", fontSize=16))
            .resolve_scale(color="independent"))


# ----------------------------------------------------------------------------- rendering

def _vl_version() -> str | None:
    """The Vega-Lite version altair writes (``v6.4.1`` -> ``6.4``), if vl-convert has it."""
    import vl_convert as vlc

    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vlc.get_vegalite_versions() else None


def _spec(chart) -> dict:
    if isinstance(chart, dict):
        return chart
    if not hasattr(chart, "to_dict"):
        raise TypeError(f"expected an altair chart or a Vega-Lite dict, got {type(chart).__name__}")
    return chart.to_dict()


def _convert(fn_name: str, chart, **kwargs):
    import vl_convert as vlc

    spec = _spec(chart)
    try:
        return getattr(vlc, fn_name)(spec, vl_version=_vl_version(), **kwargs)
    except Exception as e:  # vl-convert reports Vega-Lite errors as bare ValueErrors
        raise RuntimeError(f"vl-convert could not render the chart {chart_title(spec)!r}: {e}") from e


def to_svg(chart) -> str:
    """The chart as an SVG document (rendered by vl-convert, offline)."""
    return _convert("vegalite_to_svg", chart)


def to_png(chart, scale: float = 2.0) -> bytes:
    """The chart as PNG bytes; ``scale=2`` draws at twice the CSS size (sharp on HiDPI)."""
    return _convert("vegalite_to_png", chart, scale=scale)


def to_html(chart) -> str:
    """A standalone HTML page of the interactive chart with Vega's scripts inlined: opens
    with no network."""
    return _convert("vegalite_to_html", chart, bundle=True)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def chart_title(chart) -> str:
    """The chart's title text, or "chart" when it has none."""
    spec = _spec(chart)
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(map(str, title))
    return str(title) if title else "chart"


def static_bundle(chart, text: str | None = None, scale: float = 2.0) -> tuple[dict, dict]:
    """A display bundle that needs no JavaScript: ``(data, metadata)`` for
    ``IPython.display.display(data, metadata=metadata, raw=True)``.

    ``data`` holds ``image/svg+xml``, ``image/png`` (base64, drawn at ``scale`` and shown at
    its CSS size through ``metadata``) and a ``text/plain`` fallback, so an executed notebook
    and its nbconvert HTML show the chart with no network.
    """
    spec = _spec(chart)
    svg = to_svg(spec)
    png = to_png(spec, scale=scale)
    w, h = png_size(png)
    data = {"image/svg+xml": svg,
            "image/png": base64.b64encode(png).decode("ascii"),
            "text/plain": text or f"<efflab chart: {chart_title(spec)}>"}
    metadata = {"image/png": {"width": round(w / scale), "height": round(h / scale)}}
    return data, metadata


def save_chart(chart, path) -> None:
    """Write the chart to ``path``: ``.svg``, ``.png``, ``.html`` (offline) or ``.json`` (spec)."""
    from pathlib import Path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(to_svg(chart), encoding="utf-8")
    elif suffix == ".png":
        path.write_bytes(to_png(chart))
    elif suffix == ".html":
        path.write_text(to_html(chart), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(_spec(chart), indent=1), encoding="utf-8")
    else:
        raise ValueError(f"cannot save a chart as {path.name!r}: the suffix must be one of "
                         ".svg, .png, .html, .json")


__all__ = ["records_frame", "axis_label", "memory_frame", "throughput_chart", "latency_chart",
           "compare_curves_chart", "expert_load_chart", "pareto_chart", "attention_memory_chart", "sqnr_chart",
           "memory_chart", "quality_chart", "training_curve_chart", "dashboard", "to_svg",
           "to_png", "to_html", "png_size", "chart_title", "static_bundle", "save_chart",
           "MEASURED", "THEORY_ROOFLINE", "FAILED", "PREDICTED_PEAK", "BUDGET"]
