"""Running the lab panel's plan: one sweep at a time, in the caller's thread or in the
background, with cancellation, error capture and the status line's words.

:class:`Runner` knows nothing of widgets. The panel gives it callbacks — ``on_status(text)``,
``on_record(record)``, ``on_error(exception)``, ``on_busy(running)`` — and calls
:meth:`Runner.run` (a plain synchronous call: what ``lab.run()`` and papermill use) or
:meth:`Runner.start` (the Run button: a background thread, so the notebook stays responsive).
Two rules:

* an exception in the background thread would vanish (ipywidgets and threads swallow them),
  so :meth:`Runner.start` hands every exception to ``on_error``; one raised by ``on_record``
  (a chart that fails to draw) is handed over too and does not stop the sweep;
* :meth:`Runner.cancel` stops a run after the point being measured: the sweep has already
  stored every finished point, so nothing measured is lost.

The status words (:func:`progress_text`, :func:`summary_text`) count what the learner should
know about the points: how many failed, how many were reused from the store instead of
measured, how many have a noisy timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd

from efflab.core.records import records_frame
from efflab.measurement.sweeping import sweep
from efflab.ui.panel_state import Plan, format_value


class RunCancelled(Exception):
    """Raised inside the sweep's ``on_record`` to stop a cancelled run after the current point."""


# ----------------------------------------------------------------------------- the words

def describe_record(rec: dict, vary: str) -> str:
    """One record in a few words: ``batch_size=4 → 12,345 tokens/s (median of 7 timings)``,
    with "noisy" or "from the store" when it is, or its status and message when it failed."""
    head = f"{vary}={format_value((rec.get('knobs') or {}).get(vary))}"
    if rec.get("status") != "ok":
        return f"{head} → {rec.get('status')}: {rec.get('message') or ''}"
    tput, lat = rec.get("throughput") or {}, rec.get("latency_ms") or {}
    tps = tput.get("tokens_per_s")
    marks = ", ".join(m for m, on in (("from the store", rec.get("reused") is True),
                                      ("noisy", lat.get("noisy") is True)) if on)
    tail = f" [{marks}]" if marks else ""
    if tps is None:
        return f"{head} → ok{tail}"
    return f"{head} → {tps:,.0f} tokens/s (median of {lat.get('n', '?')} timings){tail}"


def tally(records: list[dict]) -> dict:
    """Counts of a run's records: ``ok``, ``failed`` ({status: n}), ``reused`` (from the store),
    ``noisy`` (timing flagged unstable) and ``worst_spread`` (the largest IQR/median of those)."""
    failed: dict[str, int] = {}
    for r in records:
        if r.get("status") != "ok":
            failed[r.get("status")] = failed.get(r.get("status"), 0) + 1
    noisy = [r["latency_ms"] for r in records
             if r.get("status") == "ok" and (r.get("latency_ms") or {}).get("noisy") is True]
    spreads = [lat["iqr_over_median"] for lat in noisy if lat.get("iqr_over_median") is not None]
    return {"ok": sum(1 for r in records if r.get("status") == "ok"), "failed": failed,
            "reused": sum(1 for r in records if r.get("reused") is True),
            "noisy": len(noisy), "worst_spread": max(spreads) if spreads else None}


def _marks_phrase(counts: dict) -> str:
    """"; 2 reused from the store (...); 1 noisy (...)", or "" when neither."""
    out = ""
    if counts["reused"]:
        out += (f"; {counts['reused']} reused from the store (identical settings are not "
                "measured again — change a knob or use resume=False)")
    if counts["noisy"]:
        worst = (f", IQR/median up to {counts['worst_spread']:.0%}"
                 if counts["worst_spread"] is not None else "")
        out += (f"; {counts['noisy']} noisy{worst} (the machine was busy: more seconds per "
                "point, or a quieter moment, steadies them)")
    return out


def progress_text(plan: Plan, records: list[dict]) -> str:
    """The status line while a run goes on: points done, how many came from the store and how
    many are noisy so far, the plan, and the latest point."""
    counts = tally(records)
    marks = "".join(f" · {n} {what}" for what, n in (("from the store", counts["reused"]),
                                                     ("noisy", counts["noisy"])) if n)
    last = f" · last: {describe_record(records[-1], plan.vary)}" if records else ""
    return f"{len(records)}/{len(plan.values)}{marks} · {plan.describe()}{last}"


def summary_text(plan: Plan, records: list[dict], seconds: float) -> str:
    """The status line when a run has finished: ``done: 5/5 measured in 3.1 s (4 ok, 1 oom;
    2 reused from the store (...); 1 noisy (...)) · plan``."""
    counts = tally(records)
    extra = "".join(f", {n} {s}" for s, n in sorted(counts["failed"].items()))
    verb = "ready" if counts["reused"] else "measured"
    return (f"done: {len(records)}/{len(plan.values)} {verb} in {seconds:.1f} s "
            f"({counts['ok']} ok{extra}{_marks_phrase(counts)}) · {plan.describe()}")


def failures_text(summary: str, plan: Plan, records: list[dict]) -> str:
    """The summary, then one line per failed point with its status and message."""
    lines = [summary]
    for r in records:
        if r.get("status") != "ok":
            lines.append(f"  {format_value((r.get('knobs') or {}).get(plan.vary))}: "
                         f"{r.get('status')} — {r.get('message')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the runner

def _ignore(*_args) -> None:
    return None


class Runner:
    """Runs one :class:`~efflab.ui.panel_state.Plan` at a time and reports through callbacks.

    ``sweep_options``: what every sweep is given besides the plan (store, weights, corpus,
    device, calibration). ``on_status(text)`` gets the status line, ``on_record(record)`` each
    record as it arrives, ``on_error(exception)`` whatever went wrong (a background run's
    exception, a failing ``on_record``), ``on_busy(running)`` when a run starts and ends.
    """

    def __init__(self, sweep_options: dict | None = None, *,
                 on_status: Callable[[str], None] = _ignore,
                 on_record: Callable[[dict], None] = _ignore,
                 on_error: Callable[[BaseException], None] = _ignore,
                 on_busy: Callable[[bool], None] = _ignore):
        self.sweep_options = dict(sweep_options or {})
        self.on_status = on_status
        self.on_record = on_record
        self.on_error = on_error
        self.on_busy = on_busy
        self.last_summary: str | None = None
        self._records: list[dict] = []
        self._lock = threading.Lock()
        self._running = False
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self._running

    @property
    def records(self) -> list[dict]:
        """The records of the latest run, in arrival order."""
        with self._lock:
            return list(self._records)

    def claim(self) -> None:
        """Mark a run as started; RuntimeError if one already is (a second click, a second
        ``run()`` from another thread)."""
        with self._lock:
            if self._running:
                raise RuntimeError("a run is already in progress; wait for it (lab.wait()) "
                                   "or stop it (lab.cancel()) before starting another")
            self._running = True
            self._cancel.clear()
        self.on_busy(True)

    def _release(self) -> None:
        with self._lock:
            self._running = False
        self.on_busy(False)

    # ------------------------------------------------------------------ running
    def run(self, plan: Plan, claimed: bool = False) -> pd.DataFrame:
        """Measure ``plan`` now, in this thread; returns the sweep's DataFrame.

        A cancelled run returns the points finished so far. Anything else that goes wrong is
        raised (after the status line says so).
        """
        if not claimed:
            self.claim()
        t0 = time.perf_counter()
        with self._lock:
            self._records = []
        try:
            self.on_status(f"measuring {plan.describe()}: 0/{len(plan.values)} …")
            df = sweep(plan.base, {plan.vary: list(plan.values)}, preset=plan.preset,
                       budget_bytes=plan.budget_bytes, target_s=plan.target_s,
                       resume=plan.resume, progress=False, on_record=self._arrived(plan),
                       name=f"lab:{plan.preset}:{plan.vary}", **self.sweep_options)
        except RunCancelled:
            records = self.records
            self.last_summary = (f"cancelled after {len(records)}/{len(plan.values)} points "
                                 f"({time.perf_counter() - t0:.1f} s; finished points are "
                                 f"stored) · {plan.describe()}")
            self.on_status(self.last_summary)
            return records_frame(records)
        except BaseException:
            self.on_status(f"<b>failed</b> after {time.perf_counter() - t0:.1f} s "
                           f"({len(self.records)}/{len(plan.values)} measured) — see the error below")
            raise
        finally:
            self._release()
        self.last_summary = summary_text(plan, self.records, time.perf_counter() - t0)
        self.on_status(self.last_summary)
        return df

    def _arrived(self, plan: Plan) -> Callable[[dict], None]:
        """The sweep's ``on_record``: keep the record, draw it, say so, then stop if cancelled."""

        def on_record(rec: dict) -> None:
            with self._lock:
                self._records.append(rec)
                records = list(self._records)
            try:  # draw first, so the status never runs ahead of the chart
                self.on_record(rec)
            except Exception as e:  # a chart that fails to draw must not stop the sweep
                self.on_error(e)
            self.on_status(progress_text(plan, records))
            if self._cancel.is_set() and len(records) < len(plan.values):
                raise RunCancelled()

        return on_record

    def start(self, plan: Plan, after: Callable[[pd.DataFrame], None] = _ignore,
              claimed: bool = False) -> threading.Thread:
        """Measure ``plan`` in a background thread (claimed here unless ``claimed``, so a second
        start fails at once); ``after(frame)`` runs in that thread when it finishes. Every
        exception goes to ``on_error``."""
        if not claimed:
            self.claim()

        def work() -> None:
            try:
                after(self.run(plan, claimed=True))
            except Exception as e:  # a thread's exception would vanish: report it
                self.on_error(e)

        self._thread = threading.Thread(target=work, daemon=True, name="efflab-lab-run")
        self._thread.start()
        return self._thread

    def cancel(self) -> bool:
        """Stop the run in progress after the point being measured; False if none runs."""
        if not self._running:
            return False
        self._cancel.set()
        self.on_status("stopping after the current point …")
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background run finishes; False if ``timeout`` passed first."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True


__all__ = ["Runner", "RunCancelled", "describe_record", "tally", "progress_text",
           "summary_text", "failures_text"]
