"""Run a kernel benchmark declared as data (:class:`efflab.kernels.flash_attention.AttentionBenchmark`).

The kernel module declares what to compare (x-axis, lines, providers); this module times it
with efflab's timing rules (warm-up, repeats, median with spread; CUDA synchronised per sample)
and never times an interpreted Triton kernel as if it were fast.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from efflab.kernels import flash_attention as fa
from efflab.measurement.timing import summarize, time_steps


def run_benchmark(bench: fa.AttentionBenchmark = fa.BENCHMARK, device: str | None = None,
                  target_s: float = 0.5, min_repeats: int = 5, check_max_len: int = 128,
                  seed: int = 0):
    """Run ``bench``; returns a long-format pandas DataFrame, one row per (x, provider).

    Columns: ``provider``, ``bench.x_name`` (the x value), ``B``, ``nh``, ``T``, ``hs``,
    ``dtype``, ``mode``, ``device``, ``ms`` (median), ``ms_p25``, ``ms_p75``, ``n`` (samples),
    ``timed``, ``max_abs_err`` (forward output vs naive), ``peak_mem_bytes`` (CUDA only) and
    ``note``.

    On CUDA every provider is timed, each sample closed by ``torch.cuda.synchronize``. Where
    the Triton kernels are interpreted (no CUDA) the triton row is **not timed**: ``ms`` is NaN,
    ``timed`` False and ``note`` says "correctness only (interpreted)"; the kernel still runs
    once for ``max_abs_err`` while T <= ``check_max_len`` (the interpreter is slow).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = fa.DTYPES[bench.dtype]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for x in bench.x_vals:
        B, nh, T, hs = bench.shape(x)
        q, k, v = (torch.randn((B, nh, T, hs), generator=gen).to(device=device, dtype=dtype)
                   for _ in range(3))
        do = torch.randn((B, nh, T, hs), generator=gen).to(device=device, dtype=dtype)
        reference = None
        for name in bench.line_vals:
            row = {"provider": name, bench.x_name: x, "B": B, "nh": nh, "T": T, "hs": hs,
                   "dtype": bench.dtype, "mode": bench.mode, "device": device,
                   "ms": math.nan, "ms_p25": math.nan, "ms_p75": math.nan, "n": 0,
                   "timed": False, "max_abs_err": math.nan, "peak_mem_bytes": math.nan,
                   "note": ""}
            fn = fa.provider(name)
            if name == "triton" and not fa.TRITON_AVAILABLE:
                row["note"] = "triton not installed"
                rows.append(row)
                continue
            interpreted = name == "triton" and fa.INTERPRETED
            if interpreted and T > check_max_len:
                row["note"] = f"{fa.INTERPRETED_NOTE}; not run (T > check_max_len={check_max_len})"
                rows.append(row)
                continue
            with torch.no_grad():
                out = fn(q, k, v)  # (B, nh, T, hs)
            if name == "naive":
                reference = out.float()
            elif reference is None:
                with torch.no_grad():
                    reference = fa.naive_attention(q, k, v).float()
            row["max_abs_err"] = (out.float() - reference).abs().max().item()
            if interpreted:
                row["note"] = fa.INTERPRETED_NOTE
                rows.append(row)
                continue

            qg, kg, vg = (t.detach().clone().requires_grad_(bench.mode == "fwd_bwd")
                          for t in (q, k, v))

            def step(fn=fn, qg=qg, kg=kg, vg=vg, do=do):
                if bench.mode == "fwd":
                    with torch.no_grad():
                        fn(qg, kg, vg)
                    return
                qg.grad = kg.grad = vg.grad = None
                fn(qg, kg, vg).backward(do)

            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                row["peak_mem_bytes"] = float(torch.cuda.max_memory_allocated() - base)
            stats = summarize(time_steps(step, device=device, warmup=1, min_repeats=min_repeats,
                                         target_s=target_s))
            row.update(ms=stats["median"], ms_p25=stats["p25"], ms_p75=stats["p75"],
                       n=stats["n"], timed=True)
            rows.append(row)
    return pd.DataFrame(rows)
