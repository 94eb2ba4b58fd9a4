"""Charts of lessons 10 and 11 (altair only; no torch): the KV cache's size and cost,
speculative decoding against its formula, and a server's latency-throughput curves.

Every builder takes a plain DataFrame of rows the library produced, shows each measured point
with its spread, and draws theory beside it where there is one.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

WIDTH, HEIGHT = 340, 230


def _placeholder(title: str, text: str) -> alt.Chart:
    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(size=13).encode(text="t:N").properties(
        width=WIDTH, height=HEIGHT, title=title)


def _title(title: str, *subtitle: str) -> alt.TitleParams:
    return alt.TitleParams(title, subtitle=list(subtitle), anchor="start")


def kv_bytes_chart(df: pd.DataFrame, *, title: str = "KV cache size") -> alt.TopLevelMixin:
    """Measured cache bytes (points) against the formula (line) per attention layout.
    Rows: variant, positions, measured_bytes, formula_bytes."""
    if df is None or len(df) == 0:
        return _placeholder(title, "no cache measured yet")
    t = df.assign(measured_kib=df["measured_bytes"] / 1024, formula_kib=df["formula_bytes"] / 1024)
    x = alt.X("positions:Q", title="cached positions (context × batch)")
    colour = alt.Color("variant:N", title="attention")
    line = alt.Chart(t).mark_line(strokeDash=[4, 3]).encode(
        x=x, y=alt.Y("formula_kib:Q", title="KV cache (KiB)"), color=colour)
    pts = alt.Chart(t).mark_point(filled=True, size=60).encode(
        x=x, y="measured_kib:Q", color=colour,
        tooltip=["variant:N", "positions:Q", alt.Tooltip("measured_kib:Q", format=",.1f"),
                 alt.Tooltip("formula_kib:Q", format=",.1f")])
    return alt.layer(line, pts).properties(width=WIDTH, height=HEIGHT, title=_title(
        title, "points: bytes the cache tensors hold · dashed: 2·L·kv heads·hs·bytes·positions"))


def decode_cost_chart(df: pd.DataFrame, *, title: str = "Cost of one new token vs context"
                      ) -> alt.TopLevelMixin:
    """Milliseconds per new token (median, bars p25-p75) against the context length, with and
    without the KV cache; dashed: the FLOP formula for each, scaled to the first cached point.
    Rows: mode, context, ms, ms_p25, ms_p75, theory_ms."""
    if df is None or len(df) == 0:
        return _placeholder(title, "nothing timed yet")
    x = alt.X("context:Q", title="tokens already in the context")
    colour = alt.Color("mode:N", title="decoding")
    base = alt.Chart(df)
    layers = [base.mark_line(point=True).encode(
                  x=x, y=alt.Y("ms:Q", title="ms per new token (median)"), color=colour,
                  tooltip=["mode:N", "context:Q", alt.Tooltip("ms:Q", format=".3f"), "n:Q"]),
              base.mark_rule().encode(x=x, y="ms_p25:Q", y2="ms_p75:Q", color=colour)]
    if "theory_ms" in df:
        layers.append(base.mark_line(strokeDash=[4, 3], opacity=0.7).encode(
            x=x, y="theory_ms:Q", color=colour))
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=_title(
        title, "bars: p25-p75 · dashed: FLOPs per token, scaled to the first measured point"))


def speculation_chart(df: pd.DataFrame, *, title: str = "Speculative decoding: tokens/s vs k"
                      ) -> alt.TopLevelMixin:
    """Tokens/s per draft length k (median, bars p25-p75 over prompts; k = 0 is the target
    alone) and the formula's prediction (baseline × predicted speed-up at the measured α).
    Rows: k, tokens_per_s, tokens_per_s_p25, tokens_per_s_p75, predicted_speedup."""
    if df is None or len(df) == 0:
        return _placeholder(title, "nothing decoded yet")
    t = df.copy()
    base_tps = float(t.loc[t["k"] == 0, "tokens_per_s"].iloc[0]) if (t["k"] == 0).any() else None
    x = alt.X("k:O", title="draft tokens per round k (0 = target alone)")
    layers = [alt.Chart(t).mark_point(filled=True, size=70, color="#1f77b4").encode(
                  x=x, y=alt.Y("tokens_per_s:Q", title="generated tokens/s"),
                  tooltip=["k:O", alt.Tooltip("tokens_per_s:Q", format=",.0f"),
                           alt.Tooltip("acceptance_rate:Q", format=".2f"), "n:Q"]),
              alt.Chart(t).mark_rule(color="#1f77b4").encode(
                  x=x, y="tokens_per_s_p25:Q", y2="tokens_per_s_p75:Q")]
    subtitle = ["points: measured median, bars p25-p75 over prompts"]
    if base_tps and "predicted_speedup" in t:
        t["predicted_tps"] = t["predicted_speedup"] * base_tps
        layers.append(alt.Chart(t).mark_line(strokeDash=[4, 3], color="#d62728", point=True)
                      .encode(x=x, y="predicted_tps:Q"))
        layers.append(alt.Chart(pd.DataFrame({"y": [base_tps * 1.5]})).mark_rule(
            color="grey", strokeDash=[2, 2]).encode(y="y:Q"))
        subtitle.append("red: formula at the measured α and costs · grey: 1.5× the target alone")
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=_title(title, *subtitle))


def latency_throughput_chart(df: pd.DataFrame, metric: str = "ttft", *,
                             title: str | None = None) -> alt.TopLevelMixin:
    """The latency-throughput curve per policy: achieved throughput (x) against p50 (line) and
    p99 (band top) of ``metric`` ("ttft" or "tpot"), one point per offered load.
    Rows: policy, rate, throughput_tok_s, <metric>_p50, <metric>_p99."""
    title = title or f"{metric.upper()} vs throughput"
    if df is None or len(df) == 0:
        return _placeholder(title, "no load served yet")
    t = df.copy()
    t["p50_ms"] = t[f"{metric}_p50"] * 1e3
    t["p99_ms"] = t[f"{metric}_p99"] * 1e3
    x = alt.X("throughput_tok_s:Q", title="achieved throughput (output tokens/s)")
    colour = alt.Color("policy:N", title="policy")
    base = alt.Chart(t)
    layers = [base.mark_area(opacity=0.18).encode(x=x, y="p50_ms:Q", y2="p99_ms:Q", color=colour),
              base.mark_line(point=True).encode(
                  x=x, y=alt.Y("p50_ms:Q", title=f"{metric.upper()} (ms): line p50, band to p99",
                               scale=alt.Scale(type="log")), color=colour,
                  tooltip=["policy:N", alt.Tooltip("rate:Q", format=".2f", title="offered req/s"),
                           alt.Tooltip("throughput_tok_s:Q", format=",.0f"),
                           alt.Tooltip("p50_ms:Q", format=",.1f"),
                           alt.Tooltip("p99_ms:Q", format=",.1f")]),
              base.mark_point(shape="triangle-up", size=40).encode(x=x, y="p99_ms:Q", color=colour)]
    return alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=_title(
        title, "one point per offered load · triangles: p99 · the knee: where latency climbs"))


def waste_chart(df: pd.DataFrame, *, title: str = "KV cache reserved but empty"
                ) -> alt.TopLevelMixin:
    """Wasted KV positions per running sequence (mean, bar to the max) per cache layout, with
    the paged bound (block_size - 1) as a rule. Rows: layout, waste_per_seq_mean,
    waste_per_seq_max, block_size."""
    if df is None or len(df) == 0:
        return _placeholder(title, "no run yet")
    t = df.copy()
    y = alt.Y("layout:N", title=None)
    layers = [alt.Chart(t).mark_bar(opacity=0.7).encode(
                  y=y, x=alt.X("waste_per_seq_mean:Q", title="empty positions per sequence"),
                  color=alt.Color("layout:N", legend=None),
                  tooltip=["layout:N", alt.Tooltip("waste_per_seq_mean:Q", format=".1f"),
                           alt.Tooltip("waste_per_seq_max:Q", format=".1f")]),
              alt.Chart(t).mark_tick(color="black", thickness=2, size=18).encode(
                  y=y, x="waste_per_seq_max:Q")]
    if "block_size" in t:
        bs = t.loc[t["layout"] == "paged", "block_size"]
        if len(bs):
            layers.append(alt.Chart(pd.DataFrame({"x": [float(bs.iloc[0]) - 1]})).mark_rule(
                color="red", strokeDash=[4, 3]).encode(x="x:Q"))
    return alt.layer(*layers).properties(width=WIDTH, height=120, title=_title(
        title, "bars: mean over iterations · ticks: worst iteration · red: paged bound, one block"))
