"""Sweep processes for the fault tests: forked from a warm server, killed at will.

Importing torch and efflab, and a process's first measurement (lazy imports, per-process caches
of FLOPs and held-out quality), take seconds; killing twenty sweeps must not pay that twenty
times. ``sweeper()`` gives a ``multiprocessing`` fork-server context whose server imports
:mod:`fault_warm` — efflab imported and one measurement of each shape the tests use done, on
one thread (so no thread pool is ever forked) — and every sweep process is forked from it. Each
runs a real ``efflab.sweep`` on a real store and can be killed with SIGKILL at any moment.
The functions here are the processes' targets (importable by name in the server).
"""

from __future__ import annotations

import multiprocessing as mp
import os

SMALL_CORPUS = os.__file__  # one file: preparing the whole standard library takes seconds
SEQ_LENS = (8, 16, 24)  # the contexts the fault tests sweep (warmed in the server)


def sweeper() -> mp.context.BaseContext:
    """A fork-server context whose server has imported efflab and measured once."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fault_warm"])
    return ctx


def grid_of(batch_sizes, seq_lens) -> dict:
    return {"batch_size": list(batch_sizes), "seq_len": list(seq_lens)}


def sweep_options(calibration: dict) -> dict:
    """cpu-tiny, random weights, the small corpus, a tiny timing target, no progress bar."""
    return {"preset": "cpu-tiny", "weights": "random", "corpus": SMALL_CORPUS, "target_s": 0.01,
            "progress": False, "calibration": calibration}


def run_sweep(store: str, vary: dict, calibration: dict, started=None, recorded=None,
              name: str | None = None) -> None:
    """One sweep process. ``started`` is set just before the sweep; ``recorded`` (a shared
    integer) counts the records it has measured and committed (not those it found stored)."""
    import torch

    import efflab

    torch.set_num_threads(1)  # a process of its own: leave the other core to the others

    def count(record):
        if recorded is not None and not record.get("reused"):
            with recorded.get_lock():
                recorded.value += 1

    if started is not None:
        started.set()
    efflab.sweep(efflab.Knobs(), vary, store=store, on_record=count, name=name,
                 **sweep_options(calibration))


def run_lab(store: str, values: tuple, seq_len: int, calibration: dict) -> None:
    """A Lab panel in a process of its own: press Run (a background thread measures), wait.
    Exits 1 if the run did not finish, 2 if the panel shows an error, 3 if points are missing."""
    import sys

    import torch

    import efflab

    torch.set_num_threads(1)
    opts = sweep_options(calibration)
    lab = efflab.Lab(preset=opts["preset"], vary="batch_size", values=values, seq_len=seq_len,
                     store=store, static=True, weights=opts["weights"], corpus=opts["corpus"],
                     target_s=opts["target_s"], calibration=calibration)
    lab.run_button.click()
    if not lab.wait(1800):
        sys.exit(1)
    if lab.last_error is not None:
        print(lab.error_area.value, file=sys.stderr)
        sys.exit(2)
    if sorted(r["knobs"]["batch_size"] for r in lab.records) != sorted(values):
        sys.exit(3)
