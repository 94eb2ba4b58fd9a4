"""Fusion, counted: operators launched and bytes moved per step, eager vs compiled.

Eager PyTorch launches one kernel per operator and every intermediate makes a round trip
through memory. ``torch.compile`` (Inductor) fuses chains of elementwise and reduction
operators into single loops and calls the vendor library for the matmuls. This module counts
both sides from the profiler:

- eager: the top-level operators of forward + backward (:func:`efflab.profiling.kernel_count`)
  and their bytes from shapes;
- compiled: with ``torch._inductor.config.cpp.enable_kernel_profile`` each fused C++ kernel is
  one profiler event (``cpp_fused_*``; ``triton_*`` on a GPU), and the matmuls Inductor leaves
  to the library stay visible as ``aten::mm`` / ``aten::addmm``.

Compiling costs tens of seconds cold on a 2-core CPU, so a lesson in SMOKE mode shows the
counts :mod:`benchmarks.fusion` stored (:func:`stored_fusion`), labelled with when and where
they were measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from efflab.config import Knobs, get_preset
from efflab.data import load_corpus
from efflab.measurement.hardware import fingerprint, pick_device
from efflab.profiling import kernel_count, profile_step
from efflab.techniques import apply_techniques
from efflab.techniques.compile import CompileConfig, compile_model, compile_refusal
from efflab.weights import load_model
from efflab.workloads import prepare

STORED = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "fusion.json"


def fusion_counts(preset: str = "cpu-small", knobs: Knobs | None = None, *,
                  mode: str = "default", weights="auto", device: str | None = None) -> dict:
    """Profile one training step eager and compiled (``mode``); return, for each, the
    operators/kernels launched in forward + backward, the fused kernels, bytes from shapes,
    the cold first-step seconds, and the step's operator time. Refused (``{"refused": why}``)
    where no compiler backend is present."""
    import torch._inductor.config as inductor_config

    knobs = (knobs or Knobs()).replace(workload="train")
    cfg = get_preset(preset)
    dev = pick_device(cfg, device)
    why = compile_refusal(CompileConfig(mode), dev)
    if why:
        return {"refused": why}
    out = {}
    before = (inductor_config.cpp.enable_kernel_profile, inductor_config.fx_graph_cache)
    inductor_config.cpp.enable_kernel_profile = True  # one profiler event per fused kernel
    inductor_config.fx_graph_cache = False  # a cached graph may lack those events
    try:
        for variant, m in (("eager", "none"), ("compiled", mode)):
            model = apply_techniques(load_model(preset, weights, knobs.seed, dev), knobs)
            prep = prepare("train", compile_model(model, CompileConfig(m)), load_corpus(), knobs,
                           dev)
            t0 = time.perf_counter()
            prep.step()
            cold = time.perf_counter() - t0
            p = profile_step(prep.step, device=dev, warmup=1, time_s=0.0, repeats=1)
            c = p.calls
            fb = c[c["phase"].isin(["forward", "backward"]) & (c["kind"] != "view")]
            out[variant] = {"aten_ops": kernel_count(p), "fused_kernels": len(p.kernels),
                            "launches": kernel_count(p) + len(p.kernels),
                            "bytes_from_shapes": float(fb["bytes"].sum()),
                            "first_step_s": cold, "ops_ms": p.ops_ms}
    finally:
        inductor_config.cpp.enable_kernel_profile, inductor_config.fx_graph_cache = before
    out["source"] = f"measured live, {time.strftime('%Y-%m-%d %H:%M')}"
    return out


def stored_fusion(path: str | Path = STORED) -> dict | None:
    """The stored fusion benchmark (``benchmarks/fusion.py``), or None when there is none;
    ``stale`` says whether it was measured on another machine than this one."""
    path = Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["stale"] = data.get("fingerprint") != fingerprint()
    shape = data.get("training", {}).get("shape", {})
    what = f"{shape.get('preset', 'cpu-small')} B{shape.get('batch', 16)} training step, " \
        if shape else ""
    data["label"] = (f"stored: {what}measured {data.get('measured_at', '?')} on "
                     f"{data.get('env', {}).get('cpu', '?')}"
                     + (" (another machine: stale)" if data["stale"] else " (this machine)")
                     + (", host shared: provisional" if data.get("host_shared") else ""))
    return data


def counts_frame(counts: dict, source: str = "") -> pd.DataFrame:
    """Long frame (metric, variant, value, source) for :func:`efflab.viz.roofline.fusion_chart`
    from :func:`fusion_counts` (or the ``counts`` of the stored benchmark)."""
    rows = []
    names = {"eager": "eager", "compiled": "compiled", "efflab-eager": "eager",
             "compile-model": "compiled"}
    for key, variant in names.items():
        c = counts.get(key)
        if not c:
            continue
        launches = c.get("launches", c.get("aten_ops_forward_backward", 0) + c.get("fused_kernels", 0))
        rows.append({"metric": "kernels launched (fwd+bwd)", "variant": variant,
                     "value": launches, "source": source})
        if c.get("aten_ops") is not None or c.get("aten_ops_forward_backward") is not None:
            rows.append({"metric": "of which fused kernels", "variant": variant,
                         "value": c.get("fused_kernels", 0), "source": source})
    return pd.DataFrame(rows)


def recipes_frame(stored: dict) -> pd.DataFrame:
    """The stored training recipes as a table: tokens/s (median, from p25/p75 step times), n,
    the 10-step loss difference against efflab's eager step, and the cold first 10 steps."""
    rows = []
    for name, r in stored.get("training", {}).get("recipes", {}).items():
        ms = r.get("step_ms", {})
        tokens = r.get("tokens_per_s", 0) * ms.get("median", 0) / 1e3
        rows.append({"recipe": name, "tokens_per_s": r.get("tokens_per_s"),
                     "tokens_per_s_p25": tokens / (ms["p75"] / 1e3) if ms.get("p75") else None,
                     "tokens_per_s_p75": tokens / (ms["p25"] / 1e3) if ms.get("p25") else None,
                     "n": ms.get("n"),
                     "max_loss_diff_vs_eager": r.get("max_loss_diff_vs_efflab_eager"),
                     "first_10_steps_s": r.get("first_10_steps_s_incl_compile")})
    return pd.DataFrame(rows)


def torch_has_fused_adamw() -> bool:
    """Whether this torch offers ``AdamW(fused=True)`` for CPU tensors."""
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        torch.optim.AdamW([p], fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


__all__ = ["fusion_counts", "stored_fusion", "counts_frame", "recipes_frame",
           "torch_has_fused_adamw"]
