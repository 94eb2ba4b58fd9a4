"""Guess, theory and measurement side by side: the chart after every "Predict first".

Altair only. :func:`compare_prediction` prints the one-line feedback of
:func:`efflab.predictions.compare` and returns :func:`prediction_chart` of it.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from efflab.predictions import NO_GUESS, compare

COLORS = {"your guess": "#9467bd", "theory": "#ff7f0e", "measured": "#1f77b4"}


def _number(x) -> float | None:
    if x is None or isinstance(x, (str, bool)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def prediction_chart(c: dict, *, width: int = 300) -> alt.TopLevelMixin:
    """One bar each for the guess, theory and measurement of comparison ``c`` (from
    :func:`efflab.predictions.compare`); the measurement's spread as an error bar; a missing
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


__all__ = ["prediction_chart", "compare_prediction"]
