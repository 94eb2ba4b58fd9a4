"""Charts of what happens inside one step: the operator roofline, where the time goes, the
memory timeline, and operator counts/traffic before and after fusion.

Altair only (nothing here imports torch). Inputs are the plain frames and dicts that
:mod:`efflab.measurement.profiling` and :mod:`efflab.measurement.memory_timeline` return, and the calibration dict.

The roofline: x = arithmetic intensity (FLOPs per byte moved, from shapes), y = achieved FLOP/s
(FLOPs ÷ measured time, with the p25–p75 spread over the profiled steps as a vertical bar).
Roofs come from this machine's calibration: one flat compute roof per number format that runs
well here, and one slanted roof per measured bandwidth (read, copy): attainable FLOP/s =
intensity × bandwidth. Where the slanted roof meets the flat one is the ridge (machine
balance): operators left of it cannot be compute-bound, whatever the kernel.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

KIND_COLORS = {"matmul": "#4c78a8", "attention": "#f58518", "norm": "#54a24b",
               "softmax": "#b279a2", "elementwise": "#e45756", "copy": "#9d755d",
               "optimizer": "#72b7b2", "view": "#bab0ac"}
CATEGORY_LABELS = {"parameters": "parameters", "gradients": "gradients",
                   "optimizer": "optimizer state", "activations": "activations",
                   "kv_cache": "KV cache", "other": "other (temporaries, inputs, logits)"}
CATEGORY_COLORS = {"parameters": "#4c78a8", "gradients": "#72b7b2",
                   "optimizer state": "#54a24b", "activations": "#eeca3b", "KV cache": "#b279a2",
                   "other (temporaries, inputs, logits)": "#bab0ac"}


def roofs_from_calibration(cal: dict, min_fraction: float = 0.25) -> dict:
    """The roofs of this machine from a calibration dict (``efflab.calibrate()``).

    A number format gets a compute roof when its measured matmul peak is at least
    ``min_fraction`` of the fastest format's; the others are listed under ``excluded`` with
    their measured peak (on an AVX2 CPU, bf16 and fp16 run at ~1 GFLOP/s: a roof 100× below
    fp32 would only mislead). fp32 keeps its roof whatever the fastest format is (on a GPU it
    sits far below the tensor cores, and it is the roof of the lessons' fp32 steps). Bandwidth
    roofs: the read and the copy bandwidth."""
    peaks = {k: v["flops_per_s"] for k, v in cal["matmul"].items() if v.get("flops_per_s")}
    best = max(peaks.values())

    def drawn(fmt, v):  # fp32, the format of the lessons' steps, always has its roof
        return v >= min_fraction * best or fmt == "float32"

    compute = [{"format": k, "flops_per_s": v} for k, v in peaks.items() if drawn(k, v)]
    excluded = [{"format": k, "flops_per_s": v} for k, v in peaks.items() if not drawn(k, v)]
    bandwidth = [{"name": "copy", "bytes_per_s": cal["bandwidth_bytes_per_s"]}]
    if cal.get("read_bandwidth_bytes_per_s"):
        bandwidth.insert(0, {"name": "read", "bytes_per_s": cal["read_bandwidth_bytes_per_s"]})
    return {"compute": sorted(compute, key=lambda r: -r["flops_per_s"]), "bandwidth": bandwidth,
            "excluded": excluded, "quick": bool(cal.get("quick"))}


def compute_roof(roofs: dict, fmt: str = "float32") -> dict:
    """The compute roof of the number format a step runs in (lesson 00's rule: the peak of the
    run's own format, never the machine's fastest): ``{"format", "flops_per_s", "runs_well"}``.
    A format left out of the chart's roofs (it crawls here) still has its measured peak."""
    for r in roofs["compute"]:
        if r["format"] == fmt:
            return {**r, "runs_well": True}
    for r in roofs["excluded"]:
        if r["format"] == fmt:
            return {**r, "runs_well": False}
    known = sorted(r["format"] for r in (*roofs["compute"], *roofs["excluded"]))
    raise KeyError(f"no calibrated matmul peak for {fmt!r} (calibrated: {', '.join(known)})")


def roofline_chart(points: pd.DataFrame, roofs: dict, *, title: str = "Roofline of one step",
                   width: int = 460, height: int = 320) -> alt.LayerChart:
    """Every operator of ``points`` (``efflab.measurement.profiling.roofline_points``) by intensity and
    achieved FLOP/s, coloured by kind, under this machine's roofs."""
    pts = points.copy()
    pts["time share"] = pts["time_ms"] / max(pts["time_ms"].sum(), 1e-12)
    lo = 10 ** math.floor(math.log10(max(pts["intensity"].min(), 1e-3)) - 0.5)
    hi = 10 ** math.ceil(math.log10(max(pts["intensity"].max(), 1.0)) + 0.5)
    xs = np.logspace(math.log10(lo), math.log10(hi), 60)
    top = max(r["flops_per_s"] for r in roofs["compute"])
    lines = []
    for c in roofs["compute"]:
        for b in roofs["bandwidth"]:
            for x in xs:
                lines.append({"intensity": x, "flops_per_s": min(c["flops_per_s"], x * b["bytes_per_s"]),
                              "roof": f"{c['format']} peak / {b['name']} bandwidth"})
    roof_df = pd.DataFrame(lines)
    ymin = max(min(pts["flops_per_s_p25"].min(), pts["flops_per_s"].min()) / 3, top * 1e-6)
    x = alt.X("intensity:Q", scale=alt.Scale(type="log", domain=[lo, hi]),
              title="arithmetic intensity (FLOPs per byte moved, from shapes)")
    y = alt.Y("flops_per_s:Q", scale=alt.Scale(type="log", domain=[ymin, top * 2]),
              title="achieved FLOP/s")
    roof = alt.Chart(roof_df).mark_line(strokeDash=[4, 3], color="#333", clip=True).encode(
        x=x, y=y, detail="roof:N", tooltip=["roof:N"])
    labels = pd.DataFrame([{"intensity": hi / 1.5, "flops_per_s": c["flops_per_s"] * 1.15,
                            "text": f"{c['format']} {c['flops_per_s'] / 1e9:.0f} GFLOP/s"}
                           for c in roofs["compute"]])
    roof_text = alt.Chart(labels).mark_text(align="right", fontSize=10).encode(
        x="intensity:Q", y="flops_per_s:Q", text="text:N")
    kinds = [k for k in KIND_COLORS if k in set(pts["kind"])]
    color = alt.Color("kind:N", scale=alt.Scale(domain=kinds,
                                                range=[KIND_COLORS[k] for k in kinds]),
                      title="operator kind")
    spread = alt.Chart(pts).mark_rule(opacity=0.6, clip=True).encode(
        x="intensity:Q", y="flops_per_s_p25:Q", y2="flops_per_s_p75:Q", color=color)
    dots = alt.Chart(pts).mark_circle(opacity=0.85, clip=True).encode(
        x=x, y=y, color=color,
        size=alt.Size("time share:Q", scale=alt.Scale(range=[30, 600]), legend=None),
        tooltip=["label:N", "kind:N", alt.Tooltip("intensity:Q", format=".3g"),
                 alt.Tooltip("flops_per_s:Q", format=".3s", title="FLOP/s (median)"),
                 alt.Tooltip("time_ms:Q", format=".3f", title="ms per step"),
                 alt.Tooltip("count:Q", title="calls per step"),
                 alt.Tooltip("n:Q", title="steps profiled"), "bound:N",
                 alt.Tooltip("of_roof:Q", format=".0%", title="of its roof")])
    subtitle = ["roofs: calibrated on this machine" + (" (quick calibration)" if roofs.get("quick")
                                                       else ""),
                "dot size: share of the step's time; bar: p25–p75 over the profiled steps"]
    if roofs.get("excluded"):
        subtitle.append("no roof for " + ", ".join(
            f"{e['format']} ({e['flops_per_s'] / 1e9:.2g} GFLOP/s: too slow here)"
            for e in roofs["excluded"]))
    return alt.layer(roof, roof_text, spread, dots).properties(
        width=width, height=height, title={"text": title, "subtitle": subtitle})


def op_time_chart(top: pd.DataFrame, *, title: str = "Where the step's time goes",
                  width: int = 380) -> alt.Chart:
    """Horizontal bars: time per operator per step (``StepProfile.top()``), coloured by kind."""
    kinds = [k for k in KIND_COLORS if k in set(top["kind"])]
    t = top.copy()
    t["share %"] = 100 * t["share"]
    return alt.Chart(t).mark_bar().encode(
        x=alt.X("time_ms:Q", title="ms per step (median over the profiled steps)"),
        y=alt.Y("op:N", sort="-x", title=None),
        color=alt.Color("kind:N", scale=alt.Scale(domain=kinds,
                                                  range=[KIND_COLORS[k] for k in kinds])),
        tooltip=["op:N", "kind:N", alt.Tooltip("time_ms:Q", format=".3f"),
                 alt.Tooltip("calls:Q"), alt.Tooltip("share %:Q", format=".1f")],
    ).properties(width=width, title=title)


def memory_timeline_chart(frame: pd.DataFrame, phase_starts: dict, *,
                          predicted_peak: float | None = None,
                          title: str = "Memory through one training step",
                          width: int = 460, height: int = 260) -> alt.LayerChart:
    """Stacked live MiB by category against allocation events, the phases marked, and the
    formula's predicted peak as a dashed line."""
    f = frame.copy()
    f["MiB"] = f["bytes"] / 2**20
    f["category"] = f["category"].map(CATEGORY_LABELS).fillna(f["category"])
    cats = [c for c in CATEGORY_COLORS if c in set(f["category"])]
    area = alt.Chart(f).mark_area().encode(
        x=alt.X("event:Q", title="allocation / free events, in order"),
        y=alt.Y("MiB:Q", stack="zero", title="live MiB"),
        color=alt.Color("category:N", scale=alt.Scale(domain=cats,
                                                      range=[CATEGORY_COLORS[c] for c in cats])),
        order=alt.Order("category_order:Q"),
        tooltip=["phase:N", "category:N", alt.Tooltip("MiB:Q", format=".2f")],
    ).transform_calculate(category_order=" + ".join(
        f"(datum.category == '{c}' ? {i} : 0)" for i, c in enumerate(cats)) or "0")
    ph = pd.DataFrame([{"event": e, "phase": p} for p, e in phase_starts.items() if p != "start"])
    rules = alt.Chart(ph).mark_rule(color="#555").encode(x="event:Q")
    names = alt.Chart(ph).mark_text(align="left", dx=3, dy=-height / 2 + 8, fontSize=11).encode(
        x="event:Q", text="phase:N")
    layers = [area, rules, names]
    if predicted_peak:
        pk = pd.DataFrame([{"MiB": predicted_peak / 2**20, "what": "predicted peak (theory)"}])
        layers.append(alt.Chart(pk).mark_rule(strokeDash=[6, 3], color="#222").encode(
            y="MiB:Q", tooltip=["what:N", alt.Tooltip("MiB:Q", format=".2f")]))
        layers.append(alt.Chart(pk).mark_text(align="right", dy=-6, x=width - 4, fontSize=11)
                      .encode(y="MiB:Q", text="what:N"))
    return alt.layer(*layers).properties(width=width, height=height, title=title)


def fusion_chart(df: pd.DataFrame, *, title: str = "Before and after fusion") -> alt.Chart:
    """Side-by-side bars per metric (``metric``, ``variant``, ``value``): e.g. kernels launched
    per block and MiB moved through memory, eager vs fused."""
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("variant:N", title=None),
        y=alt.Y("value:Q", title=None),
        color=alt.Color("variant:N"),
        column=alt.Column("metric:N", title=None),
        tooltip=["metric:N", "variant:N", alt.Tooltip("value:Q", format=",.2f"),
                 *(["source:N"] if "source" in df.columns else [])],
    ).properties(width=140, height=200, title=title).resolve_scale(y="independent")


__all__ = ["roofs_from_calibration", "roofline_chart", "op_time_chart", "memory_timeline_chart",
           "fusion_chart", "KIND_COLORS"]
