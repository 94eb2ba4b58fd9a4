"""Charts of measurement records: measured points with their spread, theory drawn beside them.

Every builder takes the long-format DataFrame that ``efflab.sweep(...)`` and
``efflab.core.store.to_frame(records)`` return — one row per record, nested keys flattened with dots
(``latency_ms.median``, ``memory.by_category.activations``, ``theory.roofline.bound`` ...) —
and returns an altair chart. Nothing here imports torch (chart code never measures), so a
report or a grader can draw stored results on a machine without it.

What every chart does:

* one measured point per record whose ``status`` is ``"ok"``, with the p25–p75 spread of its
  timing as an error bar and the number of timings in the tooltip;
* the theory beside it (roofline bound, predicted memory peak), labelled as theory;
* records that failed (``"oom"``, ``"error"``, ``"refused"``) as red crosses at their x position,
  labelled with their status and carrying their message in the tooltip — never dropped silently;
* records reused from the store drawn hollow, noisy timings drawn as triangles, each with a
  legend and a subtitle line counting them (see :mod:`efflab.ui.charts.marks`);
* one panel per (preset, workload) when the frame holds several, so tokens/s of a train step are
  not drawn on the same axis as tokens/s of decoding.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from efflab.ui.charts.frame import (
    BUDGET,
    FAILED,
    MEASURED,
    MEMORY_CATEGORIES,
    MIB,
    PREDICTED_PEAK,
    THEORY_ROOFLINE,
    axis_label,
    is_timed,
    mark_columns,
    memory_frame,
    tidy,
)
from efflab.ui.charts.marks import (
    HEIGHT,
    MEMORY_COLORS,
    SERIES_COLORS,
    WIDTH,
    any_reused,
    assemble,
    color,
    failure_layers,
    mark_tooltips,
    placeholder,
    record_tooltips,
    source_channels,
    timing_channels,
    unique_name,
    unit_phrase,
    with_series,
    x_encoding,
    x_tooltip,
)


def _measured_vs_theory(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame, *,
                        log_x: bool | None,
                        log_y: bool, y: str, lo: str, hi: str, theory: str, ytitle: str,
                        tips: list[alt.Tooltip], theory_tip: alt.Tooltip) -> alt.LayerChart | None:
    """One panel: the theory line (dashed), the measured spread (error bars), the measured
    medians (points; hollow if reused, triangles if noisy) and the failures (red crosses).
    Returns None when there is nothing to draw.

    ``y``/``lo``/``hi``/``theory`` name columns of the tidy frame (see :func:`efflab.ui.charts.frame.tidy`).
    """
    xenc = x_encoding(t, x, numeric, log_x)
    ok = t[t["ok"] & t[y].notna()]
    th = t[t[theory].notna()].sort_values("x")
    # the legend is shared by every panel of the chart: its entries come from the whole frame
    domain = ([MEASURED] + ([THEORY_ROOFLINE] if whole[theory].notna().any() else [])
              + ([FAILED] if (~whole["ok"]).any() else []))
    colour = color(domain, SERIES_COLORS, legend=not any_reused(whole))

    def yenc(field: str) -> alt.Y:
        return alt.Y(f"{field}:Q", title=ytitle,
                     scale=alt.Scale(type="log") if log_y else alt.Scale(zero=True))

    name = unique_name()
    layers: list[alt.Chart] = []
    if not th.empty:
        data = with_series(th, THEORY_ROOFLINE)
        th_tips = [*record_tooltips(x, numeric), theory_tip, alt.Tooltip("bound:N", title="bound by")]
        layers.append(alt.Chart(data).mark_line(strokeDash=[6, 4], strokeWidth=2)
                      .encode(x=xenc, y=yenc(theory), color=colour,
                              order="x:Q")
                      .properties(name=f"theory_{name}"))
        layers.append(alt.Chart(data).mark_point(size=25, filled=True, opacity=0.9)
                      .encode(x=xenc, y=yenc(theory), color=colour,
                              tooltip=th_tips)
                      .properties(name=f"theorypoints_{name}"))
    if not ok.empty:
        data = with_series(ok, MEASURED)
        band = data[data[lo].notna() & data[hi].notna()]
        if not band.empty:
            layers.append(alt.Chart(band).mark_errorbar(ticks=True, thickness=1.5)
                          .encode(x=xenc, y=yenc(lo), y2=f"{hi}:Q",
                                  color=colour)
                          .properties(name=f"spread_{name}"))
        layers.append(alt.Chart(data).mark_point(size=70, filled=True, opacity=1)
                      .encode(x=xenc, y=yenc(y), color=colour,
                              tooltip=[*tips, *mark_tooltips(timed=True)],
                              **source_channels(whole, domain, SERIES_COLORS),
                              **timing_channels(whole))
                      .properties(name=f"measured_{name}"))
    layers += failure_layers(t, xenc, x, numeric, colour, name, whole, domain, SERIES_COLORS)
    if not layers:
        return None
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)


def throughput_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
                     log_y: bool = False, title: str = "Throughput") -> alt.TopLevelMixin:
    """Measured tokens/s against ``x``, with the roofline's upper bound drawn beside it.

    Points: ``throughput.tokens_per_s`` (at the median step time). Error bar: tokens/s at the p75
    latency (slower) up to tokens/s at the p25 latency (faster). Dashed line:
    ``theory.roofline.tokens_per_s_upper_bound``. Failed records: red crosses at their x.
    ``log_x=None`` picks a log₂ axis when x spans a factor of 4 or more.
    """

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        tips = [*record_tooltips(x, numeric),
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

    return assemble(df, x, title, [
        "points: median tokens/s · bars: tokens/s at p75…p25 latency · dashed: roofline upper bound",
    ], panel, timed=True)


def latency_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
                  log_y: bool = False, title: str = "Latency") -> alt.TopLevelMixin:
    """Median latency (ms per step, or per token for decode) with its p25–p75 spread, and the
    roofline's lower bound ``theory.roofline.step_ms_lower_bound`` as a dashed line."""

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        tips = [*record_tooltips(x, numeric),
                alt.Tooltip("lat:Q", title="median (ms)", format=".3f"),
                alt.Tooltip("lat_p25:Q", title="p25 (ms)", format=".3f"),
                alt.Tooltip("lat_p75:Q", title="p75 (ms)", format=".3f"),
                alt.Tooltip("n:Q", title="n timings"),
                alt.Tooltip("cv:Q", title="CV (std / mean)", format=".1%"),
                alt.Tooltip("unit:N", title="timed per"),
                alt.Tooltip("theory_ms:Q", title="roofline lower bound (ms)", format=".3f")]
        return _measured_vs_theory(
            t, x, numeric, whole, log_x=log_x, log_y=log_y, y="lat", lo="lat_p25", hi="lat_p75",
            theory="theory_ms", ytitle=f"latency (ms per {unit_phrase(t)})", tips=tips,
            theory_tip=alt.Tooltip("theory_ms:Q", title="roofline lower bound (ms)", format=".3f"))

    return assemble(df, x, title, [
        "points: median · bars: p25…p75 · dashed: roofline lower bound",
    ], panel, timed=True)


def memory_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *,
                 title: str = "Memory") -> alt.TopLevelMixin:
    """Measured memory by category (stacked bars, MiB; outlines only when reused from the
    store), the predicted peak ``theory.memory.peak_bytes`` (line with diamonds, drawn for
    refused records too: it is why they were refused) and a horizontal rule at
    ``budget_bytes`` when a budget was set."""

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        xenc = x_encoding(t, x, numeric, None, ordinal=numeric)
        bars = memory_frame(t)
        predicted = t[t["theory_peak_bytes"].notna()].sort_values("x").copy()
        predicted["theory_mib"] = predicted["theory_peak_bytes"] / MIB
        budgets = sorted(t["budget_bytes"].dropna().unique())
        all_bars = memory_frame(whole)  # the legend is shared by every panel
        domain = ([c for c in MEMORY_CATEGORIES if c in set(all_bars["series"])]
                  + ([PREDICTED_PEAK] if whole["theory_peak_bytes"].notna().any() else [])
                  + ([BUDGET] if whole["budget_bytes"].notna().any() else [])
                  + ([FAILED] if (~whole["ok"]).any() else []))
        colour = color(domain, MEMORY_COLORS, legend=not any_reused(whole))
        ytitle = "memory (MiB)"
        name = unique_name()
        layers: list[alt.Chart] = []
        if not bars.empty:
            layers.append(alt.Chart(bars).mark_bar(opacity=0.9)
                          .encode(x=xenc, y=alt.Y("mib:Q", title=ytitle, stack="zero"),
                                  color=colour, order=alt.Order("order:Q"),
                                  tooltip=[x_tooltip(x, numeric),
                                           alt.Tooltip("workload:N", title="workload"),
                                           alt.Tooltip("series:N", title="category"),
                                           alt.Tooltip("mib:Q", title="MiB", format=",.2f"),
                                           alt.Tooltip("peak_mib:Q", title="measured peak (MiB)",
                                                       format=",.2f"),
                                           *mark_tooltips(timed=False)],
                                  **source_channels(whole, domain, MEMORY_COLORS))
                          .properties(name=f"memory_{name}"))
        if not predicted.empty:
            data = with_series(predicted, PREDICTED_PEAK)
            tips = [*record_tooltips(x, numeric), alt.Tooltip("status:N", title="status"),
                    alt.Tooltip("theory_mib:Q", title="predicted peak (MiB)", format=",.2f"),
                    alt.Tooltip("peak_bytes:Q", title="measured peak (bytes)", format=",.0f")]
            layers.append(alt.Chart(data).mark_line(strokeDash=[6, 4], strokeWidth=2)
                          .encode(x=xenc, y=alt.Y("theory_mib:Q", title=ytitle), color=colour,
                                  order="x:Q")
                          .properties(name=f"predicted_{name}"))
            layers.append(alt.Chart(data).mark_point(shape="diamond", size=60, filled=True)
                          .encode(x=xenc, y="theory_mib:Q", color=colour, tooltip=tips)
                          .properties(name=f"predictedpoints_{name}"))
        if budgets:
            data = pd.DataFrame({"budget_mib": [b / MIB for b in budgets], "series": BUDGET})
            data["label"] = [f"budget {b:,.1f} MiB" for b in data["budget_mib"]]
            rule = alt.Chart(data).encode(y=alt.Y("budget_mib:Q", title=ytitle), color=colour)
            layers.append(rule.mark_rule(strokeWidth=2, strokeDash=[2, 2])
                          .encode(tooltip=[alt.Tooltip("budget_mib:Q", title="budget (MiB)",
                                                       format=",.1f")])
                          .properties(name=f"budget_{name}"))
            layers.append(rule.mark_text(align="left", dx=4, dy=-6, fontSize=10)
                          .encode(x=alt.value(0), text="label:N"))
        layers += failure_layers(t, xenc, x, numeric, colour, name, whole, domain, MEMORY_COLORS)
        if not layers:
            return None
        return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)

    return assemble(df, x, title, [
        "bars: measured peak by category · dashed: predicted peak (theory)",
    ], panel)


def quality_chart(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
                  title: str = "Quality") -> alt.TopLevelMixin:
    """Bits per byte on the held-out slice (``quality.bits_per_byte``; lower is better)."""

    def panel(t: pd.DataFrame, x: str, numeric: bool, whole: pd.DataFrame) -> alt.LayerChart | None:
        xenc = x_encoding(t, x, numeric, log_x)
        ok = t[t["ok"] & t["bpb"].notna()].sort_values("x")
        domain = [MEASURED] + ([FAILED] if (~whole["ok"]).any() else [])
        colour = color(domain, SERIES_COLORS, legend=not any_reused(whole))
        name = unique_name()
        lo, hi = (ok["bpb"].min(), ok["bpb"].max()) if not ok.empty else (0.0, 1.0)
        pad = max(0.1 * (hi - lo), 0.05 * abs(hi), 1e-3)  # a flat line still gets an axis
        yenc = alt.Y("bpb:Q", title="bits per byte (held-out; lower is better)",
                     scale=alt.Scale(domain=[float(lo - pad), float(hi + pad)], zero=False))
        layers: list[alt.Chart] = []
        if not ok.empty:
            data = with_series(ok, MEASURED)
            tips = [*record_tooltips(x, numeric),
                    alt.Tooltip("bpb:Q", title="bits per byte", format=".4f"),
                    alt.Tooltip("val_loss:Q", title="val loss (nats per byte)", format=".4f"),
                    *mark_tooltips(timed=False)]
            layers.append(alt.Chart(data).mark_line(strokeWidth=1.2)
                          .encode(x=xenc, y=yenc, color=colour, order="x:Q"))
            layers.append(alt.Chart(data).mark_point(size=70, filled=True, opacity=1)
                          .encode(x=xenc, y=yenc, color=colour, tooltip=tips,
                                  **source_channels(whole, domain, SERIES_COLORS))
                          .properties(name=f"measured_{name}"))
        layers += failure_layers(t, xenc, x, numeric, colour, name, whole, domain, SERIES_COLORS)
        if not layers:
            return None
        return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)

    return assemble(df, x, title, ["quality of the model as built, on a fixed held-out slice"],
                    panel)


# each chart of a dashboard keeps its own colours (series of throughput, categories of memory)
_OWN_COLOURS = {"color": "independent", "fill": "independent", "stroke": "independent"}


def dashboard(df: pd.DataFrame, x: str = "knobs.batch_size", *, log_x: bool | None = None,
              title: str | None = None) -> alt.TopLevelMixin:
    """Throughput, latency, memory and quality of one sweep, side by side.

    Memory is left out when no record has memory figures, quality when none has bits per byte.
    One (preset, workload) gives a 2×2 grid; several give one row of panels per chart.
    """
    if df is None or df.empty:
        return placeholder(title or "efflab", "no measurements yet")
    t, _, _ = tidy(df, x)
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
        grid = alt.vconcat(*[alt.hconcat(*charts[i:i + 2]).resolve_scale(**_OWN_COLOURS)
                             for i in range(0, len(charts), 2)])
    return (grid.properties(title=alt.TitleParams(title, anchor="start", fontSize=16))
            .resolve_scale(**_OWN_COLOURS))


def pareto_chart(df: pd.DataFrame, x: str, y: str, *, front: pd.DataFrame | None = None,
                 best: pd.DataFrame | None = None, budget: float | None = None,
                 label: str = "config", title: str = "Pareto frontier") -> alt.TopLevelMixin:
    """Every measured configuration as a point, the Pareto-optimal ones joined by a line, the
    best configuration under a budget ringed, and the budget as a rule on the x axis. Lower is
    better on both axes (e.g. x = latency or memory, y = bits per byte).

    Configurations reused from the store are hollow; when ``x`` or ``y`` is a timed value
    (latency, throughput, ``ms per token``), those with a noisy timing are triangles.
    """
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if ok.empty:
        return placeholder(title, "no successful measurements yet")
    timed = is_timed(x) or is_timed(y)

    def plain(frame: pd.DataFrame) -> pd.DataFrame:
        # Vega-Lite reads dots in field names as nesting: give the chart plain column names
        out = pd.DataFrame({"x": frame[x].to_numpy(), "y": frame[y].to_numpy(),
                            "label": frame[label].to_numpy() if label in frame else ""})
        return with_series(out.join(mark_columns(frame).reset_index(drop=True)), MEASURED)

    points = plain(ok)
    xenc = alt.X("x:Q", title=axis_label(x), scale=alt.Scale(zero=False))
    yenc = alt.Y("y:Q", title=axis_label(y), scale=alt.Scale(zero=False))
    tips = [alt.Tooltip("label:N", title="configuration"),
            alt.Tooltip("x:Q", title=axis_label(x), format=",.4~g"),
            alt.Tooltip("y:Q", title=axis_label(y), format=".4f")]
    marks = {**source_channels(points, [MEASURED], SERIES_COLORS),
             **(timing_channels(points) if timed else {})}
    layers = [alt.Chart(points).mark_point(size=60, opacity=0.55, filled=True, shape="circle",
                                           color=SERIES_COLORS[MEASURED])
              .encode(x=xenc, y=yenc, tooltip=[*tips, *mark_tooltips(timed)], **marks)
              .properties(name=f"every_{unique_name()}")]
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
    subtitle = ["blue: every configuration · orange: the Pareto frontier · red ring: best under "
                "the budget"]
    reused, noisy = int(points["reused"].sum()), int(points["noisy"].sum()) if timed else 0
    if reused:
        subtitle.append(f"hollow: {reused} configuration(s) reused from the store")
    if noisy:
        subtitle.append(f"triangles: {noisy} configuration(s) with a noisy timing")
    return alt.layer(*layers).properties(
        width=WIDTH + 60, height=HEIGHT + 40,
        title=alt.TitleParams(title, subtitle=subtitle, anchor="start"))


__all__ = ["throughput_chart", "latency_chart", "memory_chart", "quality_chart", "dashboard",
           "pareto_chart"]
