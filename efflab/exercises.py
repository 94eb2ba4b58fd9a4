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


def check_online_softmax(update, trials: int = 5, block: int = 7, seed: int = 0):
    """Does ``update(m, l, acc, scores, v) -> (m, l, acc)`` implement the online-softmax step?

    Feeds random score/value blocks through the learner's function one block at a time and
    compares ``acc / l`` with softmax(all scores) · V computed in one go.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    for trial in range(trials):
        n, d = block * 4 + trial, 8
        scores = torch.randn(n, generator=g, dtype=torch.float64) * (1 + 3 * trial)
        values = torch.randn(n, d, generator=g, dtype=torch.float64)
        want = torch.softmax(scores, 0) @ values  # (d,)
        m = torch.tensor(float("-inf"), dtype=torch.float64)
        lsum = torch.tensor(0.0, dtype=torch.float64)
        acc = torch.zeros(d, dtype=torch.float64)
        try:
            for start in range(0, n, block):
                out = update(m, lsum, acc, scores[start:start + block], values[start:start + block])
                if out is None:
                    return _verdict(None, "update returns None: return the new (m, l, acc)")
                m, lsum, acc = out
            got = acc / lsum
        except Exception as e:  # the learner's code: report, never crash the notebook
            return _verdict(False, f"your update raised {type(e).__name__}: {e}")
        if not torch.allclose(torch.as_tensor(got, dtype=torch.float64), want, atol=1e-9):
            return _verdict(False, f"after {n} scores acc / l differs from softmax · V by "
                                   f"{(torch.as_tensor(got) - want).abs().max().item():.2e} "
                                   "(did you rescale l and acc by exp(m_old - m_new)?)")
    return _verdict(True, f"{trials} random rows of up to {block * 4 + trials - 1} scores, "
                          f"blocks of {block}: acc / l equals softmax · V")
