"""Guess, theory and measurement side by side: the chart after every "Predict first".

Altair only. :func:`compare_prediction` prints the one-line feedback of
:func:`efflab.ui.predictions.compare` and returns :func:`prediction_chart` of it.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from efflab.ui.predictions import NO_GUESS, compare

COLORS = {"your guess": "#9467bd", "theory": "#ff7f0e", "measured": "#1f77b4"}


def _number(x) -> float | None:
    if x is None or isinstance(x, (str, bool)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def prediction_chart(c: dict, *, width: int = 300) -> alt.TopLevelMixin:
    """One bar each for the guess, theory and measurement of comparison ``c`` (from
    :func:`efflab.ui.predictions.compare`); the measurement's spread as an error bar; a missing
    guess or theory is a labelled empty slot, never an error."""
    unit = c.get("unit") or ""
    rows = []
    for what, value in (("your guess", c["guess"]), ("theory", c["theory"]),
                        ("measured", c["measured"])):
        v = _number(value)
        label = (NO_GUESS if what == "your guess" else "no theory") if value is None else (
            str(value) if v is None else f"{v:,.3g}")
        rows.append({"what": what, "value": v if v is not None else 0.0, "label": label,
                     "missing": v is None})
    frame = pd.DataFrame(rows)
    order = list(COLORS)
    base = alt.Chart(frame).encode(
        y=alt.Y("what:N", sort=order, title=None),
        tooltip=["what", "label"])
    bars = base.mark_bar(size=20).encode(
        x=alt.X("value:Q", title=f"{c['name']}{f' ({unit})' if unit else ''}"),
        color=alt.Color("what:N", scale=alt.Scale(domain=order, range=list(COLORS.values())),
                        legend=None),
        opacity=alt.condition("datum.missing", alt.value(0.0), alt.value(1.0)))
    labels = base.mark_text(align="left", dx=4).encode(x="value:Q", text="label:N")
    layers = [bars, labels]
    if c.get("spread") and _number(c["measured"]) is not None:
        lo, hi = (float(v) for v in c["spread"])
        err = pd.DataFrame({"what": ["measured"], "lo": [lo], "hi": [hi]})
        layers.append(alt.Chart(err).mark_rule(color="black", strokeWidth=2).encode(
            y=alt.Y("what:N", sort=order), x="lo:Q", x2="hi:Q"))
    return alt.layer(*layers).properties(
        width=width, height=90, title=alt.TitleParams(c["text"], anchor="start", fontSize=11,
                                                      limit=width + 200))


def compare_prediction(name: str, measured, theory=None, *, unit: str | None = None,
                       spread=None, store=None) -> alt.TopLevelMixin:
    """Print how the recorded guess for ``name`` compares with ``measured`` (and ``theory``),
    and return the chart of all three."""
    c = compare(name, measured, theory, unit=unit, spread=spread, store=store)
    print(c["text"])
    return prediction_chart(c)




def _bits(scheme: str) -> int | None:
    digits = "".join(ch for ch in str(scheme).split("-")[0] if ch.isdigit())
    return int(digits) if digits else None


def db_per_bit_chart(rows, *, db_per_bit: float = 6.02,
                     title: str = "SQNR against bits: each bit buys ~6 dB") -> alt.TopLevelMixin:
    """Per-layer SQNR (points) at each scheme's bits, beside the rule of thumb (dashed): a line of
    slope ``db_per_bit`` through the mean SQNR of the widest scheme. ``rows``: dicts or a
    DataFrame with name, scheme ("int8-weight", "int4-weight" ...) and sqnr_db."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame["bits"] = [_bits(s) for s in frame["scheme"]]
    frame = frame.dropna(subset=["bits"])
    frame = frame[frame["sqnr_db"].map(lambda v: math.isfinite(float(v)))]
    if frame.empty:
        return alt.Chart(pd.DataFrame({"t": ["no quantized layers"]})).mark_text().encode(
            text="t:N").properties(title=title)
    hi = frame["bits"].max()
    anchor = frame[frame["bits"] == hi]["sqnr_db"].mean()
    lo = min(frame["bits"].min(), hi - 1)
    theory = pd.DataFrame({"bits": [lo, hi], "sqnr_db": [anchor - db_per_bit * (hi - lo), anchor],
                           "what": [f"{db_per_bit:g} dB per bit"] * 2})
    x = alt.X("bits:Q", title="bits per weight", scale=alt.Scale(domain=[lo - 0.5, hi + 0.5]))
    y = alt.Y("sqnr_db:Q", title="SQNR (dB)")
    points = alt.Chart(frame).mark_point(filled=True, size=60, opacity=0.7).encode(
        x=x, y=y, color=alt.Color("scheme:N", title="scheme"),
        tooltip=["name", "scheme", alt.Tooltip("sqnr_db:Q", format=".1f")])
    line = alt.Chart(theory).mark_line(color=COLORS["theory"], strokeDash=[6, 4]).encode(
        x=x, y=y, tooltip=["what"])
    return alt.layer(line, points).properties(width=320, height=220,
                                              title=alt.TitleParams(title, anchor="start"))


__all__ = ["prediction_chart", "compare_prediction", "db_per_bit_chart"]
