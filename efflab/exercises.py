"""Exercises that check themselves: each ``check_*`` prints a verdict and returns True/False.

An unanswered exercise (``None``) is reported as such and never raises, so a notebook runs
top to bottom before the learner has answered.
"""

from __future__ import annotations

import pandas as pd


def _verdict(ok: bool | None, text: str) -> bool | None:
    mark = {True: "✓ correct", False: "✗ not yet", None: "… not answered yet"}[ok]
    print(f"{mark}: {text}")
    return ok


def check_throughput(answer, df: pd.DataFrame, batch_size: int, rel_tol: float = 0.02):
    """Is ``answer`` the tokens/s of the ``batch_size`` row, computed from its latency?"""
    row = df[(df["knobs.batch_size"] == batch_size) & (df["status"] == "ok")]
    if row.empty:
        return _verdict(None, f"no successful measurement at batch {batch_size} to check against")
    row = row.iloc[0]
    tokens = row["throughput.tokens_per_step"]
    truth = tokens / (row["latency_ms.median"] / 1e3)
    if answer is None:
        return _verdict(None, f"tokens per step = B·T = {int(tokens)}; divide by the latency in seconds")
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _verdict(False, f"expected a number, got {answer!r}")
    ok = bool(abs(value - truth) <= rel_tol * truth)
    hint = ("" if ok else
            f" (hint: latency is in milliseconds; {int(tokens)} tokens / "
            f"({row['latency_ms.median']:.3f} / 1000) s)")
    return _verdict(ok, f"you said {value:,.0f} tokens/s{hint}")
