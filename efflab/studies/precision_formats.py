"""Lesson 02's table of number formats: which runs here and why, at this machine's measured peaks."""

from __future__ import annotations

import math

import pandas as pd
import torch

from efflab.core.config import PRECISIONS, Knobs, ModelConfig
from efflab.measurement.flops import step_flops_estimate
from efflab.techniques.precision import COMPUTE_DTYPE, PrecisionConfig, refusal


def availability_table(cfg: ModelConfig, knobs: Knobs, calibration: dict) -> pd.DataFrame:
    """One row per precision for ``knobs`` on preset ``cfg``: runs here or not, why, the
    predicted step time at this machine's measured peak for its format, and the bytes per
    parameter it stores (what the lesson shows beside its toggles)."""
    flops = step_flops_estimate(cfg, knobs)
    rows = []
    for p in PRECISIONS:
        pc = PrecisionConfig(p)
        peak = calibration["matmul"][COMPUTE_DTYPE[p]]["flops_per_s"]
        why = refusal(pc, flops, calibration)
        rows.append({"precision": p, "runs here": why is None,
                     "compute format": COMPUTE_DTYPE[p], "measured peak GFLOP/s": peak / 1e9,
                     "predicted step s": flops / peak, "bytes per weight": pc.param_bytes,
                     "why not": why or ""})
    return pd.DataFrame(rows)


def peak_ratio_verdict(table: pd.DataFrame, reference: str = "fp32") -> str:
    """One sentence from :func:`availability_table`: each compute format's measured matmul peak
    (named by the first precision that computes in it) against precision ``reference``'s, as "N× slower" or "N× faster", and which formats are refused."""
    peaks = table.drop_duplicates("compute format").set_index("precision")[
        "measured peak GFLOP/s"]  # one row per compute format, named by its first precision
    if reference not in peaks.index:
        raise ValueError(f"no {reference!r} row in the availability table")
    ref = float(peaks[reference])
    parts = []
    for fmt, peak in peaks.items():
        if fmt == reference:
            continue
        r = float(peak) / ref if ref > 0 else float("nan")
        how = (f"{1 / r:.1f}× slower" if r < 1 else f"{r:.1f}× faster") if r > 0 else "not measured"
        parts.append(f"{fmt} {float(peak):.1f} GFLOP/s, {how}")
    refused = table.loc[~table["runs here"], "precision"].tolist()
    tail = (f" Refused here: {', '.join(refused)}." if refused else
            " Every format runs here.")
    return (f"Measured matmul peaks on this machine against {reference}'s {ref:.1f} GFLOP/s: "
            + "; ".join(parts) + "." + tail)


# ----------------------------------------------------------------------------- the formats' bits

FORMATS = {  # name -> (torch dtype, exponent bits, stored mantissa bits)
    "fp32": (torch.float32, 8, 23), "bf16": (torch.bfloat16, 8, 7), "fp16": (torch.float16, 5, 10),
    "fp8 e5m2": (torch.float8_e5m2, 5, 2), "fp8 e4m3": (torch.float8_e4m3fn, 4, 3),
}


def format_table() -> pd.DataFrame:
    """One row per format, every number read from ``torch.finfo``: bits, largest finite value,
    smallest normal, smallest subnormal (smallest normal · eps), the spacing just above 1 (eps)
    and the decimal digits it keeps (−log10 of eps/2, the relative rounding error)."""
    rows = []
    for name, (dt, e_bits, m_bits) in FORMATS.items():
        f = torch.finfo(dt)
        rows.append({"format": name, "bits": f.bits, "exponent bits": e_bits,
                     "mantissa bits": m_bits, "max": f.max, "smallest normal": f.tiny,
                     "smallest subnormal": f.tiny * f.eps, "eps (spacing above 1)": f.eps,
                     "decimal digits": -math.log10(f.eps / 2)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- fp16 underflow

def _batch(preset: str, batch_size: int, seq_len: int, seed: int):
    from efflab.core.data import load_corpus, random_batch

    corpus = load_corpus()
    return random_batch(corpus.train, batch_size, seq_len, torch.Generator().manual_seed(seed))


def model_gradients(preset: str = "cpu-small", *, batch_size: int = 8, seq_len: int = 128,
                    seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """Every weight gradient of the shipped ``preset`` model on one training batch, computed in
    fp32, flattened into one tensor (the values a fp16 gradient would have to hold)."""
    from efflab.core.weights import load_model

    model = load_model(preset, "auto", device=device)
    model.train()
    x, y = _batch(preset, batch_size, seq_len, seed)
    _, loss = model(x.to(device), y.to(device))
    loss.backward()
    return torch.cat([p.grad.detach().flatten() for p in model.parameters()
                      if p.grad is not None]).cpu()


def underflow_table(grads: torch.Tensor, scales=(1.0, 2.0 ** 8, 2.0 ** 16, 2.0 ** 24),
                    dtype=torch.float16) -> pd.DataFrame:
    """For each loss scale ``s``: the share of the nonzero fp32 gradients ``g`` for which
    ``s·g`` stored in ``dtype`` is zero (flushed: below half the smallest subnormal), subnormal
    (kept with fewer bits), or infinite (overflowed past the format's max), and the largest
    ``|s·g|`` beside the format's max."""
    g = grads.detach().float()
    g = g[g != 0]
    f = torch.finfo(dtype)
    rows = []
    for s in scales:
        scaled = g * s
        q = scaled.to(dtype)
        rows.append({"scale": float(s), "scale (log2)": math.log2(s),
                     "flushed to zero": float((q == 0).float().mean()),
                     "subnormal": float(((q != 0) & (q.abs() < f.tiny)).float().mean()),
                     "overflowed to inf": float(torch.isinf(q).float().mean()),
                     "largest |scaled grad|": float(scaled.abs().max()), "format max": f.max})
    return pd.DataFrame(rows)


def underflow_verdict(df: pd.DataFrame) -> str:
    """One sentence from :func:`underflow_table`: what is lost without scaling, and the best scale."""
    one = df[df["scale"] == 1.0]
    ok = df[df["overflowed to inf"] == 0]
    if one.empty or ok.empty:
        return "Every scale overflowed: measure with smaller scales."
    best = ok.sort_values("flushed to zero").iloc[0]
    return (f"Without scaling, {one['flushed to zero'].iloc[0]:.2%} of this model's nonzero "
            f"gradients flush to zero in fp16 and {one['subnormal'].iloc[0]:.2%} more lose bits as "
            f"subnormals; at a scale of 2^{best['scale (log2)']:.0f} {best['flushed to zero']:.2%} "
            f"flush and none overflow (largest scaled value {best['largest |scaled grad|']:.3g} "
            f"against fp16's max {best['format max']:.0f}).")


# ----------------------------------------------------------------------------- a GradScaler run

def scaler_run(preset: str = "cpu-tiny", *, steps: int = 40, batch_size: int = 4,
               seq_len: int = 32, lr: float = 1e-3, init_scale: float = 2.0 ** 24,
               growth_interval: int = 10, seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Train the shipped ``preset`` in fp16 autocast with ``torch.amp.GradScaler`` and record,
    per step, the scale used, whether the step was skipped (inf/NaN found in the unscaled
    gradients: ``update`` then halves the scale) and the loss.

    The scaler's cycle: ``scale(loss).backward()`` multiplies the loss (so every gradient) by
    the scale; ``unscale_(opt)`` divides the gradients back and looks for inf/NaN; ``step(opt)``
    skips the update when it found one; ``update()`` halves the scale after a skip (backoff) and
    doubles it after ``growth_interval`` clean steps in a row (growth). A large ``init_scale``
    shows the backoff within a few steps, a short ``growth_interval`` the growth."""
    from efflab.core.weights import load_model
    from efflab.measurement.workloads import make_optimizer

    model = load_model(preset, "auto", device=device)
    model.train()
    opt = make_optimizer(model, lr=lr)
    scaler = torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=growth_interval)
    g = torch.Generator().manual_seed(seed)
    from efflab.core.data import load_corpus, random_batch

    corpus = load_corpus()
    rows = []
    for step in range(steps):
        x, y = random_batch(corpus.train, batch_size, seq_len, g)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device, dtype=torch.float16):
            _, loss = model(x, y)
        used = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                     if p.grad is not None)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        rows.append({"step": step, "scale": used, "log2 scale": math.log2(used),
                     "skipped": not finite, "loss": float(loss.detach())})
    return pd.DataFrame(rows)


def scaler_verdict(df: pd.DataFrame) -> str:
    """One sentence from :func:`scaler_run`: skips, backoffs, growths and the final scale."""
    s = df["scale"].tolist()
    backoffs = sum(b < a for a, b in zip(s, s[1:]))
    growths = sum(b > a for a, b in zip(s, s[1:]))
    skipped = int(df["skipped"].sum())
    return (f"{skipped} of {len(df)} steps were skipped for inf/NaN gradients; the scale backed "
            f"off {backoffs} times and grew {growths} times, from 2^{math.log2(s[0]):.0f} to "
            f"2^{math.log2(s[-1]):.0f}; the loss went from {df['loss'].iloc[0]:.3f} to "
            f"{df['loss'].iloc[-1]:.3f}.")


# ----------------------------------------------------------------------------- master weights

def master_weights_demo(w: torch.Tensor, *, steps: int = 100, lr: float = 1e-4,
                        seed: int = 0) -> dict:
    """Apply ``steps`` small updates (±``lr`` per element, Adam's typical step size, random
    signs) to the weights ``w`` three ways: exactly (float64), to bf16 weights directly (each
    update rounded into bf16, as bf16-pure training does), and to fp32 master weights with a
    bf16 copy for compute (mixed precision). Returns the share of the exact update each keeps
    (``1 - |w_way - w_exact| / |w_exact - w0|``, Frobenius norms) and the share of weights the
    bf16-only path never moved."""
    g = torch.Generator().manual_seed(seed)
    w0 = w.detach().double()
    exact, master, pure = w0.clone(), w0.float(), w0.to(torch.bfloat16)
    for _ in range(steps):
        u = lr * (torch.randint(0, 2, w0.shape, generator=g) * 2 - 1).double()
        exact += u
        master += u.float()
        pure = (pure.float() + u.float()).to(torch.bfloat16)
    moved = (exact - w0).norm()

    def kept(v):
        return float(1 - (v.double() - exact).norm() / moved)

    return {"steps": steps, "lr": lr, "bf16 weights kept": kept(pure),
            "fp32 master (bf16 copy) kept": kept(master.to(torch.bfloat16)),
            "fp32 master kept": kept(master),
            "bf16 weights never moved": float((pure == w0.to(torch.bfloat16)).float().mean())}


def master_verdict(d: dict) -> str:
    return (f"After {d['steps']} updates of ±{d['lr']:g}: bf16 weights updated in place kept "
            f"{d['bf16 weights kept']:.1%} of the intended change ({d['bf16 weights never moved']:.1%}"
            f" of them never moved at all); fp32 master weights kept {d['fp32 master kept']:.1%}, "
            f"and their bf16 copy for compute {d['fp32 master (bf16 copy) kept']:.1%}.")


# ----------------------------------------------------------------------------- FP8 numerics

FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_scale(x: torch.Tensor, dtype=torch.float8_e4m3fn) -> float:
    """Per-tensor (amax-based) scale: ``fp8 max / max|x|``, so the largest value lands on the
    format's largest and the rest use as much of its range as they can."""
    amax = float(x.detach().abs().max())
    return torch.finfo(dtype).max / amax if amax > 0 else 1.0


def to_fp8(x: torch.Tensor, dtype=torch.float8_e4m3fn, scale: float | None = None):
    """``x·scale`` cast to FP8 (round to nearest, ties to even; torch saturates at ±max) and the
    scale it used (``None``: :func:`fp8_scale`; ``1.0``: unscaled)."""
    s = fp8_scale(x, dtype) if scale is None else float(scale)
    return (x.detach().float() * s).to(dtype), s


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, a_dtype=torch.float8_e4m3fn,
               b_dtype=torch.float8_e4m3fn, scaled: bool = True) -> torch.Tensor:
    """``a @ b`` emulated as an FP8 GEMM does it: both inputs cast to FP8 with a per-tensor
    scale, the products accumulated in fp32, the result divided by the two scales."""
    a8, sa = to_fp8(a, a_dtype, None if scaled else 1.0)
    b8, sb = to_fp8(b, b_dtype, None if scaled else 1.0)
    return (a8.float() @ b8.float()) / (sa * sb)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def fp8_matmul_table(a: torch.Tensor, b: torch.Tensor, small: float = 1e-4) -> pd.DataFrame:
    """Relative error (Frobenius, vs float64) of ``a @ b`` in fp32, bf16, fp16 and emulated FP8
    (E4M3 both inputs; E5M2 both), each FP8 with and without per-tensor scaling, on the given
    operands and on the same operands times ``small`` (gradient-sized values)."""
    rows = []
    for case, k in (("as given", 1.0), (f"× {small:g} (gradient-sized)", small)):
        A, B = a.float() * k, b.float()
        ref = A.double() @ B.double()
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            y = A.to(dt).float() @ B.to(dt).float()
            rows.append({"operands": case, "format": name, "scaling": "none",
                         "relative error": _rel_err(y, ref)})
        for name, dt in FP8.items():
            for scaled in (True, False):
                y = fp8_matmul(A, B, dt, dt, scaled)
                rows.append({"operands": case, "format": f"fp8 {name}",
                             "scaling": "per-tensor amax" if scaled else "none",
                             "relative error": _rel_err(y, ref)})
    return pd.DataFrame(rows)


def layer_operands(preset: str = "cpu-small", *, batch_size: int = 4, seq_len: int = 64,
                   seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A real matmul of the shipped model: the input of block 0's MLP up-projection on a batch
    (M × K) and its weight transposed (K × N)."""
    from efflab.core.weights import load_model

    model = load_model(preset, "auto", device=device)
    seen = {}

    def keep(module, inputs, output):
        seen.setdefault("x", inputs[0].detach())  # returns None: the output is left alone

    hook = model.h[0].mlp.c_fc.register_forward_hook(keep)
    x, y = _batch(preset, batch_size, seq_len, seed)
    with torch.no_grad():
        model(x.to(device), y.to(device))
    hook.remove()
    x = seen["x"].reshape(-1, seen["x"].size(-1)).cpu()
    return x, model.h[0].mlp.c_fc.weight.detach().t().cpu()


def fp8_verdict(df: pd.DataFrame) -> str:
    def err(case, fmt, scaling):
        sel = df[(df.operands.str.startswith(case)) & (df.format == fmt) & (df.scaling == scaling)]
        return float(sel["relative error"].iloc[0])

    e4, e5, b = (err("as given", "fp8 e4m3", "per-tensor amax"),
                 err("as given", "fp8 e5m2", "per-tensor amax"), err("as given", "bf16", "none"))
    u, s = err("×", "fp8 e4m3", "none"), err("×", "fp8 e4m3", "per-tensor amax")
    return (f"On this layer's own operands the emulated FP8 matmul is off by {e4:.2%} in E4M3 and "
            f"{e5:.2%} in E5M2 (bf16: {b:.2%}). On gradient-sized values, E4M3 without a scale is "
            f"off by {u:.1%}; with a per-tensor scale, {s:.2%}.")


FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) have FP8 tensor cores


def fp8_speed_refusal(calibration: dict, capability: tuple[int, int] | None = None) -> str | None:
    """Why this machine cannot time a fast FP8 matmul (else None). FP8 matmuls
    (``torch._scaled_mm``) run on NVIDIA GPUs of compute capability 8.9 or later; anywhere else
    FP8 is a storage format only: casts work, the arithmetic is emulated, and a timing would
    measure the emulation. ``capability``: the GPU's (major, minor), read from torch when
    ``None`` on a CUDA machine."""
    dev = str(calibration.get("device", "cpu"))
    env = calibration.get("env") or {}
    if not dev.startswith("cuda"):
        return (f"FP8 speed not measured: this run's device is {dev!r} "
                f"({env.get('cpu') or 'a CPU'}), which has no FP8 matmul units; torch's FP8 "
                f"matmul (torch._scaled_mm) needs an NVIDIA GPU of compute capability "
                f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or later (Ada, Hopper). "
                f"Here FP8 is a storage format: the casts above are exact, the matmuls emulated.")
    if capability is None:
        capability = torch.cuda.get_device_capability()
    if tuple(capability) < FP8_MIN_CAPABILITY:
        return (f"FP8 speed not measured: {env.get('gpu') or 'this GPU'} has compute capability "
                f"{capability[0]}.{capability[1]}, below the {FP8_MIN_CAPABILITY[0]}."
                f"{FP8_MIN_CAPABILITY[1]} that FP8 tensor cores (torch._scaled_mm) need.")
    return None


def fp8_speed(n: int = 4096, repeats: int = 20, device: str = "cuda") -> dict:
    """Time an n×n×n matmul in bf16 and in FP8 E4M3 (``torch._scaled_mm``, per-tensor scales,
    bf16 output) on a GPU with FP8 units (see :func:`fp8_speed_refusal`): median seconds of
    ``repeats`` runs each, timed with CUDA events, and the TFLOP/s both reach."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g)
    b = torch.randn(n, n, device=device, generator=g)
    a16, b16 = a.bfloat16(), b.bfloat16()
    a8, sa = to_fp8(a)
    b8, sb = to_fp8(b)
    b8 = b8.t().contiguous().t()  # _scaled_mm wants its second operand column-major
    inv_a = torch.tensor(1 / sa, device=device)
    inv_b = torch.tensor(1 / sb, device=device)
    runs = {"bf16": lambda: a16 @ b16,
            "fp8 e4m3": lambda: torch._scaled_mm(a8, b8, scale_a=inv_a, scale_b=inv_b,
                                                 out_dtype=torch.bfloat16)}
    out = {"n": n}
    for name, fn in runs.items():
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        sec = sorted(times)[len(times) // 2]
        out[f"{name} s"] = sec
        out[f"{name} TFLOP/s"] = 2 * n ** 3 / sec / 1e12
    err = _rel_err(runs["fp8 e4m3"]().float().cpu(), (a.double() @ b.double()).cpu())
    out["fp8 relative error"] = err
    return out


def fp8_speed_summary(d: dict) -> str:
    x = d["bf16 s"] / d["fp8 e4m3 s"]
    return (f"On this GPU an {d['n']}³ matmul runs at {d['fp8 e4m3 TFLOP/s']:.0f} TFLOP/s in FP8 "
            f"E4M3 against {d['bf16 TFLOP/s']:.0f} in bf16: {x:.2f}× "
            f"({'faster' if x > 1 else 'not faster'}), at a relative error of "
            f"{d['fp8 relative error']:.2%}.")
