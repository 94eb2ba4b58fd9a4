"""Records -> the tidy frame the record charts draw: short column names, labels, axis titles.

The records DataFrame (``efflab.sweep(...)``, ``efflab.core.store.to_frame(records)``) has one row
per record and dotted column names (``latency_ms.median``, ``theory.roofline.bound`` ...).
Vega-Lite reads a dot in a field name as nesting, and a failed record lacks most columns, so
the charts first turn it into a *tidy* frame: one row per record, every column present (NaN or
"" where the record has no value), short names, and the marks each row needs:

* ``reused`` — the sweep took the record from the store instead of measuring it
  (``reused: True`` on the record); ``source`` says so in words for the legend;
* ``noisy`` — the measurement flagged its timing as unstable (``latency_ms.noisy: True``);
  ``timing`` says so in words, ``iqr_rel`` is the IQR/median behind it and ``spread_note`` the
  tooltip line ("noisy: IQR/median 14%"). Whether a timing is noisy is the measurement's call
  (it owns the threshold); the charts draw the flag and never re-decide it.

Pandas only: no altair, no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIB = 2**20

# series names: what the colour legends say
MEASURED = "measured"
THEORY_ROOFLINE = "theory (roofline bound)"
FAILED = "failed / refused"
PREDICTED_PEAK = "predicted peak (theory)"
BUDGET = "memory budget"

# the marks a record carries besides its values: where it came from, how stable its timing was
FRESH = "measured now"
REUSED = "reused from the store"
STABLE = "stable timing"
NOISY = "noisy timing"

# memory.by_category.* in the order they stack (bottom first)
MEMORY_CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "kv_cache", "other")

AXIS_LABELS = {
    "knobs.batch_size": "batch size (sequences per step)",
    "knobs.seq_len": "sequence length (tokens)",
    "knobs.gen_tokens": "generated tokens per sequence",
    "knobs.threads": "CPU threads",
    "knobs.seed": "seed",
    "knobs.workload": "workload",
    "workload": "workload",
    "preset": "preset",
}

# short name in the tidy frame -> dotted column of the records frame
NUMERIC_COLUMNS = {
    "tps": "throughput.tokens_per_s",
    "tokens_per_step": "throughput.tokens_per_step",
    "lat": "latency_ms.median",
    "lat_p25": "latency_ms.p25",
    "lat_p75": "latency_ms.p75",
    "n": "latency_ms.n",
    "cv": "latency_ms.cv",
    "theory_tps": "theory.roofline.tokens_per_s_upper_bound",
    "theory_ms": "theory.roofline.step_ms_lower_bound",
    "mfu": "flops.mfu",
    "peak_bytes": "memory.peak_bytes",
    "theory_peak_bytes": "theory.memory.peak_bytes",
    "budget_bytes": "budget_bytes",
    "bpb": "quality.bits_per_byte",
    "val_loss": "quality.val_loss",
    **{f"mem_{c}": f"memory.by_category.{c}" for c in MEMORY_CATEGORIES},
}
TEXT_COLUMNS = {"unit": "latency_ms.unit", "bound": "theory.roofline.bound"}

# columns whose value comes from a timing: a noisy timing makes them noisy too
_TIMED_PREFIXES = ("latency_ms.", "throughput.")
_TIMED_COLUMNS = {"flops.achieved_per_s", "flops.mfu", "ms per token"}


def axis_label(column: str) -> str:
    """A human axis title for a records-frame column: ``knobs.batch_size`` -> ``batch size ...``."""
    return AXIS_LABELS.get(column, column.rsplit(".", 1)[-1].replace("_", " "))


def is_timed(column: str) -> bool:
    """Whether a records-frame column is derived from a timing (latency, throughput, MFU,
    ``ms per token``): only such an axis is made unreliable by a noisy timing."""
    return column.startswith(_TIMED_PREFIXES) or column in _TIMED_COLUMNS


def column(df: pd.DataFrame, name: str, numeric: bool) -> pd.Series:
    """``df[name]``, or an all-missing column when the frame lacks it (failed records do)."""
    if name not in df.columns:
        return pd.Series(np.nan if numeric else None, index=df.index, dtype=float if numeric else object)
    col = df[name]
    return pd.to_numeric(col, errors="coerce").astype(float) if numeric else col


def _flag(df: pd.DataFrame, name: str) -> pd.Series:
    """A True/False column of ``df`` as booleans: True where the record says True; missing
    (NaN, None: records that do not carry the flag) is False."""
    if name not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    return df[name].eq(True).astype(bool)


def mark_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The marks of every row of a records frame, indexed like it::

        reused, source, noisy, timing, iqr_rel, spread_note

    ``iqr_rel`` is ``latency_ms.iqr_over_median`` when the record has it, else (p75 − p25) /
    median computed from the record's own quartiles (NaN without a timing). ``spread_note`` is
    the tooltip text: "noisy: IQR/median 14%", "stable: IQR/median 3%", or "" untimed.
    """
    out = pd.DataFrame(index=df.index)
    out["reused"] = _flag(df, "reused")
    out["source"] = np.where(out["reused"], REUSED, FRESH)
    out["noisy"] = _flag(df, "latency_ms.noisy")
    out["timing"] = np.where(out["noisy"], NOISY, STABLE)
    given = column(df, "latency_ms.iqr_over_median", numeric=True)
    median = column(df, "latency_ms.median", numeric=True)
    quartiles = (column(df, "latency_ms.p75", numeric=True)
                 - column(df, "latency_ms.p25", numeric=True)) / median.where(median > 0)
    out["iqr_rel"] = given.where(given.notna(), quartiles)
    out["spread_note"] = [
        "" if pd.isna(r) else f"{'noisy' if n else 'stable'}: IQR/median {r:.0%}"
        for n, r in zip(out["noisy"], out["iqr_rel"])]
    return out


def tidy(df: pd.DataFrame, x: str) -> tuple[pd.DataFrame, bool, int]:
    """The records frame -> one row per record with short column names.

    Returns ``(tidy, x_is_numeric, n_without_x)``. Rows of ``tidy``::

        x, status, message, preset, workload, panel, ok,       <- every record
        tps, lat, lat_p25, lat_p75, n, unit, theory_tps, ...   <- NaN / "" where missing
        reused, source, noisy, timing, iqr_rel, spread_note    <- the marks (mark_columns)

    Records with no value for ``x`` (``seq_len=None`` means "the preset's full context") cannot
    be placed on the axis: they are left out and counted in ``n_without_x``.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"charts take the records DataFrame of efflab.sweep / efflab.core.store.results, "
                        f"not {type(df).__name__}")
    if x not in df.columns:
        knob_cols = sorted(c for c in df.columns if c.startswith("knobs."))
        raise ValueError(f"x={x!r} is not a column of the results; columns you can put on x "
                         f"include: {', '.join(knob_cols) or '(none: the frame has no knobs)'}")
    t = pd.DataFrame(index=df.index)
    raw_x = df[x]
    num_x = pd.to_numeric(raw_x, errors="coerce")
    present = raw_x[raw_x.notna()]
    x_numeric = (not present.empty and bool(num_x[raw_x.notna()].notna().all())
                 and not any(isinstance(v, (bool, np.bool_)) for v in present))  # on/off: nominal
    t["x"] = num_x.astype(float) if x_numeric else raw_x.astype(object)
    status = column(df, "status", numeric=False)
    t["status"] = status.where(status.notna(), "ok").astype(str)
    t["ok"] = t["status"] == "ok"
    message = column(df, "message", numeric=False)
    t["message"] = message.where(message.notna(), "").astype(str)
    preset = column(df, "preset", numeric=False)
    t["preset"] = preset.where(preset.notna(), "?").astype(str)
    workload = column(df, "workload", numeric=False)
    if workload.isna().all() and "knobs.workload" in df.columns:
        workload = df["knobs.workload"]
    t["workload"] = workload.where(workload.notna(), "?").astype(str)
    for short, long in NUMERIC_COLUMNS.items():
        t[short] = column(df, long, numeric=True)
    for short, long in TEXT_COLUMNS.items():
        col = column(df, long, numeric=False)
        t[short] = col.where(col.notna(), "").astype(str)
    t = t.join(mark_columns(df))
    # tokens/s at the p75 latency (slower) and at the p25 latency (faster): the error bar
    t["tps_lo"] = t["tps"] * t["lat"] / t["lat_p75"]
    t["tps_hi"] = t["tps"] * t["lat"] / t["lat_p25"]
    # one panel per (preset, workload) present, unless x itself is what differs
    keys = []
    if t["preset"].nunique() > 1 and x != "preset":
        keys.append("preset")
    if t["workload"].nunique() > 1 and x not in ("workload", "knobs.workload"):
        keys.append("workload")
    t["panel"] = t[keys].agg(" · ".join, axis=1) if keys else ""
    has_x = t["x"].notna()
    return t[has_x].reset_index(drop=True), x_numeric, int((~has_x).sum())


def memory_frame(t: pd.DataFrame) -> pd.DataFrame:
    """The measured memory of the ok records in long format, one row per (record, category)::

        x, preset, workload, series (= category), order, mib, peak_mib, reused, source,
        fill_key (= series, or "reused from the store")

    Zero-sized categories are left out (they would draw nothing). ``t`` is a tidy frame
    (see :func:`tidy`); the bars of one x stack to the measured ``memory.peak_bytes``.
    """
    ok = t[t["ok"]]
    rows = []
    for order, cat in enumerate(MEMORY_CATEGORIES):
        col = ok[f"mem_{cat}"]
        part = ok[col.notna() & (col > 0)]
        if part.empty:
            continue
        rows.append(pd.DataFrame({
            "x": part["x"], "preset": part["preset"], "workload": part["workload"],
            "series": cat, "order": order, "mib": part[f"mem_{cat}"] / MIB,
            "peak_mib": part["peak_bytes"] / MIB, "reused": part["reused"],
            "source": part["source"], "fill_key": np.where(part["reused"], REUSED, cat)}))
    if not rows:
        return pd.DataFrame(columns=["x", "preset", "workload", "series", "order", "mib",
                                     "peak_mib", "reused", "source", "fill_key"])
    return pd.concat(rows, ignore_index=True)


__all__ = ["MIB", "MEASURED", "THEORY_ROOFLINE", "FAILED", "PREDICTED_PEAK", "BUDGET", "FRESH",
           "REUSED", "STABLE", "NOISY", "MEMORY_CATEGORIES", "AXIS_LABELS", "NUMERIC_COLUMNS",
           "TEXT_COLUMNS", "axis_label", "is_timed", "column", "mark_columns", "tidy",
           "memory_frame"]
