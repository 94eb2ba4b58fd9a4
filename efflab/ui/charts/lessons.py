"""One-off charts of single lessons, each over its own small table (not measurement records):
the tokens each MoE expert received (06), attention memory against sequence length (04), and
per-layer SQNR of quantized weights (05). Altair only, no torch.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from efflab.ui.charts.frame import MIB
from efflab.ui.charts.marks import HEIGHT, WIDTH, placeholder


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
        return placeholder(title, "no MoE layers (yet)")
    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("expert:O", title="expert"), y=alt.Y("tokens:Q", title="tokens routed"),
        color=alt.Color("variant:N", title="variant"),
        column=alt.Column("layer:N", title=None), row=alt.Row("variant:N", title=None),
        tooltip=["variant", "layer", "expert", "tokens"]).properties(
        width=110, height=90, title=alt.TitleParams(title, anchor="start"))


def attention_memory_chart(df: pd.DataFrame, *, title: str = "Attention memory vs sequence length"
                           ) -> alt.TopLevelMixin:
    """Measured peak bytes of one attention forward+backward per impl against T (points), the
    formula's prediction beside them (dashed), on log-log axes: a slope of 2 is T², of 1 is T."""
    if df is None or df.empty:
        return placeholder(title, "no measurements yet")
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
        return placeholder(title, "no quantized layers")
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


__all__ = ["expert_load_chart", "attention_memory_chart", "sqnr_chart"]
