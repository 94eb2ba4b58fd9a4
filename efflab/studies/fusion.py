"""Fusion, counted: operators launched and bytes moved per step, eager vs compiled.

Eager PyTorch launches one kernel per operator and every intermediate makes a round trip
through memory. ``torch.compile`` (Inductor) fuses chains of elementwise and reduction
operators into single loops and calls the vendor library for the matmuls. This module counts
both sides from the profiler:

- eager: the top-level operators of forward + backward (:func:`efflab.measurement.profiling.kernel_count`)
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
import torch.nn.functional as F

from efflab.core.config import Knobs, get_preset
from efflab.core.data import load_corpus
from efflab.core.weights import load_model
from efflab.measurement.hardware import fingerprint, pick_device
from efflab.measurement.profiling import kernel_count, profile_step
from efflab.measurement.timing import summarize, time_steps
from efflab.measurement.workloads import prepare
from efflab.techniques import apply_, apply_techniques
from efflab.techniques.compile import CompileConfig, compile_refusal

STORED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fusion.json"


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
    corpus = load_corpus()
    try:
        for variant, m in (("eager", "none"), ("compiled", mode)):
            model = apply_techniques(load_model(preset, weights, knobs.seed, dev), knobs)
            # the Python wrapper: the same kernels, and the one that names them in a profile
            apply_(model, CompileConfig(m, cpp_wrapper=False))  # in place
            prep = prepare("train", model, corpus, knobs.replace(compile=m), dev)
            t0 = time.perf_counter()
            prep.step()
            cold = time.perf_counter() - t0
            p = profile_step(prep.step, device=dev, warmup=1, time_s=0.0, repeats=1)
            c = p.calls
            fb = c[c["phase"].isin(["forward", "backward"]) & (c["kind"] != "view")]
            out[variant] = {"aten_ops": kernel_count(p), "fused_kernels": len(p.kernels),
                            "fused_kernel_names": sorted(set(p.kernels)),
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
                     + (", host shared: provisional" if data.get("training", {}).get(
                         "host_shared", data.get("host_shared")) else ""))
    return data


def counts_frame(counts: dict, source: str = "") -> pd.DataFrame:
    """Long frame (metric, variant, value, source) for :func:`efflab.ui.charts.roofline.fusion_chart`
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
    the paired speedups over nanoGPT and over efflab's eager step (median and quartiles of the
    per-round ratios), the 10-step loss difference against efflab's eager step, and the cold
    first 10 steps."""
    rows = []
    for name, r in stored.get("training", {}).get("recipes", {}).items():
        ms = r.get("step_ms", {})
        tokens = r.get("tokens_per_s", 0) * ms.get("median", 0) / 1e3
        row = {"recipe": name, "tokens_per_s": r.get("tokens_per_s"),
               "tokens_per_s_p25": tokens / (ms["p75"] / 1e3) if ms.get("p75") else None,
               "tokens_per_s_p75": tokens / (ms["p25"] / 1e3) if ms.get("p25") else None,
               "n": ms.get("n")}
        for key, label in (("vs_nanogpt_paired", "x_nanogpt"),
                           ("vs_efflab_eager_paired", "x_efflab_eager")):
            if key in r:
                row.update({label: r[key]["median"], f"{label}_p25": r[key]["p25"],
                            f"{label}_p75": r[key]["p75"]})
        row.update({"max_loss_diff_vs_eager": r.get("max_loss_diff_vs_efflab_eager"),
                    "first_10_steps_s": r.get("first_10_steps_s_incl_compile")})
        rows.append(row)
    return pd.DataFrame(rows)


def _tril_mask(T: int, S: int, device) -> torch.Tensor:
    """The causal mask in the form efflab used before (a ``tril`` of ones): same values as
    :func:`efflab.kernels.flash_attention.causal_mask`, kept here as the slow form to time."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def form_timings(batch: int = 16, seq_len: int = 128, n_embd: int = 128, n_head: int = 4, *,
                 target_s: float = 0.5, device: str = "cpu") -> pd.DataFrame:
    """Two pieces of a training step, each compiled in forms with the same mathematics.

    - the MLP's bias add and GELU (tanh approximation), forward + backward over the hidden
      activation (B·T, 4C), as the model computes them after ``c_fc``'s matmul:
      ``F.gelu(approximate="tanh")`` vs :func:`efflab.core.model.gelu_tanh_by_sigmoid`, and the same
      sigmoid form with its backward written in terms of the slope GELU'(x)
      (:class:`efflab.core.model.GeluTanhKeepSlope`, what the model traces), which lets the
      compiler compute the slope in the forward's loop and keep it instead of x + b: no second
      exp in backward;
    - the causal softmax of attention scores (B, nh, T, T), forward: the mask built by
      ``tril`` vs by comparing int32 positions (:func:`efflab.kernels.flash_attention.causal_mask`).

    One row per (piece, form): median/p25/p75 ms over samples of at least ``target_s`` s, n,
    and the speedup over the piece's first form. Inductor generates a loop per form; whether
    it vectorises the loop decides the time. Refused (one row with ``refused``) where no
    compiler backend is present.
    """
    from efflab.core.model import GeluTanhKeepSlope, gelu_tanh_by_sigmoid
    from efflab.kernels.flash_attention import causal_mask

    why = compile_refusal(CompileConfig("default"), device)
    if why:
        return pd.DataFrame([{"piece": "all", "form": "compiled", "refused": why}])
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch * seq_len, 4 * n_embd, generator=g).to(device)  # (B·T, 4C)
    bias = torch.randn(4 * n_embd, generator=g).to(device)  # (4C,)
    grad = torch.randn(hidden.shape, generator=g).to(device)
    scores = torch.randn(batch, n_head, seq_len, seq_len, generator=g).to(device)  # (B,nh,T,T)

    def gelu_step(fn):
        f = torch.compile(lambda x, b: fn(x + b))  # (B·T, 4C) + (4C,): the MLP's bias, then GELU

        def step():
            x, b = hidden.detach().requires_grad_(), bias.detach().requires_grad_()
            f(x, b).backward(grad)
        return step

    def softmax_step(mask_fn):
        def masked(a):
            T = a.size(-1)
            return torch.softmax(a.masked_fill(~mask_fn(T, T, a.device), float("-inf")), dim=-1)
        f = torch.compile(masked)
        return lambda: f(scores)

    pieces = [
        ("bias + GELU fwd+bwd", "tanh (F.gelu)",
         gelu_step(lambda x: F.gelu(x, approximate="tanh"))),
        ("bias + GELU fwd+bwd", "x·sigmoid(2u)", gelu_step(gelu_tanh_by_sigmoid)),
        ("bias + GELU fwd+bwd", "x·sigmoid(2u), slope kept", gelu_step(GeluTanhKeepSlope.apply)),
        ("causal softmax fwd", "tril mask", softmax_step(_tril_mask)),
        ("causal softmax fwd", "int32 positions", softmax_step(causal_mask)),
    ]
    rows = []
    for piece, form, step in pieces:
        t = summarize(time_steps(step, device, warmup=3, target_s=target_s))
        rows.append({"piece": piece, "form": form, "ms": t["median"], "ms_p25": t["p25"],
                     "ms_p75": t["p75"], "n": t["n"], "noisy": t["noisy"]})
    df = pd.DataFrame(rows)
    first = df.groupby("piece")["ms"].transform("first")
    df["speedup_vs_first_form"] = first / df["ms"]
    return df


def torch_has_fused_adamw() -> bool:
    """Whether this torch offers ``AdamW(fused=True)`` for CPU tensors."""
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        torch.optim.AdamW([p], fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


__all__ = ["fusion_counts", "form_timings", "stored_fusion", "counts_frame", "recipes_frame",
           "torch_has_fused_adamw"]
