"""Predict first, for real: a learner's guess is recorded before the measurement it predicts.

``predict(name, value, unit=...)`` stores the guess in a ``predictions`` table of the results
store (the same SQLite file as the records, so a submission that carries its records carries
its predictions too). After the measurement, :func:`compare` puts the guess beside the
measured value and theory's value and words the miss: "you guessed 2.1x too high".
:func:`efflab.compare_prediction` (in :mod:`efflab.ui.charts.predictions`) prints that line and
returns the chart.

A guess still ``None`` (or ``...``) is not stored: the comparison then says "no guess" — it is
never an error. A learner may guess again: the latest guess of a name counts, and every guess
stays in the table.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from pathlib import Path

from efflab.core.store import Store

NO_GUESS = "no guess"

_SCHEMA = """CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    unit TEXT,
    note TEXT,
    created TEXT NOT NULL)"""


def _db_path(store: Store | str | os.PathLike | None) -> Path:
    """The SQLite file of ``store`` (a Store, a path, or None for the default results store)."""
    return store.path if isinstance(store, Store) else Store(store).path


def _connect(store) -> sqlite3.Connection:
    db = sqlite3.connect(_db_path(store), timeout=30)
    db.execute(_SCHEMA)
    return db


def predict(name: str, value, unit: str = "", *, note: str = "", store=None) -> dict | None:
    """Record the guess ``value`` (a number, or a short text) for the quantity ``name``.

    Returns the stored row, or None when ``value`` is still None / ``...`` (nothing stored;
    the later comparison shows "no guess"). Prints one line saying what was recorded.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}: expected a non-empty string naming the prediction")
    if value is None or value is Ellipsis:
        print(f"no guess recorded for {name!r} yet: replace None with your guess and re-run")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        try:  # numpy / torch scalars
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"value={value!r}: expected a number or a short text") from None
    row = {"name": name, "value": value, "unit": unit, "note": note,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with _connect(store) as db:
        db.execute("INSERT INTO predictions (name, value, unit, note, created) VALUES (?, ?, ?, ?, ?)",
                   (name, json.dumps(value), unit, note, row["created"]))
    print(f"recorded your guess for {name!r}: {_fmt(value)}{' ' + unit if unit else ''}")
    return row


def guesses(store=None) -> dict[str, dict]:
    """The latest guess per name: ``{name: {"value", "unit", "note", "created"}}``."""
    path = _db_path(store)
    if not path.exists():
        return {}
    with _connect(store) as db:
        rows = db.execute("SELECT name, value, unit, note, created FROM predictions ORDER BY id").fetchall()
    return {n: {"value": json.loads(v), "unit": u or "", "note": note or "", "created": c}
            for n, v, u, note, c in rows}


def guess(name: str, store=None):
    """The latest guess recorded for ``name``, or None."""
    g = guesses(store).get(name)
    return None if g is None else g["value"]


def _fmt(x) -> str:
    if isinstance(x, str):
        return repr(x)
    if x is None:
        return NO_GUESS
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e3 else f"{x:,.0f}"


def miss_text(guessed, measured) -> str:
    """How far a guess is from the measurement, as a ratio and a direction."""
    if guessed is None:
        return NO_GUESS
    if isinstance(guessed, str) or isinstance(measured, str):
        same = str(guessed).strip().lower() == str(measured).strip().lower()
        return "right" if same else f"you guessed {guessed!r}, it was {measured!r}"
    g, m = float(guessed), float(measured)
    if not (math.isfinite(g) and math.isfinite(m)):
        return "cannot compare (not finite)"
    if m == 0 or g == 0 or (g < 0) != (m < 0):
        return f"off by {abs(g - m):,.3g}"
    r = g / m
    if abs(r - 1) <= 0.1:
        return f"within {abs(r - 1):.0%}: well guessed"
    return f"you guessed {r:.2g}x too high" if r > 1 else f"you guessed {1 / r:.2g}x too low"


def compare(name: str, measured, theory=None, *, unit: str | None = None, spread=None,
            store=None) -> dict:
    """Guess, measurement and theory for ``name``, with the feedback line.

    ``spread``: (low, high) around the measurement (e.g. p25, p75), drawn as an error bar.
    Returns ``{"name", "guess", "measured", "theory", "spread", "unit", "text"}``.
    """
    g = guesses(store).get(name)
    value = None if g is None else g["value"]
    unit = unit if unit is not None else (g["unit"] if g else "")
    u = f" {unit}" if unit else ""
    parts = [f"{name}: measured {_fmt(measured)}{u}"]
    if theory is not None:
        parts.append(f"theory {_fmt(theory)}{u}")
    if value is None:
        text = ", ".join(parts) + f" — {NO_GUESS} recorded"
    else:
        parts.append(f"your guess {_fmt(value)}{u}")
        text = ", ".join(parts) + f" — {miss_text(value, measured)}"
    if theory is not None and value is not None and not isinstance(value, str):
        text += f" (theory: {miss_text(theory, measured).replace('you guessed', 'theory is')})"
    return {"name": name, "guess": value, "measured": measured, "theory": theory,
            "spread": tuple(spread) if spread is not None else None, "unit": unit, "text": text}


def ratio(df, column: str, knob: str, numerator, denominator) -> float:
    """``column`` at ``knob == numerator`` over ``column`` at ``knob == denominator``, from a
    sweep's successful rows (e.g. the throughput gain from batch 1 to batch 8). NaN if either
    point is missing."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    col = knob if knob in ok.columns else f"knobs.{knob}"
    a, b = ok[ok[col] == numerator][column], ok[ok[col] == denominator][column]
    if a.empty or b.empty or float(b.iloc[0]) == 0:
        return math.nan
    return float(a.iloc[0]) / float(b.iloc[0])


__all__ = ["predict", "guesses", "guess", "compare", "miss_text", "ratio", "NO_GUESS"]
