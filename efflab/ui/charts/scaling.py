"""Charts of an IsoFLOP sweep (altair only; no torch): loss vs size per budget with the fitted
parabolas, and the compute-optimal size and tokens vs compute beside the published laws."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

WIDTH, HEIGHT = 340, 240


def _budget_label(c: float) -> str:
    return f"C = {c:.0e} FLOPs".replace("e+", "e")


def _placeholder(title: str, text: str) -> alt.Chart:
    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(size=13).encode(text="t:N").properties(
        width=WIDTH, height=HEIGHT, title=title)


def isoflop_chart(runs: pd.DataFrame, fit: dict | None = None, *,
                  title: str = "IsoFLOP curves: held-out loss vs model size") -> alt.TopLevelMixin:
    """One colour per budget: each run's held-out loss (±1.96 standard errors over the eval
    batches) against its compute parameters N (log axis); with ``fit``, each budget's parabola
    and its vertex (filled: inside the sizes tried; hollow: outside, an extrapolation)."""
    if runs is None or len(runs) == 0:
        return _placeholder(title, "no runs yet")
    t = runs.copy()
    t["budget_label"] = t["budget"].map(_budget_label)
    se = t["val_se"] if "val_se" in t else 0.0
    t["lo"], t["hi"] = t["val_loss"] - 1.96 * se, t["val_loss"] + 1.96 * se
    order = [_budget_label(b) for b in sorted(t["budget"].unique())]
    colour = alt.Color("budget_label:N", title="budget", sort=order)
    x = alt.X("n_params:Q", scale=alt.Scale(type="log"), title="compute parameters N (log)")
    y = alt.Y("val_loss:Q", scale=alt.Scale(zero=False), title="held-out loss (nats per byte)")
    tips = [alt.Tooltip("name:N", title="shape"), alt.Tooltip("n_params:Q", format=","),
            alt.Tooltip("tokens:Q", format=","), alt.Tooltip("val_loss:Q", format=".4f"),
            alt.Tooltip("budget_label:N", title="budget")]
    layers = [
        alt.Chart(t).mark_rule().encode(x=x, y="lo:Q", y2="hi:Q", color=colour),
        alt.Chart(t).mark_point(filled=True, size=50).encode(x=x, y=y, color=colour, tooltip=tips),
    ]
    if fit is not None:
        curves, verts = [], []
        for _, r in fit["budgets"].iterrows():
            if not math.isfinite(r["n_opt"]):
                continue
            c2, c1, c0 = r["coef"]
            lo = math.log10(r["n_min"]) - 0.1
            hi = math.log10(r["n_max"]) + 0.1
            for lx in np.linspace(lo, hi, 40):
                curves.append({"n_params": 10 ** lx, "val_loss": c2 * lx * lx + c1 * lx + c0,
                               "budget_label": _budget_label(r["budget"])})
            verts.append({"n_params": r["n_opt"], "val_loss": r["loss_opt"],
                          "budget_label": _budget_label(r["budget"]),
                          "where": "vertex inside sizes tried" if r["inside"]
                          else "vertex OUTSIDE sizes tried"})
        if curves:
            layers.append(alt.Chart(pd.DataFrame(curves)).mark_line(strokeDash=[4, 3]).encode(
                x=x, y=y, color=colour))
        if verts:
            v = pd.DataFrame(verts)
            layers.append(alt.Chart(v).mark_point(shape="diamond", size=160, strokeWidth=2).encode(
                x=x, y=y, color=colour,
                fill=alt.condition("datum.where == 'vertex inside sizes tried'",
                                   "budget_label:N", alt.value("white"), sort=order,
                                   legend=None),
                tooltip=[alt.Tooltip("budget_label:N"), alt.Tooltip("n_params:Q", format=",.0f",
                                                                    title="N_opt"),
                         alt.Tooltip("where:N")]))
    return alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT,
        title=alt.TitleParams(title, subtitle=["dots: runs (bars: 95% eval interval) · dashes: "
                                               "parabola in log N · diamond: vertex (hollow = "
                                               "outside the sizes tried)"], anchor="start"))


def law_frame(fit: dict, published: dict, span: tuple[float, float] | None = None) -> pd.DataFrame:
    """Lines N_opt(C) and D_opt(C): the fit, and each published exponent drawn through the
    fit's middle budget (only the slopes are comparable across setups, not the prefactors)."""
    b = fit["budgets"]
    lo, hi = span or (b["budget"].min() / 2, b["budget"].max() * 20)
    cs = np.logspace(math.log10(lo), math.log10(hi), 20)
    mid_c = float(np.exp(np.log(b["budget"]).mean()))
    k, a = fit["n_law"]["prefactor"], fit["a"]
    mid_n = k * mid_c ** a
    rows = []
    lines = {f"this sweep (a = {a:.2f})": a}
    lines.update({f"{name} (a = {p['a']:.2f})": p["a"] for name, p in published.items()})
    for label, e in lines.items():
        for c in cs:
            n = mid_n * (c / mid_c) ** e
            src = "fit" if label.startswith("this sweep") else "published"
            rows.append({"C": c, "value": n, "quantity": "N_opt (parameters)", "law": label,
                         "source": src})
            rows.append({"C": c, "value": c / (6 * n), "quantity": "D_opt (tokens)", "law": label,
                         "source": src})
    return pd.DataFrame(rows)


def scaling_law_chart(fit: dict, published: dict, *, extra: pd.DataFrame | None = None,
                      title: str = "Compute-optimal size and tokens vs compute") -> alt.TopLevelMixin:
    """Two panels (N_opt, D_opt) against compute C on log-log axes: each budget's vertex with
    its bootstrap 95% interval (hollow if outside the sizes tried), the fitted power law, and
    Chinchilla's and Kaplan's exponents through the same middle point. ``extra``: more points
    (C, value, quantity, law) — e.g. a prediction at 10x the largest budget."""
    b = fit["budgets"]
    pts = []
    for _, r in b.iterrows():
        where = "inside" if r["inside"] else "outside"
        pts.append({"C": r["budget"], "value": r["n_opt"], "lo": r["n_opt_lo"],
                    "hi": r["n_opt_hi"], "quantity": "N_opt (parameters)", "vertex": where})
        pts.append({"C": r["budget"], "value": r["d_opt"], "lo": r["budget"] / (6 * r["n_opt_hi"]),
                    "hi": r["budget"] / (6 * r["n_opt_lo"]), "quantity": "D_opt (tokens)",
                    "vertex": where})
    p = pd.DataFrame(pts)
    lines = law_frame(fit, published)
    x = alt.X("C:Q", scale=alt.Scale(type="log"), title="training compute C (FLOPs)")
    law_colour = alt.Color("law:N", title="power law")

    def panel(quantity: str) -> alt.LayerChart:
        y = alt.Y("value:Q", scale=alt.Scale(type="log"), title=quantity)
        pq, lq = p[p["quantity"] == quantity], lines[lines["quantity"] == quantity]
        layers = [
            alt.Chart(lq).mark_line().encode(
                x=x, y=y, color=law_colour,
                strokeDash=alt.StrokeDash("source:N", legend=None, scale=alt.Scale(
                    domain=["fit", "published"], range=[[1, 0], [5, 4]]))),
            alt.Chart(pq).mark_rule(color="black").encode(x=x, y="lo:Q", y2="hi:Q"),
            alt.Chart(pq).mark_point(size=70, color="black", strokeWidth=2).encode(
                x=x, y=y, fill=alt.condition("datum.vertex == 'inside'", alt.value("black"),
                                             alt.value("white")),
                tooltip=[alt.Tooltip("C:Q", format=".2e"), alt.Tooltip("value:Q", format=",.0f"),
                         alt.Tooltip("vertex:N", title="vertex")]),
        ]
        if extra is not None and len(extra):
            eq = extra[extra["quantity"] == quantity]
            if len(eq):
                layers.append(alt.Chart(eq).mark_point(shape="cross", size=160, color="#d62728",
                                                       strokeWidth=2).encode(
                    x=x, y=y, tooltip=[alt.Tooltip("law:N"),
                                       alt.Tooltip("value:Q", format=",.0f")]))
        return alt.layer(*layers).properties(width=WIDTH - 80, height=HEIGHT)

    lo, hi = fit["a_ci"]
    return alt.hconcat(panel("N_opt (parameters)"), panel("D_opt (tokens)")).properties(
        title=alt.TitleParams(title, subtitle=[
            f"dots: each budget's vertex (bars: bootstrap 95% over eval batches; hollow: vertex "
            f"outside the sizes tried) · solid: this fit, a = {fit['a']:.2f} [{lo:.2f}, {hi:.2f}],"
            f" b = 1 − a", "dashed: published exponents drawn through the middle budget (slopes "
            "compare; prefactors do not)"], anchor="start"))


__all__ = ["isoflop_chart", "scaling_law_chart", "law_frame"]
