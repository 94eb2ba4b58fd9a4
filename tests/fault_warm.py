"""Imported by the fault tests' fork server (see fault_support): efflab loaded and one
measurement of each shape done there, on one thread, so every forked sweep starts warm.

The store keys a configuration on, among other things, a hash of efflab's source; it is computed
here once, so every forked writer keys alike even while someone edits the checkout mid-test."""

import torch
from fault_support import SEQ_LENS, sweep_options

import efflab
from efflab.measurement.context import code_fingerprint

torch.set_num_threads(1)  # before any work: the server never starts a thread pool
code_fingerprint()  # cached in this process: inherited by every fork
_options = sweep_options(efflab.calibrate(quick=True))
for _t in SEQ_LENS:
    efflab.measure(efflab.Knobs(batch_size=1, seq_len=_t), preset=_options["preset"],
                   weights=_options["weights"], corpus=_options["corpus"],
                   target_s=_options["target_s"], calibration=_options["calibration"])
