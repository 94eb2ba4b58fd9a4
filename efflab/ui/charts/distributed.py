"""Charts of lesson 14 (distributed), each over one table from ``efflab.systems.distributed.records``:
all-reduce time vs message size beside the α–β fit, loss curves of one process vs N, step time
measured vs predicted per bucket size, and per-rank memory by category beside the formula.
Lesson 15 (model parallel) adds the pipeline bubble against its formula and one step's timeline.
Altair and pandas only (no torch): every measured point carries its p25–p75 spread.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

WIDTH, HEIGHT = 420, 260
MIB = 2**20
CATEGORY_COLORS = {"parameters": "#4c78a8", "gradients": "#f58518", "optimizer": "#54a24b"}


def _empty(title: str, text: str) -> alt.Chart:
    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(size=13).encode(text="t:N").properties(
        title=title, width=WIDTH, height=60)


def allreduce_chart(frame: pd.DataFrame, fit: pd.DataFrame | None = None,
                    held_out_bytes=(), *, stat: str = "p25_ms",
                    title: str = "All-reduce time vs message size",
                    subtitle: str | None = None) -> alt.TopLevelMixin:
    """Measured all-reduce times on log–log axes — a point at the statistic the fit uses
    (``stat``), a bar from p25 to p75, a tick at the median — held-out sizes marked apart, and
    the fitted t = α + n/β as a line (``fit``: columns bytes, fit_ms)."""
    if frame is None or frame.empty:
        return _empty(title, "no all-reduce measurements yet")
    t = frame.copy()
    held = {float(b) for b in held_out_bytes}
    t["used for"] = ["held out (test)" if float(b) in held else "fit" for b in t["bytes"]]
    x = alt.X("bytes:Q", scale=alt.Scale(type="log"), title="message size (bytes)")
    y = alt.Y(f"{stat}:Q", scale=alt.Scale(type="log"), title="time per all-reduce (ms)")
    color = alt.Color("used for:N", scale=alt.Scale(domain=["fit", "held out (test)"],
                                                    range=["#4c78a8", "#e45756"]))
    tips = [alt.Tooltip("bytes:Q", format=","), alt.Tooltip("median_ms:Q", format=".4f"),
            alt.Tooltip("p25_ms:Q", format=".4f"), alt.Tooltip("p75_ms:Q", format=".4f"),
            alt.Tooltip("n:Q"), alt.Tooltip("used for:N")]
    base = alt.Chart(t)
    layers = [base.mark_rule().encode(x=x, y=alt.Y("p25_ms:Q", scale=alt.Scale(type="log")),
                                      y2="p75_ms:Q", color=color),
              base.mark_tick(thickness=2, size=10).encode(
                  x=x, y=alt.Y("median_ms:Q", scale=alt.Scale(type="log")), color=color,
                  tooltip=tips),
              base.mark_point(filled=True, size=60).encode(x=x, y=y, color=color, tooltip=tips)]
    if fit is not None and not fit.empty:
        f = fit.assign(series="α–β fit")
        layers.insert(0, alt.Chart(f).mark_line(color="black", strokeDash=[5, 3]).encode(
            x=x, y=alt.Y("fit_ms:Q", scale=alt.Scale(type="log")),
            tooltip=[alt.Tooltip("bytes:Q", format=","), alt.Tooltip("fit_ms:Q", format=".4f")]))
    return alt.layer(*layers).properties(
        title=alt.Title(title, subtitle=subtitle or (
            f"dots: {'lower quartile' if stat == 'p25_ms' else 'median'} (what the fit uses) · "
            "ticks: median · bars: p25–p75 · dashed: the α–β fit")),
        width=WIDTH, height=HEIGHT)


def loss_curves_chart(frame: pd.DataFrame, *, title: str = "Training loss: one process vs N",
                      shards: bool = True) -> alt.TopLevelMixin:
    """The global-batch loss per step of each run (lines: they should lie on top of each other)
    and, faintly, each rank's own shard loss (different data, so a different number)."""
    if frame is None or frame.empty:
        return _empty(title, "no training runs yet")
    runs = frame[frame["rank"].isna()]
    lines = alt.Chart(runs).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("loss:Q", title="loss (nats)",
                                                 scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title="run"),
        strokeDash=alt.StrokeDash("series:N", legend=None),
        tooltip=["series:N", "step:Q", alt.Tooltip("loss:Q", format=".6f")])
    layers = [lines]
    part = frame[frame["rank"].notna()]
    if shards and not part.empty:
        layers.insert(0, alt.Chart(part).mark_line(opacity=0.35, strokeWidth=1).encode(
            x="step:Q", y="loss:Q", detail="series:N", color=alt.value("#999999"),
            tooltip=["series:N", "step:Q", alt.Tooltip("loss:Q", format=".4f")]))
    return alt.layer(*layers).properties(
        title=alt.Title(title, subtitle="grey: each rank's loss on its own share of the batch"),
        width=WIDTH, height=HEIGHT)


def step_time_chart(frame: pd.DataFrame, *, title: str = "Step time: measured vs predicted"
                    ) -> alt.TopLevelMixin:
    """Per run (one process, or N processes at a bucket size): the measured step median with its
    p25–p75 bar, the compute-only median beside it, and the α–β prediction (compute + Σ buckets)
    as a black tick."""
    if frame is None or frame.empty:
        return _empty(title, "no data-parallel runs yet")
    t = frame.copy()
    t["run"] = [("1 process" if w == 1 else f"{w} ranks, {b:g} MiB ({n} buckets)")
                for w, b, n in zip(t["world_size"], t["bucket_cap_mb"], t["n_buckets"])]
    order = list(t.sort_values(["world_size", "bucket_cap_mb"])["run"])
    rows = []
    for _, r in t.iterrows():
        rows.append({"run": r["run"], "what": "measured step", "ms": r["step_ms"],
                     "p25": r["step_p25_ms"], "p75": r["step_p75_ms"], "n": r["n"]})
        if r["world_size"] > 1:  # alone, a step is all compute
            rows.append({"run": r["run"], "what": "compute only (no all-reduce)",
                         "ms": r["compute_ms"], "p25": r["compute_p25_ms"],
                         "p75": r["compute_p75_ms"], "n": r["n"]})
    long = pd.DataFrame(rows)
    x = alt.X("run:N", sort=order, title=None, axis=alt.Axis(labelAngle=-20, labelLimit=220))
    color = alt.Color("what:N", title=None, scale=alt.Scale(
        domain=["measured step", "compute only (no all-reduce)"], range=["#4c78a8", "#bab0ac"]))
    off = alt.XOffset("what:N", sort=["measured step", "compute only (no all-reduce)"])
    base = alt.Chart(long)
    layers = [base.mark_bar(opacity=0.85).encode(
                  x=x, xOffset=off, y=alt.Y("ms:Q", title="ms per step (median)"), color=color,
                  tooltip=["run:N", "what:N", alt.Tooltip("ms:Q", format=".2f"),
                           alt.Tooltip("p25:Q", format=".2f"), alt.Tooltip("p75:Q", format=".2f"),
                           "n:Q"]),
              base.mark_rule(color="black").encode(x=x, xOffset=off, y="p25:Q", y2="p75:Q")]
    if "pred_ms" in t.columns and t["pred_ms"].notna().any():
        pred = t[t["pred_ms"].notna()].assign(what="measured step")
        layers.append(alt.Chart(pred).mark_tick(color="black", thickness=3, size=26).encode(
            x=x, xOffset=alt.XOffset("what:N", sort=["measured step",
                                                     "compute only (no all-reduce)"]),
            y="pred_ms:Q",
            tooltip=["run:N", alt.Tooltip("pred_ms:Q", format=".2f", title="predicted ms"),
                     alt.Tooltip("comm_pred_ms:Q", format=".2f", title="predicted all-reduce ms"),
                     alt.Tooltip("pred_error:Q", format="+.0%", title="prediction error")]))
    return alt.layer(*layers).properties(
        title=alt.Title(title, subtitle="black tick: compute + Σ buckets (α + bytes/β) · "
                                        "bars: p25–p75"), width=WIDTH, height=HEIGHT)


def memory_chart(frame: pd.DataFrame, *, title: str = "State per rank by category"
                 ) -> alt.TopLevelMixin:
    """Stacked bars of what each rank holds (parameters, gradients, optimizer state), one per
    (sharding, rank), with the formula's total as a black tick beside each bar."""
    if frame is None or frame.empty:
        return _empty(title, "no sharding measurements yet")
    t = frame.copy()
    t["bar"] = t["sharding"] + " · rank " + t["rank"].astype(str)
    t["MiB"] = t["measured_bytes"] / MIB
    order = [f"{s} · rank {r}" for s in ("none", "zero1", "zero2", "fsdp")
             for r in sorted(t["rank"].unique())]
    x = alt.X("bar:N", sort=order, title=None, axis=alt.Axis(labelAngle=-20))
    bars = alt.Chart(t).mark_bar().encode(
        x=x, y=alt.Y("sum(MiB):Q", title="MiB held by this rank"),
        color=alt.Color("category:N", scale=alt.Scale(domain=list(CATEGORY_COLORS),
                                                      range=list(CATEGORY_COLORS.values()))),
        order=alt.Order("category:N"),
        tooltip=["bar:N", "category:N", alt.Tooltip("MiB:Q", format=".4f"),
                 alt.Tooltip("measured_bytes:Q", format=","),
                 alt.Tooltip("formula_bytes:Q", format=",")])
    totals = (t.groupby("bar", as_index=False)[["formula_bytes"]].sum()
              .assign(formula_MiB=lambda d: d["formula_bytes"] / MIB))
    ticks = alt.Chart(totals).mark_tick(color="black", thickness=3, size=30).encode(
        x=x, y="formula_MiB:Q",
        tooltip=["bar:N", alt.Tooltip("formula_MiB:Q", format=".4f", title="formula MiB")])
    return alt.layer(bars, ticks).properties(
        title=alt.Title(title, subtitle="black tick: the formula (4P + 4P + 8P, each ÷ N where "
                                        "sharded)"), width=WIDTH, height=HEIGHT)


KIND_COLORS = {"all_reduce": "#4c78a8", "reduce_scatter": "#f58518", "all_gather": "#54a24b",
               "broadcast": "#b279a2"}


def volume_chart(frame: pd.DataFrame, *, rank: int = 0,
                 title: str = "Bytes each rank sends per step: measured vs the ZeRO paper"
                 ) -> alt.TopLevelMixin:
    """Stacked bars of the bytes ``rank`` sent in one counted step, by kind of collective (on a
    ring: 2(N−1)/N of an all-reduce's payload, (N−1)/N of the others'), one bar per layout, with
    the paper's count (2Ψ or 3Ψ, × (N−1)/N) as a black tick. ``frame``: a
    ``studies.distributed.volume_table``."""
    if frame is None or frame.empty:
        return _empty(title, "no communication counted yet")
    t = frame[frame["rank"] == rank]
    rows = []
    for _, r in t.iterrows():
        share = (r["world_size"] - 1) / r["world_size"]
        for k in KIND_COLORS:
            wire = (2 * share if k == "all_reduce" else share) * r[f"{k}_psi"] * r["psi_bytes"]
            if wire > 0:
                rows.append({"layout": r["layout"], "kind": k, "MiB": wire / MIB,
                             "psi": wire / r["psi_bytes"]})
    long = pd.DataFrame(rows)
    order = list(t["layout"])
    x = alt.X("layout:N", sort=order, title=None)
    bars = alt.Chart(long).mark_bar().encode(
        x=x, y=alt.Y("sum(MiB):Q", title="MiB sent per step by this rank"),
        color=alt.Color("kind:N", title="collective", scale=alt.Scale(
            domain=list(KIND_COLORS), range=list(KIND_COLORS.values()))),
        tooltip=["layout:N", "kind:N", alt.Tooltip("MiB:Q", format=".4f"),
                 alt.Tooltip("psi:Q", format=".3f", title="× Ψ")])
    paper = t.assign(paper_MiB=t["paper_bytes"] / MIB)
    tips = ["layout:N", alt.Tooltip("paper_MiB:Q", format=".4f", title="paper MiB"),
            alt.Tooltip("ratio:Q", format=".2f", title="measured ÷ paper")]
    if "comm_pred_ms" in paper.columns:
        tips.append(alt.Tooltip("comm_pred_ms:Q", format=".2f", title="predicted ms (α–β)"))
    ticks = alt.Chart(paper).mark_tick(color="black", thickness=3, size=40).encode(
        x=x, y="paper_MiB:Q", tooltip=tips)
    return alt.layer(bars, ticks).properties(
        title=alt.Title(title, subtitle="black tick: the paper's 2Ψ (DDP, ZeRO-1, ZeRO-2) or 3Ψ "
                                        "(FSDP), × (N−1)/N · Ψ = fp32 parameter bytes"),
        width=WIDTH, height=HEIGHT)


def phase_memory_chart(frame: pd.DataFrame, *, rank: int = 0,
                       title: str = "What a rank holds during a step"
                       ) -> alt.TopLevelMixin:
    """Grouped stacked bars: per layout, the bytes ``rank`` held after forward, at the fullest
    moment of backward and after the step, by category, with the textbook's per-rank total as
    a black tick. ``frame``: a ``studies.distributed.phase_table``."""
    if frame is None or frame.empty:
        return _empty(title, "no sharding measurements yet")
    t = frame[frame["rank"] == rank]
    phases = ["after_forward", "backward_peak", "after_step"]
    long = t.melt(id_vars=["layout", "phase", "textbook_total"], value_vars=list(CATEGORY_COLORS),
                  var_name="category", value_name="bytes").assign(MiB=lambda d: d["bytes"] / MIB)
    order = list(dict.fromkeys(t["layout"]))
    x = alt.X("layout:N", sort=order, title=None)
    off = alt.XOffset("phase:N", sort=phases)
    bars = alt.Chart(long).mark_bar().encode(
        x=x, xOffset=off, y=alt.Y("sum(MiB):Q", title="MiB alive on this rank"),
        color=alt.Color("category:N", scale=alt.Scale(domain=list(CATEGORY_COLORS),
                                                      range=list(CATEGORY_COLORS.values()))),
        opacity=alt.Opacity("phase:N", sort=phases, scale=alt.Scale(range=[0.55, 1.0, 0.8])),
        tooltip=["layout:N", "phase:N", "category:N", alt.Tooltip("MiB:Q", format=".4f")])
    book = t.drop_duplicates(["layout"]).assign(textbook_MiB=lambda d: d["textbook_total"] / MIB)
    ticks = alt.Chart(book).mark_tick(color="black", thickness=3, size=50).encode(
        x=x, y="textbook_MiB:Q",
        tooltip=["layout:N", alt.Tooltip("textbook_MiB:Q", format=".4f", title="textbook MiB")])
    return alt.layer(bars, ticks).properties(
        title=alt.Title(title, subtitle="three bars per layout: after forward · fullest moment "
                                        "of backward · after the step; black tick: the textbook "
                                        "total"), width=WIDTH, height=HEIGHT)


def bubble_chart(frame: pd.DataFrame, *, title: str = "Pipeline bubble: measured (p25–p75) vs "
                                                     "(p − 1)/(m + p − 1)") -> alt.TopLevelMixin:
    """Lesson 15: each (schedule, m)'s measured idle share of a stage (a point, a p25–p75 bar)
    on a log-2 m axis, beside the formula as a dashed line. ``frame``: a
    ``studies.model_parallel.bubble_summary`` (columns schedule, m, idle, idle_p25, idle_p75,
    formula; with a ``stage_sim`` column, the ideal schedule run with each stage's own times
    is drawn as a hollow diamond)."""
    if frame is None or frame.empty:
        return _empty(title, "no pipeline measurements yet")
    x = alt.X("m:Q", scale=alt.Scale(type="log", base=2), title="micro-batches m")
    color = alt.Color("schedule:N")
    base = alt.Chart(frame)
    theory = base.mark_line(strokeDash=[4, 3], color="gray").encode(x=x, y="formula:Q")
    bars = base.mark_rule().encode(x=x, y="idle_p25:Q", y2="idle_p75:Q", color=color)
    points = base.mark_point(filled=True).encode(
        x=x, y=alt.Y("idle:Q", title="idle share of a stage"), color=color,
        tooltip=["schedule:N", "m:Q", alt.Tooltip("idle:Q", format=".3f"),
                 alt.Tooltip("formula:Q", format=".3f")])
    layers = [theory, bars, points]
    if "stage_sim" in frame:
        layers.append(base.mark_point(shape="diamond", filled=False, size=90).encode(
            x=x, y="stage_sim:Q", color=color,
            tooltip=["schedule:N", "m:Q", alt.Tooltip("stage_sim:Q", format=".3f",
                                                      title="ideal, this run's stage times")]))
    return alt.layer(*layers).properties(title=title, width=WIDTH, height=220)


def timeline_chart(frame: pd.DataFrame, *, title: str = "One pipeline step's busy spans, "
                                                       "measured and ideal") -> alt.TopLevelMixin:
    """Lesson 15: a Gantt chart of one step, a bar per forward (F) or backward (B) span, a row
    per stage, one panel for the measured spans and one for the ideal schedule. ``frame``: a
    ``studies.model_parallel.timeline_frame`` (columns source, stage, action, start_ms,
    end_ms)."""
    if frame is None or frame.empty:
        return _empty(title, "no pipeline timeline yet")
    return alt.Chart(frame).mark_bar(stroke="white").encode(
        x=alt.X("start_ms:Q", title="ms from the step's start"), x2="end_ms:Q",
        y=alt.Y("stage:O"), color=alt.Color("action:N", title="F forward, B backward"),
        row=alt.Row("source:N", title=None),
        tooltip=["source:N", "stage:O", "action:N", "micro:Q",
                 alt.Tooltip("start_ms:Q", format=".2f"), alt.Tooltip("end_ms:Q", format=".2f")],
    ).properties(title=title, width=520, height=50)


__all__ = ["allreduce_chart", "loss_curves_chart", "step_time_chart", "memory_chart",
           "volume_chart", "phase_memory_chart", "bubble_chart", "timeline_chart"]
