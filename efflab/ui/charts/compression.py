"""Charts of the compression lesson (altair only; no torch): quality and speed vs sparsity,
and the cost/quality frontier with the 98% floor and the 5x line."""

from __future__ import annotations

import altair as alt
import pandas as pd

WIDTH, HEIGHT = 340, 230


def _placeholder(title: str, text: str) -> alt.Chart:
    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(size=13).encode(text="t:N").properties(
        width=WIDTH, height=HEIGHT, title=title)


def sparsity_quality_chart(df: pd.DataFrame, x: str = "sparsity", *,
                           title: str = "Quality vs sparsity") -> alt.TopLevelMixin:
    """Held-out bits/byte (bars: 95% interval) against sparsity, one colour per method; the
    dense model's value as a grey rule. Rows: method, sparsity, bits_per_byte,
    bits_per_byte_ci95 (a LiveChart feeds them one at a time)."""
    if df is None or len(df) == 0:
        return _placeholder(title, "no pruned model measured yet")
    t = df.copy()
    t["lo"] = t["bits_per_byte"] - t["bits_per_byte_ci95"]
    t["hi"] = t["bits_per_byte"] + t["bits_per_byte_ci95"]
    xenc = alt.X(f"{x}:Q", title="sparsity (fraction removed)", scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("bits_per_byte:Q", title="held-out bits per byte (lower is better)",
              scale=alt.Scale(zero=False))
    colour = alt.Color("method:N", title="pruning")
    layers = [alt.Chart(t).mark_line(point=True).encode(
                  x=xenc, y=y, color=colour,
                  tooltip=["method:N", alt.Tooltip(f"{x}:Q", format=".2f"),
                           alt.Tooltip("bits_per_byte:Q", format=".4f")]),
              alt.Chart(t).mark_rule().encode(x=xenc, y="lo:Q", y2="hi:Q", color=colour)]
    dense = t[t[x] == 0]
    if len(dense):
        layers.append(alt.Chart(pd.DataFrame({"bpb": [float(dense["bits_per_byte"].iloc[0])]}))
                      .mark_rule(color="grey", strokeDash=[4, 3]).encode(y="bpb:Q"))
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=alt.TitleParams(
        title, subtitle=["bars: 95% interval over held-out windows · grey: the dense model"],
        anchor="start"))


def sparsity_speed_chart(df: pd.DataFrame, x: str = "sparsity", *,
                         title: str = "Decode speed vs sparsity") -> alt.TopLevelMixin:
    """Decode tokens/s at batch 1 (median, bars p25-p75) against sparsity per method, with
    theory beside it: dense kernels gain nothing from zeros (unstructured / 2:4 on a CPU stay
    at the dense speed); a structurally pruned model gains at most its FLOP reduction
    (``theory_tokens_per_s`` = dense speed × dense FLOPs ÷ pruned FLOPs)."""
    if df is None or len(df) == 0:
        return _placeholder(title, "no pruned model timed yet")
    t = df.copy()
    xenc = alt.X(f"{x}:Q", title="sparsity (fraction removed)", scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("tokens_per_s:Q", title="decode tokens/s, batch 1")
    colour = alt.Color("method:N", title="pruning")
    layers = [alt.Chart(t).mark_point(filled=True, size=60).encode(
                  x=xenc, y=y, color=colour,
                  tooltip=["method:N", alt.Tooltip(f"{x}:Q", format=".2f"),
                           alt.Tooltip("tokens_per_s:Q", format=",.0f"), "n:Q"]),
              alt.Chart(t).mark_rule().encode(x=xenc, y="tokens_per_s_p25:Q",
                                              y2="tokens_per_s_p75:Q", color=colour)]
    if "theory_tokens_per_s" in t:
        th = t.dropna(subset=["theory_tokens_per_s"])
        layers.append(alt.Chart(th).mark_line(strokeDash=[5, 4]).encode(
            x=xenc, y="theory_tokens_per_s:Q", color=colour))
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=alt.TitleParams(
        title, subtitle=["dots: median (bars p25-p75) · dashed: theory (FLOPs removed; zeros "
                         "in a dense layout remove none)", "timed on a shared host: provisional"],
        anchor="start"))


def frontier_chart(df: pd.DataFrame, cost: str = "speedup", *, floor: float = 0.98,
                   target: float = 5.0, front: pd.DataFrame | None = None,
                   title: str | None = None) -> alt.TopLevelMixin:
    """Quality (teacher bits/byte ÷ candidate's, bars: 95% paired interval) against how many
    times cheaper than the teacher each candidate is (``cost``: "speedup" in decode tokens/s
    or "shrink" in weight bytes), the frontier joined by a line, the ``floor`` as a horizontal
    rule and the ``target`` ratio as a vertical one: the claim lives in the top-right corner."""
    what = {"speedup": "times faster decode (tokens/s at batch 1)",
            "shrink": "times fewer weight bytes"}[cost]
    title = title or f"Compression frontier: quality vs {cost}"
    if df is None or len(df) == 0:
        return _placeholder(title, "no candidate measured yet")
    t = df.copy()
    xmax = max(float(t[cost].max()), target) * 1.15
    xenc = alt.X(f"{cost}:Q", title=what, scale=alt.Scale(type="log", domain=[0.5, xmax]))
    y = alt.Y("quality:Q", title="quality = teacher bpb ÷ candidate bpb",
              scale=alt.Scale(zero=False))
    layers = [
        alt.Chart(t).mark_rule(color="#888").encode(x=xenc, y="quality_lo:Q", y2="quality_hi:Q"),
        alt.Chart(t).mark_point(filled=True, size=70).encode(
            x=xenc, y=y, color=alt.Color("base:N", title="base model"),
            shape=alt.Shape("quant:N", title="weights"),
            tooltip=["label:N", alt.Tooltip("quality:Q", format=".4f"),
                     alt.Tooltip(f"{cost}:Q", format=".2f"), alt.Tooltip("weight_bytes:Q",
                                                                         format=","),
                     alt.Tooltip("tokens_per_s:Q", format=",.0f")]),
        alt.Chart(pd.DataFrame({"q": [floor]})).mark_rule(color="#d62728", strokeDash=[4, 3])
        .encode(y="q:Q"),
        alt.Chart(pd.DataFrame({"x": [target]})).mark_rule(color="#d62728", strokeDash=[4, 3])
        .encode(x="x:Q"),
    ]
    if front is not None and len(front):
        layers.append(alt.Chart(front.sort_values(cost)).mark_line(color="black", opacity=0.5)
                      .encode(x=xenc, y=y))
    return alt.layer(*layers).properties(width=WIDTH + 60, height=HEIGHT, title=alt.TitleParams(
        title, subtitle=[f"red dashes: {floor:.0%} of the teacher's quality and {target:g}x "
                         "cheaper — the claim is a point above and right of both",
                         "bars: paired bootstrap 95% · black line: the frontier"],
        anchor="start"))


__all__ = ["sparsity_quality_chart", "sparsity_speed_chart", "frontier_chart"]
