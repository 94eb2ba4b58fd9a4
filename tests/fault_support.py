"""Sweep processes for the fault tests: started from a fork server that has imported efflab.

Importing torch and efflab takes seconds; killing twenty sweeps must not cost twenty imports.
``sweeper()`` gives a ``multiprocessing`` context whose fork server imports efflab once (and
never runs torch: nothing is forked from a process that has started thread pools); every sweep
process is forked from it, runs a real ``efflab.sweep`` on a real store, and can be killed with
SIGKILL at any moment. The functions here are the processes' targets (importable by name).
"""

from __future__ import annotations

import multiprocessing as mp
import os

SMALL_CORPUS = os.__file__  # one file: preparing the whole standard library takes seconds


def sweeper() -> mp.context.BaseContext:
    """A fork-server context with efflab imported in the server."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["efflab", "efflab.sweeping", "fault_support"])
    return ctx


def grid_of(batch_sizes, seq_lens) -> dict:
    return {"batch_size": list(batch_sizes), "seq_len": list(seq_lens)}


def run_sweep(store: str, vary: dict, calibration: dict, started=None, done=None,
              name: str | None = None) -> None:
    """One sweep process: cpu-tiny, random weights, a tiny timing target, one thread."""
    import torch

    import efflab

    torch.set_num_threads(1)  # a process of its own: leave the other core to the others
    if started is not None:
        started.set()
    efflab.sweep(efflab.Knobs(), vary, preset="cpu-tiny", store=store, weights="random",
                 corpus=SMALL_CORPUS, target_s=0.01, progress=False, calibration=calibration,
                 name=name)
    if done is not None:
        done.set()
