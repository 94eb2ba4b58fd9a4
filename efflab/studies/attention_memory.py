"""Lesson 04's memory sweep: one causal attention call per implementation and sequence length,
its kept and peak bytes measured beside the formula (``attention_memory_bytes``)."""

from __future__ import annotations

import pandas as pd
import torch

from efflab.measurement.memory import MemoryTracker
from efflab.techniques.attention import CORES, attention_memory_bytes


def attention_memory_sweep(seq_lens, impls=("naive", "sdpa"), batch_size: int = 1,
                           heads: int = 4, head_dim: int = 32, device: str = "cpu"):
    """Measure, per impl and sequence length, the bytes one causal attention call keeps for
    backward and the peak of its forward+backward, beside :func:`attention_memory_bytes`.

    Tracked with :class:`MemoryTracker` on the attention alone (q, k, v of
    shape (B, nh, T, hs) in fp32), so the T² of the naive scores is not hidden by the rest of
    a model. Returns a long DataFrame: impl, T, saved_bytes (autocast-free activations saved),
    peak_bytes (everything alive at the fullest moment, inputs and gradients included),
    predicted_peak_bytes (the formula plus q, k, v, out and their four gradients, 8·B·nh·T·hs
    floats), max_abs_diff (output vs naive).
    """
    rows = []
    gen = torch.Generator().manual_seed(0)
    for T in seq_lens:
        shape = (batch_size, heads, T, head_dim)
        q, k, v = (torch.randn(shape, generator=gen).to(device).requires_grad_() for _ in range(3))
        reference = None
        for impl in impls:
            core = CORES[impl]()
            tracker = MemoryTracker()
            tracker.track_existing([q, k, v], "other")
            with tracker:
                out = core(q, k, v)  # (B, nh, T, hs)
                out.sum().backward()
            rep = tracker.report()
            if reference is None:
                reference = out.detach()
            rows.append({"impl": impl, "T": T,
                         "saved_bytes": rep["max_by_category"]["activations"],
                         "peak_bytes": rep["peak_bytes"],
                         "predicted_peak_bytes": 8 * batch_size * heads * T * head_dim * 4
                         + attention_memory_bytes(impl, batch_size, heads, T, T, head_dim),
                         "max_abs_diff": (out.detach() - reference).abs().max().item()})
            q.grad = k.grad = v.grad = None
    return pd.DataFrame(rows)
