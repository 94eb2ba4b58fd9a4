"""Loss curves: one training run's train and held-out loss, and several runs side by side.

Training is not a measurement record: these charts take a training record's ``curve`` (dicts
``{"step", "train_loss"}`` / ``{"step", "val_loss"}``) or the ``efflab.measurement.training.train_curves``
table (one row per variant and step). Altair only, no torch.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from efflab.ui.charts.marks import HEIGHT, WIDTH, color, placeholder


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
        return placeholder(title, "no training steps yet")
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
    colour = color(domain, {"train": "#1f77b4", "validation": "#ff7f0e"})
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
                      .encode(x=x, y=y, color=colour, tooltip=tips))
    if not val.empty:
        layers.append(alt.Chart(val).mark_line(strokeWidth=2.5, point=True)
                      .encode(x=x, y=y, color=colour, tooltip=tips))
    return alt.layer(*layers).properties(
        width=WIDTH + 100, height=HEIGHT,
        title=alt.TitleParams(title, subtitle=["cross-entropy per byte; validation on held-out files"],
                              anchor="start"))


def compare_curves_chart(df: pd.DataFrame, x: str = "tokens", y: str = "train_loss", *,
                         title: str = "Loss side by side") -> alt.TopLevelMixin:
    """Several training runs on one axis (``efflab.measurement.training.train_curves`` output): one colour per
    variant, the training loss as a thin line and held-out loss as points. ``x`` is "step",
    "tokens", "flops" or "seconds" — loss per token, per unit of compute or per wall second."""
    if df is None or df.empty or "variant" not in df.columns:
        return placeholder(title, "no training steps yet")
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    if ok.empty:
        return placeholder(title, "every variant was refused on this machine")
    titles = {"step": "optimizer step", "tokens": "tokens trained on",
              "flops": "training FLOPs (model FLOPs)", "seconds": "wall time training (s)"}
    xenc = alt.X(f"{x}:Q", title=titles.get(x, x))
    colour = alt.Color("variant:N", title="variant")
    tips = [alt.Tooltip("variant:N"), alt.Tooltip("step:Q"), alt.Tooltip(f"{x}:Q", format=",.4~g"),
            alt.Tooltip(f"{y}:Q", title=y, format=".4f")]
    layers = [alt.Chart(ok).mark_line(strokeWidth=1.2, opacity=0.7).encode(
        x=xenc, y=alt.Y(f"{y}:Q", title="loss (nats per byte)", scale=alt.Scale(zero=False)),
        color=colour, tooltip=tips)]
    if "val_loss" in ok.columns and ok["val_loss"].notna().any():
        val = ok[ok["val_loss"].notna()]
        layers.append(alt.Chart(val).mark_point(filled=True, size=60, shape="diamond").encode(
            x=xenc, y="val_loss:Q", color=colour,
            tooltip=[alt.Tooltip("variant:N"), alt.Tooltip("step:Q"),
                     alt.Tooltip("val_loss:Q", title="held-out loss", format=".4f")]))
    return alt.layer(*layers).properties(
        width=WIDTH + 100, height=HEIGHT,
        title=alt.TitleParams(title, subtitle=["lines: training loss · diamonds: held-out loss"],
                              anchor="start"))


__all__ = ["training_curve_chart", "compare_curves_chart"]
