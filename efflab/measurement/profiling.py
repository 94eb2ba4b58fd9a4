"""Inside a step: where one training or decode step spends its time, operator by operator.

The path: run the step a few times untimed (warm caches, lazily created optimizer state), then
once under PyTorch's profiler with ``record_shapes=True`` -> keep the *top-level* operators (an
``aten::`` call with no ``aten::`` caller: what the model's code asked for, its own helpers
counted inside it) -> for each, its phase (forward, backward, optimizer) from the profiler's
call tree, its kind (matmul, attention, norm, softmax, elementwise, copy, optimizer, view) from
its name, and its FLOPs and bytes moved *from its input shapes* (:func:`op_cost`) -> a tidy
table, one row per (operator, shapes, phase), with achieved FLOP/s and bytes/s.

Arithmetic intensity = FLOPs ÷ bytes moved: an operator is bound by the compute roof when its
intensity is above the machine balance (peak FLOP/s ÷ bandwidth), by the bandwidth roof below
it. Bytes are the *compulsory* traffic: every input read once, every output written once — a
lower bound; caches can only make the real traffic smaller when a tensor fits in them.

AdamW's foreach operators receive lists of tensors whose shapes the profiler does not record,
so the optimizer is placed as one point from :func:`adamw_cost` (its per-parameter formula).

``export_chrome_trace`` writes the trace as JSON: open it at https://ui.perfetto.dev (drag the
file in) or in Chromium at chrome://tracing (Load). Profiling slows a step (the profiler notes
every call), so :func:`profile_step` also reports the step timed *without* the profiler, and
the ratio of the two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from efflab.core.config import Knobs, get_preset
from efflab.core.data import load_corpus
from efflab.core.weights import load_model
from efflab.measurement.hardware import pick_device, synchronize
from efflab.measurement.timing import summarize, time_steps
from efflab.measurement.workloads import prepare
from efflab.techniques import apply_techniques

KINDS = ("matmul", "attention", "norm", "softmax", "elementwise", "copy", "optimizer", "view")
"""Operator kinds, in the order charts list them. ``view`` ops only relabel memory (no FLOPs,
no bytes): they are in the time table but never on the roofline."""

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear",
           "aten::matmul", "aten::_int_mm", "aten::_weight_int8pack_mm",
           "aten::_weight_int4pack_mm_for_cpu"}
VIEWS = {"aten::view", "aten::reshape", "aten::_unsafe_view", "aten::transpose", "aten::t",
         "aten::permute", "aten::expand", "aten::as_strided", "aten::slice", "aten::select",
         "aten::narrow", "aten::split", "aten::split_with_sizes", "aten::unsqueeze",
         "aten::squeeze", "aten::detach", "aten::detach_", "aten::alias", "aten::lift_fresh",
         "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::arange",
         "aten::ones_like", "aten::zeros_like", "aten::item", "aten::_local_scalar_dense",
         "aten::resolve_conj", "aten::resolve_neg", "aten::set_", "aten::unbind", "aten::chunk"}
COPIES = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to",
          "aten::cat", "aten::stack", "aten::embedding", "aten::embedding_backward",
          "aten::embedding_dense_backward", "aten::index_select", "aten::index", "aten::gather",
          "aten::scatter", "aten::index_put_", "aten::masked_fill", "aten::fill_",
          "aten::zero_", "aten::zeros", "aten::ones", "aten::full"}

# FLOPs per output element of elementwise operators (the tanh GELU: x³, ·0.044715, +x,
# ·√(2/π), tanh, +1, ·x, ·0.5 ≈ 8; its backward ≈ 14); anything unlisted counts 1
ELEMENTWISE_FLOPS = {"aten::gelu": 8, "aten::gelu_backward": 14, "aten::relu": 1,
                     "aten::threshold_backward": 1, "aten::silu": 4, "aten::tanh": 4,
                     "aten::exp": 4, "aten::sum": 1, "aten::mean": 1, "aten::addcmul_": 2,
                     "aten::addcdiv_": 2, "aten::lerp_": 3, "aten::sqrt": 1, "aten::pow": 1}


# ============================================================================ costs from shapes

def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def _tensors(shapes: Sequence) -> list[list[int]]:
    """The shapes of the tensor arguments (the profiler records [] for scalars and None)."""
    return [list(s) for s in shapes if isinstance(s, (list, tuple)) and len(s) > 0
            and all(isinstance(d, int) for d in s)]


def matmul_cost(m: int, k: int, n: int, batch: int = 1, bias: bool = False,
                bytes_per_el: int = 4) -> tuple[int, int]:
    """(FLOPs, bytes) of ``batch`` products (m×k)·(k×n) [+ bias]: 2·m·k·n multiply-adds each;
    bytes read A, B (and the bias), write C once: (m·k + k·n + m·n)·batch elements.

    Intensity grows with the sizes (≈ 2mkn / 4(mk+kn+mn)), which is why large matmuls reach
    the compute roof and a matrix-vector product (m = 1: decoding one token) cannot."""
    flops = 2 * m * k * n * batch + (m * n * batch if bias else 0)
    elems = (m * k + k * n + m * n) * batch + (n if bias else 0)
    return flops, elems * bytes_per_el


def attention_cost(b: int, h: int, t: int, s: int, d: int, backward: bool = False,
                   bytes_per_el: int = 4) -> tuple[int, int]:
    """(FLOPs, bytes) of fused attention over (b, h) heads, t queries, s keys, head size d.

    FLOPs: q·kᵀ and p·v, 2·t·s·d each (4·b·h·t·s·d, as efflab's FLOP count; a causal kernel
    skips about half); backward twice that. Bytes: a fused kernel reads q, k, v and writes the
    output (2·t·d + 2·s·d per head); backward reads q, k, v, out, dout, the logsumexp and writes
    dq, dk, dv. The (t, s) scores never reach memory — that is the point of fusing it."""
    fwd = 4 * b * h * t * s * d
    if backward:
        return 2 * fwd, (4 * b * h * t * d + 4 * b * h * s * d + b * h * t) * bytes_per_el
    return fwd, (2 * b * h * t * d + 2 * b * h * s * d) * bytes_per_el


def adamw_cost(n_params: int, bytes_per_el: int = 4, fused: bool = False) -> tuple[int, int]:
    """(FLOPs, bytes) of one AdamW update of ``n_params`` parameters.

    About 14 FLOPs per parameter (decay, two moment updates, square root, bias correction,
    the update). PyTorch's foreach AdamW runs 8 list operators, each a full pass over memory:
    20 element accesses per parameter. A fused AdamW reads p, g, m, v once and writes p, m, v
    once: 7 accesses — the traffic fusion removes."""
    return 14 * n_params, (7 if fused else 20) * n_params * bytes_per_el


def op_cost(name: str, shapes: Sequence, bytes_per_el: int = 4) -> tuple[int | None, int | None]:
    """(FLOPs, bytes moved) of one call of operator ``name`` from its input shapes.

    ``None`` where the shapes do not say (tensor lists, operators efflab has no formula for).
    Elementwise operators: FLOPs per output element from ``ELEMENTWISE_FLOPS`` (default 1),
    bytes = every tensor input read + the output (the broadcast of the inputs) written; an
    in-place operator (``add_``) writes its first input."""
    ts = _tensors(shapes)
    e = bytes_per_el
    if name in VIEWS:
        return 0, 0
    if name in ("aten::mm", "aten::_int_mm") and len(ts) >= 2:
        (m, k), (_, n) = ts[0][-2:], ts[1][-2:]
        return matmul_cost(m, k, n, bytes_per_el=e)
    if name == "aten::addmm" and len(ts) >= 3:
        (m, k), (_, n) = ts[1], ts[2]
        return matmul_cost(m, k, n, bias=True, bytes_per_el=e)
    if name in ("aten::bmm", "aten::baddbmm") and len(ts) >= 2:
        a, b = ts[-2], ts[-1]
        return matmul_cost(a[-2], a[-1], b[-1], batch=a[0], bias=name == "aten::baddbmm",
                           bytes_per_el=e)
    if name in ("aten::linear", "aten::matmul") and len(ts) >= 2:
        x, w = ts[0], ts[1]
        m, k = _numel(x[:-1]), x[-1]
        n = w[0] if name == "aten::linear" else w[-1]
        return matmul_cost(m, k, n, bias=len(ts) >= 3, bytes_per_el=e)
    if "scaled_dot_product" in name and len(ts) >= 3:
        backward = name.endswith("_backward")
        q, k = (ts[1], ts[2]) if backward else (ts[0], ts[1])
        *bh, t, d = q
        return attention_cost(_numel(bh[:-1]) if len(bh) > 1 else 1, bh[-1] if bh else 1,
                              t, k[-2], d, backward, e)
    if name in ("aten::layer_norm", "aten::native_layer_norm") and ts:
        n, c = _numel(ts[0]), ts[0][-1]
        return 8 * n, (2 * n + 2 * c) * e  # read x (+ weight, bias), write y
    if name == "aten::native_layer_norm_backward" and ts:
        n, c = _numel(ts[0]), ts[0][-1]
        return 12 * n, (3 * n + 4 * c) * e  # read dy, x; write dx (+ dw, db)
    if name in ("aten::cross_entropy_loss", "aten::log_softmax", "aten::_log_softmax",
                "aten::softmax", "aten::_softmax") and ts:
        n = _numel(ts[0])
        return 5 * n, 2 * n * e  # read the logits, write the (log-)probabilities
    if name in ("aten::_log_softmax_backward_data", "aten::_softmax_backward_data") and ts:
        n = _numel(ts[0])
        return 3 * n, 3 * n * e  # read grad and output, write grad input
    if name == "aten::nll_loss_backward" and len(ts) >= 2:
        return ts[1][0], _numel(ts[1]) * e  # writes a (N, V) gradient, one value per row set
    if name in ("aten::embedding",) and len(ts) >= 2:
        rows = _numel(ts[1])
        return 0, (2 * rows * ts[0][-1]) * e + rows * 8  # gather rows: read + write
    if name in ("aten::embedding_backward", "aten::embedding_dense_backward") and ts:
        n = _numel(ts[0])
        return n, 2 * n * e  # scatter-add the gradient rows
    if name in COPIES:
        if not ts:
            return None, None
        n = _numel(ts[0])
        return 0, (n if name in ("aten::fill_", "aten::zero_") else 2 * n) * e
    if name.startswith("aten::_foreach") or not ts:
        return None, None
    # elementwise / reductions: output is the broadcast of the inputs (a reduction's is small)
    out = 0 if name in ("aten::sum", "aten::mean", "aten::amax", "aten::max") else \
        _numel(torch.broadcast_shapes(*[tuple(s) for s in ts]))
    inplace = name.endswith("_") and not name.endswith("__")
    reads = sum(_numel(s) for s in ts)
    writes = _numel(ts[0]) if inplace else out
    per = ELEMENTWISE_FLOPS.get(name, 1)
    return per * max(out, _numel(ts[0])), (reads + writes) * e


def op_kind(name: str, phase: str) -> str:
    """The kind of operator ``name`` (one of ``KINDS``); anything in the optimizer phase is
    ``optimizer``."""
    if phase == "optimizer":
        return "optimizer"
    if name in VIEWS:
        return "view"
    if name in MATMULS:
        return "matmul"
    if "scaled_dot_product" in name or "attention" in name:
        return "attention"
    if "norm" in name and "nll" not in name:
        return "norm"
    if "softmax" in name or "cross_entropy" in name or "nll_loss" in name:
        return "softmax"
    if name in COPIES:
        return "copy"
    return "elementwise"


def intensity(flops: float | None, nbytes: float | None) -> float | None:
    """Arithmetic intensity, FLOPs per byte moved (None when either is unknown or bytes is 0)."""
    if flops is None or not nbytes:
        return None
    return flops / nbytes


def roof_bound(op_intensity: float, peak_flops: float, bandwidth: float) -> dict:
    """Which roof bounds an operator of ``op_intensity`` FLOP/byte on this machine, and the
    attainable FLOP/s: min(peak, intensity × bandwidth). The ridge (machine balance) is
    peak ÷ bandwidth: below it memory-bound, above it compute-bound."""
    attainable = min(peak_flops, op_intensity * bandwidth)
    ridge = peak_flops / bandwidth
    return {"attainable_flops_per_s": attainable, "ridge": ridge,
            "bound": "compute" if op_intensity >= ridge else "memory"}


# ============================================================================ profiling a step

def _phase(ev) -> str:
    p = ev.cpu_parent
    while p is not None:
        if p.name.startswith("Optimizer."):
            return "optimizer"
        if p.name.startswith("autograd::engine") or p.name.endswith("Backward0") \
                or p.name.endswith("Backward1"):
            return "backward"
        p = p.cpu_parent
    return "forward"


STEP_MARK = "efflab.step#"


def _step_index(ev) -> int:
    p = ev.cpu_parent
    while p is not None:
        if p.name.startswith(STEP_MARK):
            return int(p.name[len(STEP_MARK):])
        p = p.cpu_parent
    return 0


def _top_level(events) -> list:
    """Operators the program asked for: ``aten::`` events with no ``aten::`` ancestor."""
    out = []
    for ev in events:
        if not ev.name.startswith("aten::"):
            continue
        p = ev.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        if p is None:
            out.append(ev)
    return out


@dataclass
class StepProfile:
    """One profiled step: ``ops`` (one row per operator, shapes and phase), ``calls`` (one row
    per call, in order), the step's time with and without the profiler, and the trace path."""

    ops: pd.DataFrame  # one row per (op, shapes, phase, kind): median time over the steps
    calls: pd.DataFrame  # one row per call of every profiled step (column ``step``)
    step_ms: dict  # the step timed without the profiler: median, p25, p75, n
    profiled_ms: float  # the profiled step's wall time
    ops_ms: float  # the sum of the top-level operators' times
    trace: Path | None = None
    kernels: list[str] = field(default_factory=list)  # fused kernels of compiled code, step 0
    meta: dict = field(default_factory=dict)

    def by_kind(self) -> pd.DataFrame:
        """Time, FLOPs and bytes per kind, and each kind's share of the operators' time."""
        g = self.ops.groupby("kind", as_index=False).agg(
            time_ms=("time_ms", "sum"), calls=("count", "sum"), flops=("flops", "sum"),
            bytes=("bytes", "sum"))
        g["share"] = g["time_ms"] / g["time_ms"].sum()
        return g.sort_values("time_ms", ascending=False, ignore_index=True)

    def top(self, n: int = 12) -> pd.DataFrame:
        """The operators that take the most time, summed over shapes and phases."""
        g = self.ops.groupby(["op", "kind"], as_index=False).agg(
            time_ms=("time_ms", "sum"), calls=("count", "sum"))
        g["share"] = g["time_ms"] / self.ops_ms
        return g.sort_values("time_ms", ascending=False, ignore_index=True).head(n)

    def agreement(self) -> float:
        """Sum of operator times ÷ the profiled step's wall time (1.0: nothing unaccounted)."""
        return self.ops_ms / self.profiled_ms

    def timed_agreement(self) -> float | None:
        """Sum of operator times ÷ the step timed without the profiler (its overhead shows)."""
        return self.ops_ms / self.step_ms["median"] if self.step_ms else None


def profile_step(step: Callable[[], None], *, device: str = "cpu", warmup: int = 2,
                 trace_path: str | Path | None = None, optimizer_params: int | None = None,
                 bytes_per_el: int = 4, time_s: float = 0.5, repeats: int = 3,
                 label: str = "") -> StepProfile:
    """Profile ``repeats`` calls of ``step()`` after ``warmup``; return a :class:`StepProfile`
    whose per-operator times are medians over the calls, with p25/p75 and n.

    ``optimizer_params`` (the number of parameters the optimizer updates) places the whole
    optimizer phase as one roofline point from :func:`adamw_cost`. ``time_s`` is how long the
    same step is timed *without* the profiler first (0 skips it), so the table's total can be
    held against a clean timing. ``trace_path`` writes a Chrome/Perfetto trace there.
    """
    samples = time_steps(step, device, warmup=warmup, min_repeats=3, target_s=time_s) \
        if time_s > 0 else []
    if not samples:
        for _ in range(warmup):
            step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=acts, record_shapes=True) as prof:
        for i in range(repeats):
            with record_function(f"{STEP_MARK}{i}"):
                step()
            synchronize(device)
    wall = (time.perf_counter() - t0) / repeats
    trace = None
    if trace_path is not None:
        trace = Path(trace_path)
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    rows = []
    for i, ev in enumerate(_top_level(prof.events())):
        phase, rep = _phase(ev), _step_index(ev)
        shapes = ev.input_shapes or []
        flops, nbytes = (None, None) if phase == "optimizer" else \
            op_cost(ev.name, shapes, bytes_per_el)
        rows.append({"order": i, "step": rep, "op": ev.name.removeprefix("aten::"),
                     "phase": phase, "kind": op_kind(ev.name, phase),
                     "shapes": str(_tensors(shapes)), "time_ms": ev.cpu_time_total / 1e3,
                     "flops": flops, "bytes": nbytes})
    calls = pd.DataFrame(rows)
    # compiled code: each fused kernel Inductor generated is one event (with
    # torch._inductor.config.cpp.enable_kernel_profile on a CPU; Triton kernels on a GPU)
    kernels = [ev.name for ev in prof.events() if _step_index(ev) == 0
               and ("cpp_fused" in ev.name or ev.name.startswith("triton_"))]
    if optimizer_params is not None and (calls["phase"] == "optimizer").any():
        # the foreach operators' tensor lists carry no shapes: one point for the whole update
        f, b = adamw_cost(optimizer_params, bytes_per_el)
        opt = calls["phase"] == "optimizer"
        n = int(opt.sum()) // repeats
        calls.loc[opt, ["op", "shapes"]] = [f"AdamW step ({n} foreach ops)",
                                            f"[{optimizer_params} params]"]
        first = ~calls[opt].duplicated("step")  # the update's cost, once per step
        calls.loc[opt, ["flops", "bytes"]] = 0.0
        calls.loc[calls[opt][first].index, ["flops", "bytes"]] = [f, b]
    key = ["op", "shapes", "phase", "kind"]
    per_step = (calls.groupby(key + ["step"], as_index=False, dropna=False)
                .agg(count=("order", "size"), time_ms=("time_ms", "sum"),
                     flops=("flops", "sum"), bytes=("bytes", "sum"), first=("order", "min"),
                     known=("flops", "count")))
    ops = (per_step.groupby(key, as_index=False, dropna=False)
           .agg(count=("count", "median"), time_ms=("time_ms", "median"),
                time_p25=("time_ms", lambda v: v.quantile(0.25)),
                time_p75=("time_ms", lambda v: v.quantile(0.75)), n=("step", "size"),
                flops=("flops", "median"), bytes=("bytes", "median"), first=("first", "min"),
                known=("known", "min")))
    unknown = ops["known"] < ops["count"]
    ops.loc[unknown, ["flops", "bytes"]] = float("nan")
    ops = ops.drop(columns="known").sort_values("first", ignore_index=True)
    secs = ops["time_ms"] / 1e3
    ops["intensity"] = ops["flops"] / ops["bytes"].where(ops["bytes"] > 0)
    ops["flops_per_s"] = ops["flops"].where(ops["flops"] > 0) / secs.where(secs > 0)
    ops["bytes_per_s"] = ops["bytes"].where(ops["bytes"] > 0) / secs.where(secs > 0)
    for q in ("p25", "p75"):  # the spread of achieved FLOP/s across the profiled steps
        ops[f"flops_per_s_{q}"] = ops["flops"].where(ops["flops"] > 0) / \
            (ops[f"time_{'p75' if q == 'p25' else 'p25'}"] / 1e3)
    ops_ms = float(calls["time_ms"].sum()) / repeats if len(calls) else 0.0
    step_ms = summarize(samples) if samples else {}
    return StepProfile(ops=ops, calls=calls, step_ms=step_ms, profiled_ms=wall * 1e3,
                       ops_ms=ops_ms, trace=trace, kernels=kernels,
                       meta={"label": label, "device": device, "bytes_per_el": bytes_per_el,
                             "threads": torch.get_num_threads(), "repeats": repeats})


def profile_workload(preset: str = "cpu-small", knobs=None, *, weights="auto",
                     corpus: str | None = None, device: str | None = None,
                     trace_path: str | Path | None = None, time_s: float = 0.5,
                     repeats: int = 3) -> StepProfile:
    """Profile one step of ``knobs.workload`` (train: forward, backward, AdamW; decode: one
    token against a filled KV cache) on the preset's model, built as ``measure`` builds it."""
    knobs = knobs or Knobs()
    cfg = get_preset(preset)
    dev = pick_device(cfg, device)
    model = apply_techniques(load_model(preset, weights, knobs.seed, dev), knobs)
    prep = prepare(knobs.workload, model, load_corpus(corpus), knobs, dev)
    n_opt = sum(p.numel() for p in model.parameters() if p.requires_grad) \
        if prep.optimizer is not None else None
    prof = profile_step(prep.step, device=dev, trace_path=trace_path, optimizer_params=n_opt,
                        bytes_per_el=2 if knobs.precision == "bf16-pure" else 4, time_s=time_s,
                        repeats=repeats, label=f"{preset} {knobs.workload} B{knobs.batch_size}")
    prof.meta.update(preset=preset, knobs=knobs.to_dict(), tokens_per_step=prep.tokens_per_step)
    return prof


def kernel_count(p: StepProfile, phases: Sequence[str] = ("forward", "backward")) -> int:
    """How many operators (outside pure views) one step launches in ``phases``."""
    c = p.calls[p.calls["step"] == 0]
    return int(((c["kind"] != "view") & c["phase"].isin(list(phases))).sum())


def roofline_points(p: StepProfile, peak_flops: float, bandwidth: float) -> pd.DataFrame:
    """The operators that can sit on a roofline (known FLOPs > 0 and bytes > 0), each with the
    roof that bounds it and how close it came (achieved ÷ attainable)."""
    pts = p.ops[(p.ops["flops"] > 0) & (p.ops["bytes"] > 0)].copy()
    rb = [roof_bound(i, peak_flops, bandwidth) for i in pts["intensity"]]
    pts["attainable_flops_per_s"] = [r["attainable_flops_per_s"] for r in rb]
    pts["bound"] = [r["bound"] for r in rb]
    pts["of_roof"] = pts["flops_per_s"] / pts["attainable_flops_per_s"]
    pts["label"] = pts["op"] + " " + pts["shapes"] + " (" + pts["phase"] + ")"
    return pts.reset_index(drop=True)


__all__ = ["KINDS", "StepProfile", "profile_step", "profile_workload", "op_cost", "op_kind", "matmul_cost",
           "attention_cost", "adamw_cost", "intensity", "roof_bound", "roofline_points",
           "kernel_count"]
