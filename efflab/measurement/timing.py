"""Wall-clock timing done right: warm-up, synchronisation, repeats until the median is stable,
and a median with its spread and noise flag.

A timing is *noisy* when its interquartile range exceeds ``NOISY_IQR`` (10%) of its median:
the record, the charts and the tables say so. Repeats adapt: after the minimum count and the
target time, sampling goes on while the timing is noisy, up to ``max_factor`` × the target time
(or ``max_repeats``) — a stable step stops early, a jittery one gets more samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from efflab.measurement.hardware import synchronize

NOISY_IQR = 0.10  # IQR / median above this flags a timing as noisy


def summarize(samples_s: list[float]) -> dict:
    """Seconds -> milliseconds: median, p25, p75, min, max, the count n, the coefficient of
    variation (std / mean), IQR / median, and ``noisy`` when IQR / median > NOISY_IQR."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    med = float(np.median(a))
    p25, p75 = float(np.percentile(a, 25)), float(np.percentile(a, 75))
    cv = float(a.std(ddof=1) / a.mean()) if a.size > 1 and a.mean() > 0 else 0.0
    iqr = (p75 - p25) / med if med > 0 else 0.0
    return {"median": med, "p25": p25, "p75": p75, "min": float(a.min()), "max": float(a.max()),
            "n": int(a.size), "cv": cv, "iqr_over_median": iqr, "noisy": bool(iqr > NOISY_IQR)}


def _unstable(samples: list[float]) -> bool:
    if len(samples) < 4:
        return True
    p25, med, p75 = np.percentile(samples, [25, 50, 75])
    return med > 0 and (p75 - p25) / med > NOISY_IQR


def time_steps(step: Callable[[], None], device="cpu", warmup: int = 2, min_repeats: int = 5,
               max_repeats: int = 100, target_s: float = 1.0, max_factor: float = 3.0) -> list[float]:
    """Seconds per call of ``step``, after ``warmup`` untimed calls.

    Samples until at least ``min_repeats`` samples and ``target_s`` seconds of samples, then
    goes on while IQR / median > NOISY_IQR, until ``max_factor × target_s`` seconds or
    ``max_repeats`` samples. Each sample is synchronised on accelerators, so it times the work
    and not just its launch.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    samples: list[float] = []
    spent = 0.0
    cap = max_factor * target_s
    while len(samples) < max_repeats:
        enough = len(samples) >= min_repeats and spent >= target_s
        if enough and (spent >= cap or not _unstable(samples)):
            break
        t0 = time.perf_counter()
        step()
        synchronize(device)
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
    return samples
