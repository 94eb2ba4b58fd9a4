"""Wall-clock timing done right: warm-up, synchronisation, repeats, and a median with spread."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from efflab.measurement.hardware import synchronize


def summarize(samples_s: list[float]) -> dict:
    """Seconds -> milliseconds: median, p25, p75, min, max and the count n."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"median": float(np.median(a)), "p25": float(np.percentile(a, 25)),
            "p75": float(np.percentile(a, 75)), "min": float(a.min()), "max": float(a.max()),
            "n": int(a.size)}


def time_steps(step: Callable[[], None], device="cpu", warmup: int = 2, min_repeats: int = 5,
               max_repeats: int = 100, target_s: float = 1.0) -> list[float]:
    """Seconds per call of ``step``, after ``warmup`` untimed calls.

    Repeats until at least ``min_repeats`` samples and ``target_s`` seconds of samples (or
    ``max_repeats``). Each sample is synchronised on accelerators, so it times the work and not
    just its launch.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_repeats and (len(samples) < min_repeats or spent < target_s):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
    return samples
