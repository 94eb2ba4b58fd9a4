"""Sweeps are declared, not hand-looped: ``sweep(base, vary={"batch_size": [1, 2, 4]})``.

Every configuration of the grid is validated before any work, then measured fresh (its own
model built from preset and seed) and committed to the store as it completes. A failure (error,
OOM, over the memory budget) is recorded with its status and message and the sweep goes on.
Re-running a sweep skips what the store already holds, so a killed sweep resumes where it
stopped and loses nothing it finished. A stored point is reused only when everything that could
change it is the same (``efflab.measurement.context``: timing target, device, machine, torch and
efflab code, weights and corpus content, budget; and the held-out windows quality is scored on);
an ``error`` is always measured again, and a reused point says so (``reused: True``) wherever
it is shown.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pandas as pd
from tqdm.auto import tqdm

from efflab.core.config import ConfigError, Knobs, check_int, get_preset, resolve_preset
from efflab.core.store import Store, config_key, to_frame
from efflab.measurement.context import context_for
from efflab.measurement.core import measure
from efflab.measurement.isolation import default_memory_limit, measure_isolated
from efflab.measurement.workloads import QUALITY_WINDOWS


def grid(base: Knobs, vary: dict[str, list]) -> list[Knobs]:
    """Every combination of ``vary`` applied to ``base``, in the order the lists give."""
    if not isinstance(vary, dict):
        raise ConfigError("vary", vary, 'a dict like {"batch_size": [1, 2, 4]}')
    for name, values in vary.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"vary[{name!r}]", values, "a non-empty list of values")
    names = list(vary)
    return [base.replace(**dict(zip(names, combo)))
            for combo in itertools.product(*(vary[n] for n in names))]


def sweep(base: Knobs | None = None, vary: dict[str, list] | None = None, *,
          preset: str = "cpu-small", store: Store | str | None = None,
          budget_bytes: int | None = None, weights="auto", corpus: str | None = None,
          device: str | None = None, target_s: float = 1.0, resume: bool = True,
          progress: bool = True, on_record: Callable[[dict], None] | None = None,
          name: str | None = None, calibration: dict | None = None,
          isolate: bool = False, memory_limit_bytes: int | None = None,
          quality_windows: int | None = None) -> pd.DataFrame:
    """Measure every configuration of the grid; return this sweep's records as a DataFrame.

    ``isolate=True`` measures each configuration in its own worker process capped at
    ``memory_limit_bytes`` (default: half the free memory; see :mod:`efflab.measurement.isolation`): one that
    exhausts memory is recorded as ``oom`` and the sweep goes on.

    ``quality_windows``: how many held-out windows each configuration's quality is scored on
    (None: ``QUALITY_WINDOWS``; see :func:`efflab.measure`). Fewer is faster and widens the
    95% interval; the count is part of the key, so a point scored on 64 windows never stands
    in for one scored on 512, nor the reverse.

    ``on_record(record)`` is called after each configuration (skipped ones included), which is
    how a live chart gets its points as they arrive. ``resume=False`` measures everything again.
    Records taken from the store rather than measured carry ``reused: True``.
    """
    base = base or Knobs()
    configs = grid(base, vary or {})
    preset = resolve_preset(preset)  # "auto": the machine's own preset, recorded by name
    cfg = get_preset(preset)
    for k in configs:  # refuse a bad grid before any work, naming the field
        k.resolve_seq_len(cfg)
    windows = check_int("quality_windows", quality_windows, 2, optional=True,
                        note="None: QUALITY_WINDOWS") or QUALITY_WINDOWS
    st = store if isinstance(store, Store) else Store(store)
    limit = (memory_limit_bytes or default_memory_limit()) if isolate else None
    keys = []
    reused: set[str] = set()
    bar = tqdm(configs, desc=f"sweep {preset}", disable=not progress)
    for k in bar:
        context = context_for(preset, k, weights=weights, corpus=corpus, device=device,
                              target_s=target_s, budget_bytes=budget_bytes)
        context = {**context, "quality_windows": windows}  # the quality's interval depends on it
        if isolate:  # an outcome under a memory cap depends on the cap
            context = {**context, "memory_limit_bytes": limit}
        key = config_key(preset, k.to_dict(), context)
        keys.append(key)
        old = st.reusable(key) if resume else None
        if old is not None:
            rec = {**old, "reused": True}  # said so to the caller, not stored
            reused.add(key)
        else:
            bar.set_postfix_str(", ".join(f"{n}={getattr(k, n)}" for n in (vary or {})))
            run = measure_isolated if isolate else measure
            extra = {"memory_limit_bytes": limit} if isolate else {}
            rec = run(k, preset=preset, weights=weights, corpus=corpus,
                      device=device, budget_bytes=budget_bytes, target_s=target_s,
                      calibration=calibration, quality_windows=windows, **extra)
            rec["key"] = key
            # resuming: if another writer stored this configuration meanwhile, keep theirs
            st.append(rec, key=key, sweep=name, unless_held=resume)
        if on_record is not None:
            on_record(rec)
    return to_frame([{**st.get(key), "reused": key in reused} for key in keys])
